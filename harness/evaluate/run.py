"""The glue from a trial to lm-eval: score the in-memory model after tuning (adapter on) and
before (adapter off, cached per base model, quant and tasks)."""

import hashlib
import json
from pathlib import Path

from harness.config.schema import DataConfig, EvalConfig
from harness.paths import cache_dir
from harness.trial import data as data_mod


def score_trial(
    ecfg: EvalConfig, dcfg: DataConfig, seed: int, plan, model, tokenizer, *, out_dir: Path,
    weights: str, quant: dict,
) -> dict:  # fmt: skip
    """lm-eval after tuning (in-memory model, adapter on) and before (adapter off, cached per
    base model + quant + tasks). Returns {task: {metric: {before, after, delta, ...}}}."""
    from harness.evaluate.cache import base_scores_cached
    from harness.evaluate.lmeval import evaluate_lm, merge_before_after

    if not ecfg.tasks:
        return {}
    embedded_dir = out_dir / "embedded_task"
    embedded_dir.mkdir(parents=True, exist_ok=True)
    rows = data_mod.heldout_task_rows(plan.heldout_examples, tokenizer, dcfg)
    heldout = "".join(json.dumps(r) + "\n" for r in rows)
    (embedded_dir / "heldout.jsonl").write_text(heldout)
    batch = ecfg.batch_size if plan.device == "cuda" else (
        8 if ecfg.batch_size == "auto" else int(ecfg.batch_size))  # fmt: skip
    limit = ecfg.limit
    limit = int(limit) if limit is not None and limit >= 1 else limit

    def score(phase: str) -> dict:
        return evaluate_lm(
            model, tokenizer, ecfg.tasks, data_dir=plan.data_dir, embedded_dir=embedded_dir,
            limit=limit, batch_size=batch, num_fewshot=ecfg.num_fewshot,
            seed=seed, work_dir=out_dir / "lm_eval" / phase,
        )  # fmt: skip

    after = score("after")
    before = {}
    if ecfg.base_scores:
        key = {
            "weights": weights, "quant": quant, "tasks": ecfg.tasks,
            "limit": limit, "num_fewshot": ecfg.num_fewshot, "device": plan.device,
            "data_dir": str(plan.data_dir),
            "heldout_sha1": hashlib.sha1(heldout.encode()).hexdigest(),
        }  # fmt: skip

        def base() -> dict:
            with model.disable_adapter():
                return score("before")

        before = base_scores_cached(key, base, cache_file=cache_dir() / "base_scores.json")
    return merge_before_after(before, after)
