"""Quality: score an in-memory model with lm-eval and pair base and tuned scores up.

The numbers are lm-eval's own: the model is wrapped in lm-eval's ``HFLM`` and scored by
``lm_eval.simple_evaluate`` on the task YAMLs of ``harness/evaluate/tasks/`` and the user's folder
(see ``registry.materialize_tasks``), the same files lm-eval's command line reads with
``--include_path``. tests/test_lmeval_parity.py checks that both give the same scores.

Scores have one shape everywhere: ``{task: {metric: {"value", "stderr", "higher_is_better"}}}``.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.evaluate.cache import write_json_atomic
from harness.evaluate.items import items_from_samples, metric_name
from harness.evaluate.registry import (
    EMBEDDED_DIR_TOKEN,
    TASKS_DIR,
    harness_tasks,
    materialize_tasks,
)
from harness.evaluate.user_tasks import user_task_names

log = logging.getLogger(__name__)

Scores = dict[str, dict[str, dict[str, Any]]]


@dataclass
class Evaluation:
    """One lm-eval run: scores, per-item metrics, each task's declared primary metric."""

    scores: Scores
    items: list[dict[str, Any]] = field(default_factory=list)
    primary: dict[str, str | None] = field(default_factory=dict)


def evaluate_lm(model: Any, tokenizer: Any, tasks: list[str], **kwargs: Any) -> Scores:
    """``run_lm_eval``'s scores alone (same arguments)."""
    return run_lm_eval(model, tokenizer, tasks, **kwargs).scores


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    *,
    data_dir: Path,
    embedded_dir: Path | None,
    limit: int | float | None,
    batch_size: int | str,
    num_fewshot: int | None = None,
    seed: int = 0,
    work_dir: Path,
    include_path: Path | None = None,
) -> Evaluation:
    """Score an in-memory model (plain, quantized or peft-wrapped) on lm-eval tasks.

    Args:
        model: The causal LM to score, on its device; its train/eval mode is restored after.
        tokenizer: Its tokenizer.
        tasks: ``qh_*`` names of the harness's tasks, the user's (``include_path``), or any
            task name lm-eval ships.
        data_dir: The offline datasets (``eval.data_dir``).
        embedded_dir: Folder with ``heldout.jsonl`` for ``qh_embedded``, else None.
        limit: Items per task (int), a fraction of each task (float <= 1), or None for all.
        batch_size: An int, or "auto" / "auto:N" (lm-eval's probe; on a GPU only: elsewhere 1).
        num_fewshot: Overrides each task's few-shot count (None keeps the YAML's).
        seed: Seeds python, numpy, torch and the few-shot sampler, as ``lm_eval --seed``.
        work_dir: Where the materialized tasks and lm-eval's raw results go.
        include_path: The user's task folder (``eval.include_path``), or None.

    Returns:
        The scores ``{task: {metric: {"value", "stderr", "higher_is_better"}}}``, lm-eval's
        per-item metrics and each task's ``metadata.primary_metric`` (None where undeclared).
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ConfigError("eval.tasks", tasks, "at least one task")
    _check_limit(limit)
    if embedded_dir is None and any(_reads_embedded_dir(name) for name in tasks):
        raise ConfigError("eval.tasks", tasks, "qh_embedded needs embedded_dir (its heldout.jsonl)")
    include = materialize_tasks(
        work_dir / "lm_eval_tasks", data_dir=data_dir, embedded_dir=embedded_dir,
        include_path=include_path,
    )  # fmt: skip
    # Indexing lm-eval's own ~15k task YAMLs costs ~10 s: only when a task of its own needs it.
    known = set(harness_tasks()) | set(user_task_names(include_path) if include_path else ())
    needs_defaults = any(name not in known for name in tasks)
    manager = TaskManager(include_path=str(include), include_defaults=needs_defaults)
    was_training = model.training
    lm = HFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=resolve_batch_size(batch_size, model)
    )
    rng = _rng_state()
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=True,  # per-item metrics: eval_items.jsonl, for paired comparisons
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    finally:
        model.train(was_training)
        _restore_rng_state(rng)  # lm-eval reseeds the global RNGs; the trial's stream goes on
    samples = results.pop("samples", None) or {}
    write_json_atomic(work_dir / "lm_eval_results.json", results)
    primary = {
        task: ((cfg.get("metadata") or {}).get("primary_metric"))
        for task, cfg in (results.get("configs") or {}).items()
    }
    return Evaluation(scores_from_results(results), items_from_samples(samples), primary)


def scores_from_results(results: dict[str, Any]) -> Scores:
    """lm-eval's results dict in the harness's shape.

    lm-eval keys a metric ``"<metric>,<filter>"``. The default filter ("none") is dropped, any
    other is appended with "_" for "-":
    ``exact_match,strict-match`` -> ``exact_match_strict_match``.
    A stderr lm-eval could not compute ("N/A", nan for one item) becomes None.
    """
    scores: Scores = {}
    for task, metrics in results["results"].items():
        directions = results.get("higher_is_better", {}).get(task, {})
        out: dict[str, dict[str, Any]] = {}
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            name = metric_name(metric, filt)
            out[name] = {
                "value": float(value),
                "stderr": _finite_or_none(metrics.get(f"{metric}_stderr,{filt}")),
                "higher_is_better": bool(directions.get(metric, True)),
            }
        scores[task] = out
    return scores


def resolve_batch_size(batch_size: int | str, model: Any) -> int | str:
    """The batch size to hand lm-eval: "auto" probes for OOM, which only a GPU reports."""
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0:
        return batch_size
    if isinstance(batch_size, str) and batch_size.split(":")[0] == "auto":
        device = getattr(model, "device", None)
        return batch_size if getattr(device, "type", "cpu") == "cuda" else 1
    raise ConfigError("eval.batch_size", batch_size, 'a positive int, "auto" or "auto:N"')


def merge_before_after(before: Scores, after: Scores) -> Scores:
    """Pair base and tuned scores: ``{task: {metric: {before, after, delta, stderr_before,
    stderr_after, higher_is_better}}}``; a side missing a task or metric reads None."""
    merged: Scores = {}
    for task in [*after, *(t for t in before if t not in after)]:
        b_task, a_task = before.get(task, {}), after.get(task, {})
        merged[task] = {}
        for metric in [*a_task, *(m for m in b_task if m not in a_task)]:
            b, a = b_task.get(metric) or {}, a_task.get(metric) or {}
            b_val, a_val = b.get("value"), a.get("value")
            merged[task][metric] = {
                "before": b_val,
                "after": a_val,
                "delta": None if a_val is None or b_val is None else a_val - b_val,
                "stderr_before": b.get("stderr"),
                "stderr_after": a.get("stderr"),
                "higher_is_better": a.get("higher_is_better", b.get("higher_is_better", True)),
            }
    return merged


def _rng_state() -> tuple[Any, ...]:
    import random

    import numpy as np
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _restore_rng_state(state: tuple[Any, ...]) -> None:
    import random

    import numpy as np
    import torch

    py, np_state, cpu, cuda = state
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _reads_embedded_dir(task: str) -> bool:
    path = TASKS_DIR / f"{task}.yaml"
    return path.is_file() and EMBEDDED_DIR_TOKEN in path.read_text()


def _check_limit(limit: int | float | None) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit <= 0:
        raise ConfigError("eval.limit", limit, "null, a positive int, or a fraction in (0, 1]")
    if isinstance(limit, float) and limit > 1:
        raise ConfigError("eval.limit", limit, "a float limit is a fraction in (0, 1]")


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None
