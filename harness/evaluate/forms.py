"""The model a trial scores, in each scored form, built the same way by the trial and by
``python -m harness.evaluate`` (which rebuilds it from the trial's folder).

    4bit    the model as trained: the quantized base as the trial loaded it (4-bit weights, the
            compute dtype, peft's prepare_model_for_kbit_training upcasts, the engine's levers)
            with the trained adapter, in eval mode. The trial scores its in-memory model after
            saving the adapter; the rebuild loads that adapter into a model built by the same
            calls, so both hold the same tensors. "before" is the same model, adapter disabled.
    merged  the merged 16-bit model the trial wrote (``merged/``, bf16 where the device has it),
            as a user deploys it. "before" is the base in the same 16-bit dtype.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ADAPTER_FILE = "adapter_model.safetensors"


def as_trained(model: Any) -> Any:
    """The trained model without the trainer's mixed-precision wrapper: accelerate binds an
    autocast ``forward`` onto the model it prepares for bf16/fp16 training (CUDA), which a model
    loaded from disk never has; scoring the unwrapped model scores what a reload scores."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=False)


def rebuild_trained(cfg: Any, weights: str, adapter_dir: Path, *, device: str) -> Any:
    """The 4bit form from a trial's folder: the trial's own load, adapter and engine calls on
    ``weights``, then the saved adapter's tensors in place of the fresh ones."""
    from harness.engine import build as engine
    from harness.trial import model as models

    hf_config = models.model_hf_config(cfg.model)
    targets = models.resolve_targets(cfg.lora, models.linear_module_names(hf_config))
    if getattr(cfg.engine, "backend", "harness") == "unsloth":
        model, _ = engine.build_unsloth(cfg, weights, weights, targets)
    else:
        base = models.load_base(weights, cfg.quant, device=device)
        model = models.attach_adapter(
            base, cfg.lora, cfg.quant, targets=targets, seed=cfg.train.seed,
            checkpointing=cfg.engine.checkpointing != "none",
            custom_modules=engine.lora_modules(cfg.engine),
        )  # fmt: skip
        engine.build(model, cfg.engine, compute_dtype=models.DTYPES[cfg.quant.compute_dtype])
    load_adapter_tensors(model, adapter_dir)
    return model


def load_adapter_tensors(model: Any, adapter_dir: Path) -> None:
    """Copy a saved adapter's tensors into ``model``'s adapter, each in the dtype it was saved
    in; every one must land.

    The dtype matters: TRL's SFTTrainer casts LoRA A/B of a quantized model to bf16 before
    training whatever ``lora.dtype`` says, so the trial scores a bf16 branch (its input rounded
    to bf16 too). Copied into the rebuilt fp32 tensors, the same values moved the embedded
    model's logits by up to 0.83 and a 3-item LAMBADA perplexity from 85.53 to 85.13."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(adapter_dir) / ADAPTER_FILE))
    result = set_peft_model_state_dict(model, state)
    lost = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or lost:
        raise RuntimeError(
            f"adapter {adapter_dir} does not fit the rebuilt model: unexpected "
            f"{result.unexpected_keys[:3]}, missing {lost[:3]}"
        )
    for name, param in model.named_parameters():
        saved = state.get(name.replace(".default.", "."))
        if saved is not None and saved.dtype != param.dtype:
            param.data = param.data.to(saved.dtype)


def adapter_dtypes(model: Any) -> list[str]:
    """The dtypes the adapter's trainable tensors hold (what trained, whatever was asked)."""
    return sorted(
        {str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad}
    )


def load_merged(merged_dir: Path, *, device: str) -> Any:
    """The merged 16-bit model as saved (its own dtype)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        merged_dir, dtype="auto", device_map={"": device}, attn_implementation="sdpa"
    ).eval()


@contextmanager
def base_of(form: str, scored: Any, weights: str, *, device: str) -> Iterator[Any]:
    """The "before" model of a form: the scored model with its adapter disabled (4bit), or the
    base weights in the merged model's 16-bit dtype (merged, freed afterwards)."""
    if form == "4bit":
        with scored.disable_adapter():
            yield scored
        return
    from transformers import AutoModelForCausalLM

    dtype = next(scored.parameters()).dtype
    base = AutoModelForCausalLM.from_pretrained(
        weights, dtype=dtype, device_map={"": device}, attn_implementation="sdpa"
    ).eval()
    try:
        yield base
    finally:
        del base
        if device == "cuda":
            torch.cuda.empty_cache()


def describe(form: str, quant: dict, engine: dict) -> str:
    """One line naming what was scored, for the record."""
    if form == "merged":
        return "merged 16-bit model (merged/): the adapter merged into the base weights"
    if quant["type"] == "none":
        base = f"16-bit base ({quant['compute_dtype']})"
    else:
        dq = " + double quant" if quant["double_quant"] else ""
        base = f"{quant['type']}{dq} base, {quant['compute_dtype']} compute"
    return (f"{base}, peft-prepared, engine {engine.get('name', 'custom')}, "
            "+ the trained adapter (adapter/), eval mode")  # fmt: skip
