"""engine.residual_dtype=fp32 (with engine.frozen_dtype=bf16): the plain stack's fp32 residual
stream without its fp32 weights.

Why: peft's prepare_model_for_kbit_training upcasts embeddings, norms and head to fp32 (their
values stay the bf16 ones), so the plain stack's activations run in fp32 between its bf16 matmuls.
With bf16 weights (frozen_dtype=bf16) they run in bf16, and the loss of steps 3-9 moved by up to
0.23 on llama3-8b. This lever keeps the one fp32 tensor that accumulates across layers, the
residual stream, where a fresh adapter's small updates would round away. Measured (H200,
BENCHMARKS.md): it closes a third of that gap (0.23 -> 0.17) for 6% of the fast preset's speed
and +2.5 GiB, so the stream is not the main cause. With engine.projection_dtype=fp32 as well
(below) the loss curve is plain's within plain's own noise (0.0012 / 0.0033 mean / max |dloss|
over 50 steps) at 1.53x plain's speed and 1.26x its memory: engine=exact.

What this lever does, and why each step is the plain stack's arithmetic:
- the input embedding's output is widened to fp32 (the owned host_frozen.Embedding's
  `out_dtype`): the same values as peft's fp32 table gives;
- a norm whose input is fp32 computes in fp32 (HF's and Liger's kernels do) and returns the
  compute dtype (the owned kernels.RMSNorm's `narrow`): rounded once, where the plain stack rounds
  its fp32 norm output at the next matmul's cast, which is all that reads it;
- each MLP's down_proj (the adapted Linear whose input, the SwiGLU product, is fp32 in the plain
  stack) returns fp32 with its LoRA branch added in fp32: the fused layer's `out_dtype`; peft's
  own modules get their input widened to fp32 (a pre-hook), exactly the plain stack's call.
q, k, v, gate and up return the compute dtype; in the plain stack they are fp32 (bitsandbytes'
rounded output plus the branch in fp32) until RoPE, attention or SwiGLU reads them. There a branch
under half a bf16 step added to the already rounded base is lost: the rest of the gap (measured).
engine.projection_dtype=fp32 (`projections`) returns them as the plain stack does: the fused op
(`out_dtype`) adds the branch to the rounded base in fp32 and returns that; peft's modules get their
input widened (bitsandbytes then returns fp32). Liger's RoPE and SwiGLU read fp32 inputs and
attention casts under autocast, as in the plain stack. The rotary
cos/sin follow the stream's dtype (fp32, as in the plain stack, where autocast casts the rotated
q and k at attention); without autocast (CPU trials) they take the compute dtype, since a bf16 v
beside fp32-rotated q and k is refused by attention.
"""

import torch

from harness.engine import lora_layer

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # fp32 inputs in plain


class WidenInput:
    """A forward pre-hook on peft's LoRA module: its input in fp32, as the plain stack calls it."""

    def __call__(self, module, args):
        return (args[0].float(), *args[1:])


class RotaryDtype:
    """A forward hook on the rotary embedding: without autocast, its cos/sin in `dtype`."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, module, args, out):
        if torch.is_autocast_enabled(out[0].device.type):
            return None
        return tuple(t.to(self.dtype) for t in out)


def _hook_once(module: torch.nn.Module, hook, *, pre: bool = False) -> None:
    hooks = module._forward_pre_hooks if pre else module._forward_hooks
    if not any(type(h) is type(hook) for h in hooks.values()):
        (module.register_forward_pre_hook if pre else module.register_forward_hook)(hook)


def place(model, *, wide: bool, projections: bool, dtype: torch.dtype) -> dict:
    """The stream's adapted Linears and rotary tables (the norms and the embedding are owned
    modules: build places them). `wide`: the fp32 stream; `projections`: q, k, v, gate and up
    return fp32 too. Returns what was set."""
    downs = projs = 0
    if not wide:
        return {"residual_fp32_down_proj": 0, "fp32_projections": 0}
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding"):
            _hook_once(module, RotaryDtype(dtype))
        for name, child in module.named_children():
            if not hasattr(child, "lora_A") or name not in ("down_proj", *PROJECTIONS):
                continue
            if name == "down_proj" and not hasattr(module, "gate_proj"):
                continue
            if name != "down_proj" and not projections:
                continue
            if lora_layer.is_fused(child):
                child.out_dtype = torch.float32
            else:
                _hook_once(child, WidenInput(), pre=True)
            downs, projs = downs + (name == "down_proj"), projs + (name != "down_proj")
    return {"residual_fp32_down_proj": downs, "fp32_projections": projs}
