"""engine.slim_activations=true: a decoder layer that is NOT recomputed in backward keeps the inputs
of its RMSNorms and of its SwiGLU product, not their outputs; backward recomputes those outputs
(one elementwise pass each) from what autograd keeps anyway. Needs engine.lora_kernel=fused.

Why: in a kept llama block the saved tensors are, per token, the two norm inputs and outputs
(4 x hidden), q, k, v, the attention output, gate, up and silu(gate) * up (3 x ffn). The norm
outputs and the product are each a cheap function of tensors that stay saved (the norm's input,
gate and up), so keeping them is memory spent for little time: llama3-8b, b4, seq 2048, 0.28 GiB
of the ~1.15 GiB a kept layer holds (H200), which buys more kept layers under the same peak.

How: each slim layer owns one `Recipes` table, live while the layer's forward runs (the layer's
runner, harness/engine/layers.py). The layer's owned norms and SwiGLU (harness/engine/kernels.py)
record in it how their output was made; the layer's fused LoRA layers, which are what save those
outputs (q, k, v, gate, up and down read them), look their input up and save the recipe instead
of the tensor; backward recomputes it with the same kernel (the same bits), once however many ops
share it. Matched by tensor identity, never by address. (Autograd's saved-tensor hooks give the
same memory, but a Python call for every tensor any op in the layer saves cost ~3 ms of host time
per layer and step on the H200.)
"""

import weakref

import torch


class Recipe:
    """How one remembered output was made: `fn(*args)`, run again (once) in backward."""

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


class Recipes:
    """One slim layer's table of recipes, filled while that layer's forward runs (empty, None,
    at any other time: eval, generation, backward)."""

    def __init__(self) -> None:
        self.table: dict[int, Recipe] | None = None

    def run(self, run, *args):
        """The layer's forward, `run(*args)`, with this table live."""
        self.table = {}
        try:
            return run(*args)
        finally:
            self.table = None

    def remember(self, out: torch.Tensor, fn, *args) -> torch.Tensor:
        """While the layer's forward runs: `out` is `fn(*args)`, recomputable in backward."""
        if self.table is not None and isinstance(out, torch.Tensor):
            self.table[id(_root(out))] = Recipe(out, fn, args)
        return out

    def find(self, x: torch.Tensor) -> Recipe | None:
        """The recipe of `x` (or of the tensor x is a view of), else None."""
        if not self.table:
            return None
        root = _root(x)
        recipe = self.table.get(id(root))
        return recipe if recipe is not None and recipe.ref() is root else None
