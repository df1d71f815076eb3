"""Preflight: every check that is cheap runs here, before any model is loaded, so bad input costs
seconds, not an hour of training."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config.schema import QuantConfig, TrialConfig
from harness.engine import build as levers
from harness.errors import ConfigError
from harness.paths import shared_data_dir
from harness.trial import data as data_mod
from harness.trial import model as models
from harness.trial.train import choose_optimizer, load_callback


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

    # The probe runs on the trial's own device: bitsandbytes caches its double-quant code map
    # (functional.name2qmap) on the device of its first use, which is the one the trial loads on.
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


def preflight(cfg: TrialConfig) -> Plan:
    """Validate everything that can be checked without loading the model."""
    device = resolve_device(cfg.train.device)
    hf_config = models.model_hf_config(cfg.model)
    targets = models.resolve_targets(cfg.lora, models.linear_module_names(hf_config))
    check_quant(cfg.quant, device)
    levers.check(cfg.engine, device, num_layers=getattr(hf_config, "num_hidden_layers", None))
    if cfg.engine.cuda_graphs and cfg.train.grad_accum != 1:
        why = "needs train.grad_accum=1 (a replay would overwrite the gradient of a micro-batch)"
        raise ConfigError("engine.cuda_graphs", True, why)
    if cfg.engine.backend == "unsloth":
        from harness.engine.unsloth import check as check_unsloth

        check_unsloth(cfg.engine, cfg.lora, cfg.quant, device)
    for path in cfg.train.callbacks:
        load_callback(path)
    optimizer = choose_optimizer(cfg.optim, device)
    train_examples, heldout_examples = data_mod.load_examples(cfg.data)
    data_dir = Path(cfg.eval.data_dir) if cfg.eval.data_dir else shared_data_dir()
    if cfg.eval.tasks:
        from harness.evaluate.registry import check_task_names, check_tasks

        include = cfg.eval.include_path
        if cfg.model.source == "random":  # never evaluated, but a misspelt task is still refused
            check_task_names(cfg.eval.tasks, include)
        else:
            check_tasks(cfg.eval.tasks, data_dir=data_dir, embedded_dir=None, include_path=include)
    return Plan(device, targets, optimizer, hf_config, train_examples, heldout_examples, data_dir)
