"""engine.lora_kernel=fused: a LoRA-adapted Linear (frozen base, 4-bit or 16-bit, plus the adapter
with its dropout) as ONE autograd op, the same math as peft's Linear4bit/Linear under autocast:

    y = x Wᵀ (+ bias) + s · dropout_p(x) Aᵀ Bᵀ        W = dequantize(W4) in the compute dtype

What it saves and moves, where peft's three modules differ:
- saves x (which the layer's other projections hold anyway) and h = s·dropout(x)Aᵀ [N, r]; peft
  saves dropout(x) and its mask per adapted Linear (7 per llama block);
- the dropout mask is a pure function of a seed (drawn from the CPU generator, which activation
  checkpointing restores before it recomputes a layer; or, under engine.cuda_graphs, a device
  int64 the model redraws before each forward: graphs.py), regenerated in backward: on CUDA
  inside Triton kernels that read x once (lora_triton.py), on the CPU as a seeded tensor;
- the branch is accumulated into the base output in place (addmm), and in backward the LoRA
  input-gradient is added into the base's in place: no separate add passes. Where the input (or
  `out_dtype`: a down_proj under engine.residual_dtype=fp32) is wider than the compute dtype, the
  branch is added in that dtype instead, as peft adds it to bitsandbytes' output: a small update
  to an fp32 residual stream is not rounded away;
- in a slim layer (harness/engine/slim.py) it saves the recipe of its input, not the input;
- in a trimmed recompute (harness/engine/trim.py: a down_proj whose output backward never reads)
  it skips the base matmul and returns an unfilled output;
- the base weight is dequantized once in forward and once in backward, as bitsandbytes does;
  with engine.dequant_kernel=triton by one kernel that writes bitsandbytes' values bit for bit
  (harness/engine/dequant_triton.py).
The module that calls it, with peft's fallback, is harness/engine/lora_layer.py.
"""

import contextlib
import importlib.util

import torch
from torch.nn import functional as F


