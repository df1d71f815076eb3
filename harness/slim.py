"""train.slim_activations=true: a decoder layer that is NOT recomputed in backward keeps the inputs
of its RMSNorms and of its SwiGLU product, not their outputs; backward recomputes those outputs
(one elementwise pass each) from what autograd keeps anyway.

Why: in a kept llama block the saved tensors are, per token, the two norm inputs and outputs
(4 x hidden), q, k, v, the attention output, gate, up and silu(gate) * up (3 x ffn). The norm
outputs and the product are each a cheap function of tensors that stay saved (the norm's input,
gate and up), so keeping them is memory spent for nothing but a few hundred microseconds:
llama3-8b, b4, seq 2048: 1.15 GiB per kept layer -> ~0.80 GiB (-(2 x 4096 + 14336) of 73,728
values a token), which buys more kept layers under the same peak (harness/levers.py).

How: the layer's forward runs under autograd's saved-tensor hooks. The norms (a forward hook) and
the SwiGLU product (`swiglu` below) record how their output was made; when an op saves that
output (or a view of it: the fused LoRA op saves its input reshaped), the hook saves the recipe
instead, and the unpack hook recomputes it with the same kernel, so backward sees the same bits.
A recipe's output is recomputed once per backward, however many ops saved it (q, k and v share
the norm's output), and matched by tensor identity, never by address.
"""

import weakref

import torch

_TABLES: list[list["_Recipe"]] = []  # one per kept layer whose forward is running


class _Recipe:
    __slots__ = ("ref", "fn", "args", "out")

    def __init__(self, out: torch.Tensor, fn, args: tuple):
        # the root of out's views: what every view of it (a reshape saved by an op) points to
        self.ref, self.fn, self.args, self.out = weakref.ref(_root(out)), fn, args, None

    def value(self) -> torch.Tensor:
        if self.out is None:
            with torch.no_grad():
                self.out = self.fn(*self.args)
        return self.out


def _root(t: torch.Tensor) -> torch.Tensor:
    return t if t._base is None else t._base


def remember(out: torch.Tensor, fn, *args) -> torch.Tensor:
    """Inside a slim layer's forward: `out` is `fn(*args)`, recomputable in backward."""
    if _TABLES:
        _TABLES[-1].append(_Recipe(out, fn, args))
    return out


def swiglu(mul, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`mul(gate, up)` (silu(gate) * up, whichever kernel), remembered in a slim layer."""
    return remember(mul(gate, up), mul, gate, up)


def _norm_hook(module, args, out):
    if _TABLES and isinstance(out, torch.Tensor) and len(args) == 1:
        remember(out, module, args[0])


def _pack(recipes: list[_Recipe]):
    def pack(t: torch.Tensor):
        base = _root(t)
        for recipe in recipes:
            if recipe.ref() is base:
                return recipe, t.shape, t.stride(), t.storage_offset()
        return t

    return pack


def _unpack(packed):
    if isinstance(packed, torch.Tensor):
        return packed
    recipe, shape, stride, offset = packed
    return recipe.value().as_strided(shape, stride, offset)


def slim_layer_forward(self, *args, **kwargs):
    """Bound as a kept decoder layer's forward (levers.apply); the class's forward inside."""
    if not torch.is_grad_enabled():
        return type(self).forward(self, *args, **kwargs)
    recipes: list[_Recipe] = []
    _TABLES.append(recipes)
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack(recipes), _unpack):
            return type(self).forward(self, *args, **kwargs)
    finally:
        _TABLES.pop()


_HOOK = "_harness_slim_hook"


def hook_norms(layer: torch.nn.Module, on: bool) -> int:
    """Add (on) or remove the recipe hook on the RMSNorms inside `layer`. Returns how many."""
    n = 0
    for module in layer.modules():
        if not type(module).__name__.endswith("RMSNorm"):
            continue
        handle = vars(module).pop(_HOOK, None)
        if handle is not None:
            handle.remove()
        if on:
            setattr(module, _HOOK, module.register_forward_hook(_norm_hook))
            n += 1
    return n
