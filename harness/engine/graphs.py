"""engine.cuda_graphs=true: every decoder layer's training forward and its backward (the recompute
included) replayed as two CUDA graphs, one launch each instead of the hundreds of kernel launches
the host issues for them one by one.

Why: at batch 1, and on small models, a step's GPU work is short and the host's launch rate bounds
it: the GPU waits between kernels. A replayed graph launches the same kernels back to back. The
profile (`train.profile_steps`, one H100, seq 2048, every layer recomputed): llama3-8b b1 13,336
launch calls a step under plain, 232 under fast with graphs, the GPU 52% -> 84% busy, 3.08x
plain's tokens/s; qwen2.5-1.5b b4 11,559 -> 229, 57% -> 83%, 3.60x (BENCHMARKS.md).

How: the first training call of the first decoder layer captures them all at once with
torch.cuda.make_graphed_callables (warm-up on a side stream, the forwards in order, the backwards
in reverse, one memory pool: a replay in that order never overwrites what a later one reads), each
as it runs now: its runner (torch's checkpoint, the trimmed recompute) and its arguments (hidden
states, rotary cos/sin, positions: graph inputs, copied in per call; None, bools and numbers:
fixed). A later call with the same signature (shapes, dtypes, fixed arguments) replays; any other
(another sequence length, a padding mask) runs the layer eagerly, as before, and is counted.

A replay repeats its kernels' arguments, so nothing in a layer may be chosen on the host per call:
the fused LoRA op's dropout seed is read by its Triton kernels from a device table (DropoutSeeds)
redrawn on the device's generator when the first layer's training call starts a forward. A
recompute in backward reads the forward's seed (nothing redraws it in between), so it rebuilds the
forward's mask without checkpoint's RNG bookkeeping. The masks are other draws than the eager
path's, from the same distribution; the same seeds give the same result graphed or eager.

Needs: CUDA, lora_kernel=fused, recompute by torch's checkpoint or none (no offload, host layers or
slim layers: they move tensors between streams on the host's schedule) and train.grad_accum=1
(autograd takes the graph's gradient buffer as a parameter's .grad on the first micro-batch; the
next replay would overwrite it).
"""

import functools

import torch
from torch import nn
from torch.utils import _pytree as pytree

from harness.engine import lora_layer
from harness.engine.layers import decoder_layers, plain

_FIXED = (type(None), bool, int, float, str)  # argument types a graph can hold fixed
_TENSOR = object()  # a placeholder among the fixed arguments: a graph input goes here


class DropoutSeeds:
    """One int64 dropout seed per fused LoRA layer, in a device table: each layer reads its slot
    (`layer.seed`, a one-element view); `refresh` redraws the table on the device's generator
    (which the trial's seed seeds)."""

    def __init__(self, model, device) -> None:
        fused = [m for m in model.modules() if lora_layer.is_fused(m)]
        self.table = torch.zeros(len(fused), dtype=torch.int64, device=device)
        for k, layer in enumerate(fused):
            layer.seed = self.table[k : k + 1]

    def refresh(self) -> None:
        self.table.random_(0, 2**31 - 1)


def _key(spec, leaves) -> tuple | None:
    """What a graph is specific to: the argument structure, the fixed values, each tensor's shape,
    dtype and device. None where an argument cannot be held by a graph (a cache object)."""
    parts = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append((tuple(leaf.shape), leaf.dtype, leaf.device))
        elif isinstance(leaf, _FIXED):
            parts.append(("fixed", leaf))
        else:
            return None
    return spec, tuple(parts)


class _Call(nn.Module):
    """One layer's training call as make_graphed_callables sees it: the call's tensors in, the
    layer run by its runner inside. The layer is a submodule: its parameters are graph inputs."""

    def __init__(self, layer: nn.Module, how, spec, fixed: list) -> None:
        super().__init__()
        self.layer, self.how, self.spec, self.fixed = layer, how, spec, fixed

    def forward(self, *tensors):
        it = iter(tensors)
        leaves = [next(it) if f is _TENSOR else f for f in self.fixed]
        args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        return self.how(functools.partial(nn.Module.__call__, self.layer, **kwargs), *args)