def dropout_mask(shape, p: float, seed, device) -> torch.Tensor:
    """The CPU path's keep-mask / (1-p) for `seed` (an int, or a one-element int64 tensor: its
    value), float32 like x's values after dropout."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    keep = torch.empty(shape, device=device).bernoulli_(1.0 - p, generator=gen)
    return keep * (1.0 / (1.0 - p))


_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _use_triton(x: torch.Tensor, p: float) -> bool:
    return bool(p) and _HAS_TRITON and x.device.type == "cuda" and x.shape[-1] % 4 == 0


def triton_dequant_ok(layer) -> bool:
    """A bitsandbytes 4-bit layer on CUDA whose weight the Triton kernel reproduces exactly."""
    weight = getattr(layer, "weight", None)
    if weight is None or weight.__class__.__name__ != "Params4bit" or not weight.is_cuda:
        return False
    state = getattr(weight, "quant_state", None)
    if state is None or not _HAS_TRITON:
        return False
    from harness.engine.dequant_triton import supported

    return supported(weight.data, state) is None


def base_weight(layer, dtype: torch.dtype, dequant=None) -> torch.Tensor:
    """The frozen base weight [out, in] in `dtype`: dequantized for a bitsandbytes 4-bit layer, by
    `dequant` (a dequant_triton.Dequantizer) where given, else by bitsandbytes."""
    weight = layer.weight
    if dequant is not None:
        return dequant(weight.data, weight.quant_state, dtype)
    if weight.__class__.__name__ == "Params4bit":
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
    return weight.to(dtype)


def supported_base(layer) -> bool:
    """A plain nn.Linear or a bitsandbytes Linear4bit with its quant state."""
    weight = getattr(layer, "weight", None)
    if weight is None or not isinstance(layer, torch.nn.Linear):
        return False
    if weight.__class__.__name__ == "Params4bit":
        return getattr(weight, "quant_state", None) is not None
    return weight.dtype.is_floating_point


def _explicit_dtypes(device_type: str, *dtypes: torch.dtype):
    """Autocast off where it is on and could change a dtype the op chose: every matmul here runs
    in the dtype it was given. Under autocast in one dtype that is all the op uses (bf16 on a GPU)
    autocast changes nothing, and entering the context costs host time (~9 us a call)."""
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    if dtypes and all(d == torch.get_autocast_dtype(device_type) for d in dtypes):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


class LoraLinear(torch.autograd.Function):
    """y = base(x) + scale · dropout_p(x) Aᵀ Bᵀ; see the module docstring. The base matmul runs in
    `base_dtype` (bitsandbytes' compute dtype), the adapter's in `dtype` (autocast's, else the
    adapter weights'), as in peft; on a GPU under bf16 autocast both are bf16."""

    @staticmethod
    def forward(
        ctx, x, weight_a, weight_b, layer, scale, p, seed, dtype, base_dtype, out_dtype=None,
        skip_base=False, recipe=None, dequant=None,
    ):  # fmt: skip
        """`recipe`: how x was made (slim.Recipe: saved instead of x); `dequant`: the Triton
        dequantizer of `layer`'s 4-bit weight, or None for bitsandbytes'."""
        wide = x.dtype if out_dtype is None or x.dtype.itemsize >= out_dtype.itemsize else out_dtype
        ctx.recipe = recipe  # a slim layer's norm output or SwiGLU product: recomputed
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xb, x2 = None if skip_base else x2.to(base_dtype), x2.to(dtype)
        a, b = weight_a.to(dtype), weight_b.to(dtype)
        bias = None if layer.bias is None else layer.bias.to(base_dtype)
        c = scale / (1.0 - p)
        with _explicit_dtypes(x.device.type, dtype, base_dtype):
            y = None  # a trimmed recompute (trim.py): nothing reads the output
            if not skip_base:
                y = F.linear(xb, base_weight(layer, base_dtype, dequant), bias).to(
                    dtype
                )  # [N, out]
            del xb
            if _use_triton(x2, p):
                from harness.engine.lora_triton import lora_a_forward

                x2 = x2.contiguous()
                h = lora_a_forward(x2, a.contiguous(), p, seed, c)
            elif p:
                xd = (x2.float() * dropout_mask(x2.shape, p, seed, x2.device)).to(dtype)
                h = (xd @ a.t()) * scale
                del xd
            else:
                h = (x2 @ a.t()) * scale
            if y is None:
                y = x2.new_empty((x2.shape[0], layer.out_features), dtype=wide)
            elif wide.itemsize > y.dtype.itemsize:  # output to an fp32 residual stream: as peft
                # adds its branch to bitsandbytes' output, in fp32 (a small update survives)
                y = y.to(wide).add_(h @ b.t())
            else:
                y.addmm_(h, b.t())
        ctx.save_for_backward(*([] if ctx.recipe else [x2]), a, b, h)
        ctx.layer, ctx.dequant, ctx.scale, ctx.p, ctx.seed = layer, dequant, scale, p, seed
        ctx.dtype, ctx.base_dtype, ctx.x_shape, ctx.x_dtype = dtype, base_dtype, shape, x.dtype
        ctx.weight_dtypes = (weight_a.dtype, weight_b.dtype)
        return y.view(*shape[:-1], y.shape[-1]).to(wide)

    @staticmethod
    def backward(ctx, grad_y):
        # the graph (and so ctx) lives until backward ends; a recipe held here would keep its
        # recomputed output alive as long: drop it, the other ops that share it still hold it
        recipe, ctx.recipe = ctx.recipe, None
        if recipe is None:
            x2, a, b, h = ctx.saved_tensors
        else:  # what forward read, again: the same kernel on the same saved inputs
            a, b, h = ctx.saved_tensors
            x2 = recipe.value().reshape(-1, ctx.x_shape[-1]).to(ctx.dtype).contiguous()
            del recipe
        p, seed, dtype = ctx.p, ctx.seed, ctx.dtype
        c = ctx.scale / (1.0 - p)
        want_x = ctx.needs_input_grad[0]
        with _explicit_dtypes(grad_y.device.type):
            g2 = grad_y.reshape(-1, grad_y.shape[-1])
            g = g2.to(dtype)  # [N, out]
            grad_b = g.t() @ h  # [out, r]
            gh = ((g @ b) * c).contiguous()  # [N, r]: d loss / d ((x ⊙ m) Aᵀ)
            del g
            grad_x = None
            if want_x:  # the base's input gradient: dequantize again, as bitsandbytes does
                w = base_weight(ctx.layer, ctx.base_dtype, ctx.dequant)
                grad_x = (g2.to(ctx.base_dtype) @ w).to(dtype)  # [N, in]
                del w
            if _use_triton(x2, p):
                from harness.engine.lora_triton import lora_a_grad, lora_x_grad_add

                grad_a = lora_a_grad(gh, x2, p, seed)
                if want_x:
                    lora_x_grad_add(grad_x, gh, a.contiguous(), p, seed)
            else:
                keep = dropout_mask(x2.shape, p, seed, x2.device) * (1.0 - p) if p else None
                xd = x2 if keep is None else (x2.float() * keep).to(dtype)
                grad_a = gh.t() @ xd
                del xd
                if want_x and keep is None:
                    grad_x.addmm_(gh, a)
                elif want_x:
                    grad_x += ((gh @ a).float() * keep).to(dtype)
        if grad_x is not None:
            grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        dtype_a, dtype_b = ctx.weight_dtypes
        return grad_x, grad_a.to(dtype_a), grad_b.to(dtype_b), *([None] * 10)
