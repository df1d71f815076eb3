"""train.residual_dtype=fp32 (with train.frozen_dtype=bf16): the plain stack's fp32 residual stream
without its fp32 weights.

Why: peft's prepare_model_for_kbit_training upcasts embeddings, norms and head to fp32 (their
values stay the bf16 ones), so the plain stack's activations run in fp32 between its bf16 matmuls.
With bf16 weights (frozen_dtype=bf16) they run in bf16, and the loss of steps 3-9 moved by up to
0.23 on llama3-8b. This lever keeps the one fp32 tensor that accumulates across layers, the
residual stream, where a fresh adapter's small updates would round away. Measured (H200,
BENCHMARKS.md, sixth round): it closes a third of that gap (0.23 -> 0.17) for 6% of the fast
preset's speed and +2.5 GiB, so the stream is not the main cause. With train.projection_dtype=fp32
as well (below) the loss curve is plain's within plain's own noise (ninth round: 0.0012 / 0.0033
mean / max over 50 steps) at 1.53x plain's speed and 1.26x its memory: engine=exact.

What this lever does, and why each step is the plain stack's arithmetic:
- the input embedding's output is widened to fp32: the same values as peft's fp32 table gives;
- a norm whose input is fp32 computes in fp32 (HF's and Liger's kernels do) and returns the
  compute dtype: rounded once, where the plain stack rounds its fp32 norm output at the next
  matmul's cast, which is all that reads it;
- each MLP's down_proj (the adapted Linear whose input, the SwiGLU product, is fp32 in the plain
  stack) returns fp32 with its LoRA branch added in fp32: the fused op reads OUT_DTYPE; peft's own
  modules get their input widened to fp32, exactly the plain stack's call.
q, k, v, gate and up return the compute dtype; in the plain stack they are fp32 (bitsandbytes'
rounded output plus the branch in fp32) until RoPE, attention or SwiGLU reads them. There a branch
under half a bf16 step added to the already rounded base is lost: the rest of the gap (measured).
train.projection_dtype=fp32 (`projections`) returns them as the plain stack does: the fused op
(OUT_DTYPE) adds the branch to the rounded base in fp32 and returns that; peft's modules get their
input widened (bitsandbytes then returns fp32). Liger's RoPE and SwiGLU read fp32 inputs and
attention casts under autocast, as in the plain stack. The rotary
cos/sin follow the stream's dtype (fp32, as in the plain stack, where autocast casts the rotated
q and k at attention); without autocast (CPU trials) they take the compute dtype, since a bf16 v
beside fp32-rotated q and k is refused by attention.
"""

import functools

import torch

OUT_DTYPE = "_harness_out_dtype"  # on down_proj (and the projections): what its fused op returns
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # fp32 inputs in plain
_HOOK = "_harness_residual_hook"


def _remove(module: torch.nn.Module) -> None:
    handle = vars(module).pop(_HOOK, None)
    if handle is not None:
        handle.remove()


def _hook(module: torch.nn.Module, fn, *, pre: bool = False) -> None:
    register = module.register_forward_pre_hook if pre else module.register_forward_hook
    setattr(module, _HOOK, register(fn))


def _widen_output(module, args, out):
    return out.float()


def _narrow_norm(module, args, out):
    weight = getattr(module, "weight", None)
    if weight is None or out.dtype.itemsize <= weight.dtype.itemsize:
        return None
    return out.to(weight.dtype)


def _rotary_without_autocast(module, args, out, *, dtype: torch.dtype):
    if torch.is_autocast_enabled(out[0].device.type):
        return None
    return tuple(t.to(dtype) for t in out)


def _widen_input(module, args):
    return (args[0].float(), *args[1:])


def apply(model, on: bool, compute_dtype: torch.dtype, *, fused: bool, projections=False) -> dict:
    """Set (on) or undo the fp32 residual stream on a peft model. Call before slim's norm hooks are
    registered: a slim layer must remember the narrowed norm output, the one the projections read.
    `fused`: the adapted Linears run the fused op, which reads OUT_DTYPE (no input widening).
    `projections` (with `on`): q, k, v, gate and up return fp32 as well. Returns what changed."""
    emb = model.get_input_embeddings()
    _remove(emb)
    norms = downs = projs = 0
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding"):
            _remove(module)
            if on:
                _hook(module, functools.partial(_rotary_without_autocast, dtype=compute_dtype))
        if type(module).__name__.endswith("RMSNorm"):
            _remove(module)
            if on:
                _hook(module, _narrow_norm)
                norms += 1
        for name, child in module.named_children():
            if not hasattr(child, "lora_A") or name not in ("down_proj", *PROJECTIONS):
                continue
            if name == "down_proj" and not hasattr(module, "gate_proj"):
                continue
            _remove(child)
            vars(child).pop(OUT_DTYPE, None)
            if on and (name == "down_proj" or projections):
                setattr(child, OUT_DTYPE, torch.float32)
                if not fused:
                    _hook(child, _widen_input, pre=True)
                downs, projs = downs + (name == "down_proj"), projs + (name != "down_proj")
    if on:
        _hook(emb, _widen_output)
    return {
        "residual_fp32_norms": norms, "residual_fp32_down_proj": downs, "fp32_projections": projs,
    }  # fmt: skip
