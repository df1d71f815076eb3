"""engine.lora_kernel=fused: the harness's own LoRA layers, which peft builds in place of its own
when the adapter is attached (`lora_modules()`, passed to peft's custom-module dispatch).

Each is peft's LoRA layer (the 4-bit one for bitsandbytes' Linear4bit, the plain one for a 16-bit
nn.Linear) with one forward: the adapted Linear as one autograd op (lora_op.LoraLinear). Where
that op does not apply (adapters disabled or merged, several adapters, DoRA and other variants, a
LoRA bias) peft's own forward runs. What build() sets on each, plain attributes:

    dequant     a dequant_triton.Dequantizer (engine.dequant_kernel=triton), else None
    out_dtype   torch.float32 where the layer writes to an fp32 stream (residual.py), else None
    recipes     the slim layer's table (slim.py) the layer looks its input up in, else None
    recompute   the model's trim.Recompute flag, and `trim`: skip the base matmul while it is
                raised (engine.trim_recompute, on a recomputed layer's down_proj)
    seed        its slot of the model's device seed table (engine.cuda_graphs: graphs.py), else
                None: the dropout seed is drawn from the CPU generator per call
"""

import bitsandbytes as bnb
import torch
from peft.tuners.lora.bnb import Linear4bit as PeftLinear4bit
from peft.tuners.lora.layer import Linear as PeftLinear
from torch import nn

from harness.engine import lora_op


def _single_plain_adapter(layer, kwargs) -> str | None:
    """The one active vanilla-LoRA adapter, or None where peft's own forward must run (merged,
    disabled, mixed-batch adapters, DoRA and other variants, LoRA bias)."""
    if layer.disable_adapters or layer.merged or kwargs.get("adapter_names") is not None:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(name):
        return None
    return name


def _set_defaults(layer) -> None:
    layer.dequant, layer.out_dtype, layer.recipes = None, None, None
    layer.recompute, layer.trim, layer.seed = None, False, None


def _forward(layer, peft_forward, x, *args, **kwargs):
    name = _single_plain_adapter(layer, kwargs)
    out_dtype = layer.out_dtype  # a down_proj writing to an fp32 residual stream
    if name is None or not lora_op.supported_base(layer.base_layer):
        x = x if out_dtype is None else x.to(out_dtype)  # peft's forward, as in the plain stack
        return peft_forward(x, *args, **kwargs)
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
    drop = layer.lora_dropout[name]
    p = drop.p if isinstance(drop, nn.Dropout) and drop.training else 0.0
    # Drawn from the CPU generator, which activation checkpointing restores before it recomputes
    # a layer, so the recomputed layer regenerates the same mask; under engine.cuda_graphs the
    # layer's slot of the device seed table, redrawn once per forward of the model.
    seed = 0 if not p else layer.seed
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
    # peft's matmuls: the adapter's in the autocast dtype (else its weights' dtype); the base in
    # bitsandbytes' compute dtype (a 16-bit base: the autocast dtype, else its weight's)
    autocast = torch.is_autocast_enabled(x.device.type)
    dtype = torch.get_autocast_dtype(x.device.type) if autocast else a.dtype
    base = layer.base_layer
    base_dtype = dtype if autocast else base.weight.dtype
    if base.weight.__class__.__name__ == "Params4bit":
        base_dtype = base.compute_dtype or x.dtype
    skip = layer.trim and layer.recompute is not None and layer.recompute.active
    recipe = None if layer.recipes is None else layer.recipes.find(x)
    return lora_op.LoraLinear.apply(
        x, a, b, base, float(layer.scaling[name]), p, seed, dtype, base_dtype, out_dtype, skip,
        recipe, layer.dequant,
    )  # fmt: skip


class _Fused:
    """The fused op as the forward of a peft LoRA layer (peft's own where it must run)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _set_defaults(self)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return _forward(self, super().forward, x, *args, **kwargs)


class FusedLinear(_Fused, PeftLinear):
    """peft's LoRA Linear over a 16-bit nn.Linear (quant.type=none), the fused op as forward."""


class FusedLinear4bit(_Fused, PeftLinear4bit):
    """peft's LoRA Linear4bit over bitsandbytes' Linear4bit, the fused op as forward."""


def is_fused(module) -> bool:
    return isinstance(module, FusedLinear | FusedLinear4bit)


def lora_modules() -> dict[type, type]:
    """Base layer type -> the fused LoRA class peft builds for it. Linear4bit first: it is an
    nn.Linear too, and peft takes the first type that matches."""
    return {bnb.nn.Linear4bit: FusedLinear4bit, nn.Linear: FusedLinear}
