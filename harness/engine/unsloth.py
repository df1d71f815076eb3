"""`engine=unsloth`: the same trial through Unsloth's model loading, LoRA kernels and recompute.

The peer users pick for QLoRA speed, run side by side with the harness's own engines: Unsloth
loads and quantizes the base (nf4 + double quant, the trial's compute dtype), patches the model's
attention, MLP, norms, RoPE and loss with its Triton kernels, and attaches the adapter; the trial's
data, trainer, optimizer, schedule and measurements stay the harness's. An optional extra
(`pip install unsloth==2026.10.9`, CUDA only; it pins transformers <= 5.17, trl <= 1.15 and
datasets < 5). Unsloth patches transformers' model classes process-wide, so an Unsloth trial
runs in a process of its own (harness/engine/process.py names it).

Mapping of the harness's keys: engine.checkpointing none -> no recompute, full -> HF's
recompute, offload -> Unsloth's own ("unsloth": hidden states parked in host memory).
lora.variant rslora -> use_rslora; lora.dropout passes through (Unsloth 2026.10.9 draws the
dropout masks inside its fused LoRA kernels; on llama3-8b b4, dropout 0.05 ran 8,812 tokens/s
and dropout 0 ran 9,831, BENCHMARKS.md).
"""

import os
from pathlib import Path

from harness.config.engine import EngineConfig
from harness.config.schema import LoraConfig, QuantConfig
from harness.errors import ConfigError
from harness.paths import cache_dir

CHECKPOINTING = {"none": False, "full": True, "offload": "unsloth"}
VARIANTS = {"lora": False, "rslora": True}
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def check(ecfg: EngineConfig, lcfg: LoraConfig, qcfg: QuantConfig, device: str) -> None:
    """Refuse settings this backend cannot run, before any model loads (one line each)."""
    ours = "with engine.backend=unsloth:"
    if device != "cuda":
        raise ConfigError("engine.backend", "unsloth", "needs train.device=cuda (CUDA only)")
    if ecfg.checkpointing not in CHECKPOINTING:
        raise ConfigError(
            "engine.checkpointing", ecfg.checkpointing, f"{ours} one of {sorted(CHECKPOINTING)}"
        )
    if lcfg.variant not in VARIANTS:
        raise ConfigError("lora.variant", lcfg.variant, f"{ours} one of {sorted(VARIANTS)}")
    if qcfg.type not in ("nf4", "none") or (qcfg.type == "nf4" and not qcfg.double_quant):
        raise ConfigError(
            "quant", f"{qcfg.type} double_quant={qcfg.double_quant}", f"{ours} nf4 + double quant"
        )
    if qcfg.compute_dtype not in DTYPES:
        raise ConfigError(
            "quant.compute_dtype", qcfg.compute_dtype, f"{ours} one of {sorted(DTYPES)}"
        )
    try:
        import importlib.util

        found = importlib.util.find_spec("unsloth") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError("engine.backend", "unsloth",
                          "needs the optional extra: pip install unsloth==2026.10.9")  # fmt: skip


def model_dir(weights: str, tokenizer: str) -> str:
    """Unsloth reads the tokenizer from the weights folder: where they differ (random-weight
    shapes borrow the embedded tokenizer), a folder of links to both."""
    if weights == tokenizer or not Path(weights).is_dir():
        return weights
    out = cache_dir() / "models" / f"unsloth-{Path(weights).name}"
    out.mkdir(parents=True, exist_ok=True)
    for src in (Path(tokenizer), Path(weights)):  # the weights' config.json wins
        for f in src.iterdir():
            link = out / f.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(f.resolve())
    return str(out)


def load(
    weights: str, tokenizer: str, *, ecfg: EngineConfig, lcfg: LoraConfig, qcfg: QuantConfig,
    targets, seed: int, max_seq_len: int,
):  # fmt: skip
    """(peft model, tokenizer) from Unsloth, on the current CUDA device."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # no network calls
    import torch
    from unsloth import FastLanguageModel

    model, tok = FastLanguageModel.from_pretrained(
        model_name=model_dir(weights, tokenizer),
        max_seq_length=max_seq_len,
        dtype=getattr(torch, DTYPES[qcfg.compute_dtype]),
        load_in_4bit=qcfg.type == "nf4",
        use_gradient_checkpointing=CHECKPOINTING[ecfg.checkpointing],
        random_state=seed,
        local_files_only=True,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=lcfg.r,
        target_modules=targets if isinstance(targets, list) else _all_linear(model),
        lora_alpha=lcfg.alpha,
        lora_dropout=lcfg.dropout,
        bias=lcfg.bias,
        use_gradient_checkpointing=CHECKPOINTING[ecfg.checkpointing],
        use_rslora=VARIANTS[lcfg.variant],
        random_state=seed,
    )
    return model, tok


def _all_linear(model) -> list[str]:
    """The decoder's Linear leaf names (q_proj ... down_proj), as peft's all-linear picks them."""
    import torch

    names = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    return sorted(names - {"lm_head"})
