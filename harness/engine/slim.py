"""train.slim_activations=true: a decoder layer that is NOT recomputed in backward keeps the inputs
of its RMSNorms and of its SwiGLU product, not their outputs; backward recomputes those outputs
(one elementwise pass each) from what autograd keeps anyway. Needs train.lora_kernel=fused.

Why: in a kept llama block the saved tensors are, per token, the two norm inputs and outputs
(4 x hidden), q, k, v, the attention output, gate, up and silu(gate) * up (3 x ffn). The norm
outputs and the product are each a cheap function of tensors that stay saved (the norm's input,
gate and up), so keeping them is memory spent for little time: llama3-8b, b4, seq 2048, 0.28 GiB
of the ~1.15 GiB a kept layer holds (H200), which buys more kept layers under the same peak.

How: while a slim layer's forward runs, the norms (a forward hook) and the SwiGLU product
(`swiglu` below) record how their output was made. The fused LoRA op (harness/lora_op.py), which
is what saves those outputs (q, k, v, gate, up and down read them), asks `recipe_for(x)` and saves
the recipe instead of x; its backward recomputes x with the same kernel (the same bits), once per
backward however many ops share it. Matched by tensor identity, never by address. (A first
version saved through autograd's saved-tensor hooks: same memory, but a Python call for every
tensor any op in the layer saves cost ~3 ms of host time per layer and step on the H200.)
"""

import weakref

import torch

_TABLES: list[dict[int, "_Recipe"]] = []  # one per slim layer whose forward is running


class _Recipe:
    __slots__ = ("ref", "fn", "args", "out")

    def __init__(self, out: torch.Tensor, fn, args: tuple):
        # the root of out's views: what every view of it (a reshape in an op) points to
        self.ref, self.fn, self.args, self.out = weakref.ref(_root(out)), fn, args, None

    def value(self) -> torch.Tensor:
        """The output again, computed once (and kept while any op still holds this recipe)."""
        if self.out is None:
            with torch.no_grad():
                self.out = self.fn(*self.args)
        return self.out


def _root(t: torch.Tensor) -> torch.Tensor:
    return t if t._base is None else t._base


def remember(out: torch.Tensor, fn, *args) -> torch.Tensor:
    """Inside a slim layer's forward: `out` is `fn(*args)`, recomputable in backward."""
    if _TABLES:
        _TABLES[-1][id(_root(out))] = _Recipe(out, fn, args)
    return out


def recipe_for(x: torch.Tensor) -> "_Recipe | None":
    """The recipe of `x` (or of the tensor x is a view of) in the running slim layer, else None."""
    if not _TABLES:
        return None
    root = _root(x)
    recipe = _TABLES[-1].get(id(root))
    return recipe if recipe is not None and recipe.ref() is root else None


def swiglu(mul, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`mul(gate, up)` (silu(gate) * up, whichever kernel), remembered in a slim layer."""
    return remember(mul(gate, up), mul, gate, up)


def _norm_hook(module, args, out):
    if _TABLES and isinstance(out, torch.Tensor) and len(args) == 1:
        remember(out, module, args[0])


def slim_layer_forward(self, *args, **kwargs):
    """Bound as a kept decoder layer's forward (levers.apply); the class's forward inside."""
    if not torch.is_grad_enabled():
        return type(self).forward(self, *args, **kwargs)
    _TABLES.append({})
    try:
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
