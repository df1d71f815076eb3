"""Preflight: every check that is cheap runs here, before any model is loaded, so bad input costs
seconds, not an hour of training. Also the glue from the trial to lm-eval."""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config.schema import QuantConfig, TrialConfig
from harness.engine import build as levers
from harness.errors import ConfigError
from harness.paths import cache_dir, shared_data_dir
from harness.trial import data as data_mod
from harness.trial import model as models
from harness.trial.train import choose_optimizer


@dataclass
class Plan:
    """What preflight resolved: device, adapter targets, optimizer, data."""

    device: str
    targets: Any
    optimizer: dict
    hf_config: Any
    train_examples: list
    heldout_examples: list
    data_dir: Path


def resolve_device(requested: str) -> str:
    """auto -> cuda when available, else cpu."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device", "cuda", "no CUDA device is visible here; allowed: auto, cpu"
        )
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def check_quant(qcfg: QuantConfig, device: str) -> None:
    """Quantize, de-quantize and multiply a small tensor on `device` as the trial will."""
    dtype = models.DTYPES[qcfg.compute_dtype]
    if device == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError("quant.compute_dtype", "bf16", f"{device} lacks bf16; allowed: fp16")
    if qcfg.type == "none":
        return
    import bitsandbytes.functional as F

    # bitsandbytes caches its double-quant code map on the device of its first use
    # (functional.name2qmap) and reuses it everywhere: a probe must leave no such cache behind
    # (a probe on the meta device made every later in-process double-quant load fail).
    cached = dict(F.name2qmap)
    try:
        from bitsandbytes import matmul_4bit

        w = torch.randn(128, 128, device=device, dtype=dtype)
        q, state = F.quantize_4bit(w, quant_type=qcfg.type, compress_statistics=qcfg.double_quant)
        x = torch.randn(4, 128, device=device, dtype=dtype)
        out = matmul_4bit(x, q.t(), quant_state=state)
        if not torch.isfinite(out).all():
            raise RuntimeError("non-finite result")
    except Exception as e:  # noqa: BLE001 - any failure means the device can't run this setting
        raise ConfigError(
            "quant.type", qcfg.type,
            f"bitsandbytes cannot run {qcfg.type} (double_quant={qcfg.double_quant}, "
            f"{qcfg.compute_dtype}) on {device}: {type(e).__name__}: {e}; allowed: none",
        ) from None  # fmt: skip
    finally:
        F.name2qmap.clear()
        F.name2qmap.update(cached)


def preflight(cfg: TrialConfig) -> Plan:
    """Validate everything that can be checked without loading the model."""
    device = resolve_device(cfg.train.device)
    hf_config = models.model_hf_config(cfg.model)
    targets = models.resolve_targets(cfg.lora, models.linear_module_names(hf_config))
    check_quant(cfg.quant, device)
    levers.check(cfg.train, device, num_layers=getattr(hf_config, "num_hidden_layers", None))
    optimizer = choose_optimizer(cfg.optim, device)
    train_examples, heldout_examples = data_mod.load_examples(cfg.data)
    data_dir = Path(cfg.eval.data_dir) if cfg.eval.data_dir else shared_data_dir()
    if cfg.eval.tasks and cfg.model.source != "random":
        from harness.evaluate.registry import check_tasks

        check_tasks(cfg.eval.tasks, data_dir=data_dir, embedded_dir=None)
    return Plan(device, targets, optimizer, hf_config, train_examples, heldout_examples, data_dir)


def run_lm_eval(cfg: TrialConfig, plan: Plan, model, tokenizer, *, out_dir: Path, weights: str):
    """lm-eval after tuning (in-memory model, adapter on) and before (adapter off, cached per
    base model + quant + tasks). Returns {task: {metric: {before, after, delta, ...}}}."""
    from harness.evaluate.lmeval import base_scores_cached, evaluate_lm, merge_before_after

    if not cfg.eval.tasks:
        return {}
    embedded_dir = out_dir / "embedded_task"
    embedded_dir.mkdir(parents=True, exist_ok=True)
    rows = data_mod.heldout_task_rows(plan.heldout_examples, tokenizer, cfg.data)
    heldout = "".join(json.dumps(r) + "\n" for r in rows)
    (embedded_dir / "heldout.jsonl").write_text(heldout)
    batch = cfg.eval.batch_size if plan.device == "cuda" else (
        8 if cfg.eval.batch_size == "auto" else int(cfg.eval.batch_size))  # fmt: skip
    limit = cfg.eval.limit
    limit = int(limit) if limit is not None and limit >= 1 else limit

    def score(phase: str) -> dict:
        return evaluate_lm(
            model, tokenizer, cfg.eval.tasks, data_dir=plan.data_dir, embedded_dir=embedded_dir,
            limit=limit, batch_size=batch, num_fewshot=cfg.eval.num_fewshot,
            seed=cfg.train.seed, work_dir=out_dir / "lm_eval" / phase,
        )  # fmt: skip

    after = score("after")
    before = {}
    if cfg.eval.base_scores:
        key = {
            "weights": weights, "quant": asdict(cfg.quant), "tasks": cfg.eval.tasks,
            "limit": limit, "num_fewshot": cfg.eval.num_fewshot, "device": plan.device,
            "data_dir": str(plan.data_dir),
            "heldout_sha1": hashlib.sha1(heldout.encode()).hexdigest(),
        }  # fmt: skip

        def base() -> dict:
            with model.disable_adapter():
                return score("before")

        before = base_scores_cached(key, base, cache_file=cache_dir() / "base_scores.json")
    return merge_before_after(before, after)