class GraphedLayers:
    """The decoder layers' runners under engine.cuda_graphs: `runner(pos)` is layer pos's
    `_gradient_checkpointing_func`; `hows[pos]` runs it eagerly (what layers.py set). The first
    layer's call with grad on starts a training forward: the seeds are redrawn there (a recompute
    in backward calls the layer's forward, not its runner: it reads the forward's seeds)."""

    def __init__(self, layers: list, hows: list, seeds: DropoutSeeds) -> None:
        self.layers, self.hows, self.seeds = layers, hows, seeds
        self.graphed, self.key = None, None
        self.replayed, self.eager = 0, 0

    def runner(self, pos: int):
        return functools.partial(self, pos)

    def __call__(self, pos: int, run, *args):
        leaves, spec = pytree.tree_flatten(((*run.args, *args), run.keywords))
        key = _key(spec, leaves)
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        if pos == 0 and torch.is_grad_enabled():
            self.seeds.refresh()
        grad = torch.is_grad_enabled() and bool(tensors) and tensors[0].is_cuda  # CUDA's graphs
        if self.graphed is None and pos == 0 and grad and key is not None:
            self._capture(spec, leaves, key)
        if self.graphed is not None and grad and key == self.key:
            self.replayed += 1
            return self.graphed[pos](*tensors)
        self.eager += 1
        return self.hows[pos](run, *args)

    def _capture(self, spec, leaves, key) -> None:
        hidden = next(x for x in leaves if isinstance(x, torch.Tensor))  # the layer's input
        fixed = [_TENSOR if isinstance(x, torch.Tensor) else x for x in leaves]
        calls, samples = [], []
        for layer, how in zip(self.layers, self.hows, strict=True):
            calls.append(_Call(layer, how, spec, fixed))
            samples.append(tuple(_sample(x, x is hidden) for x in leaves
                                 if isinstance(x, torch.Tensor)))  # fmt: skip
        on = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")
        # make_graphed_callables refuses autocast's weight-cast cache: the same casts, uncached
        try:
            with torch.autocast("cuda", dtype=dtype, enabled=on, cache_enabled=False):
                graphed = torch.cuda.make_graphed_callables(
                    tuple(calls), tuple(samples), num_warmup_iters=2, allow_unused_input=True
                )
        except torch.OutOfMemoryError:  # an OOM is the trial's result, recorded as such
            raise
        except RuntimeError as e:  # something in a layer the graphs cannot hold: say which lever
            why = "capturing the decoder layers' CUDA graphs failed; engine.cuda_graphs=false runs"
            raise RuntimeError(f"{why} them eagerly: {type(e).__name__}: {e}") from e
        self.graphed, self.key = graphed, key

    def counts(self) -> dict:
        """Layer calls replayed from the graphs and run eagerly (training calls only)."""
        return {"replayed": self.replayed, "eager": self.eager}


def _sample(x: torch.Tensor, hidden: bool) -> torch.Tensor:
    """A static input of the graph like `x`: its own buffer (each layer's, as its backward reads
    it after later layers ran); the hidden states always take a gradient (every layer's input
    but the first's does)."""
    return x.detach().clone().requires_grad_(hidden or x.requires_grad)


def place(model, layers: list) -> int:
    """Every decoder layer runs through one GraphedLayers, with the runner layers.py set (or
    none: the layer's forward as it is) as its eager path; the fused LoRA layers read their
    dropout seeds from its device table. Returns the layers graphed."""
    hows = [layer._gradient_checkpointing_func if layer.gradient_checkpointing else plain
            for layer in layers]  # fmt: skip
    graphs = GraphedLayers(layers, hows, DropoutSeeds(model, next(model.parameters()).device))
    for pos, layer in enumerate(layers):
        layer.gradient_checkpointing = True  # HF's per-layer hook: where the runner is called
        layer._gradient_checkpointing_func = graphs.runner(pos)
    return len(layers)


def run_counts(model) -> dict:
    """What the graphs counted while the model trained: the decoder layer calls replayed and
    those run eagerly (another shape, no grad); {} without engine.cuda_graphs."""
    for layer in decoder_layers(model):
        run = getattr(layer, "_gradient_checkpointing_func", None)
        if isinstance(getattr(run, "func", None), GraphedLayers):
            counts = run.func.counts()
            return {"graph_replayed_calls": counts["replayed"],
                    "graph_eager_calls": counts["eager"]}  # fmt: skip
    return {}
