"""How each decoder layer runs in training, set once per build: recomputed in backward
(engine.checkpointing, engine.checkpoint_fraction, engine.kept_layers), recomputed with its input
in host memory (checkpointing=offload), its saved tensors in host memory (engine.host_layers),
slim (engine.slim_activations), its recompute trimmed (engine.trim_recompute).

HF's decoder layers (transformers' GradientCheckpointingLayer) run their forward through
`self._gradient_checkpointing_func(run, *args)` when `self.gradient_checkpointing` is set, in
training with grad on. That per-layer hook is where the harness puts its own runner (`LayerRun`):
torch's checkpoint for a recomputed layer (HF's own choice, `use_reentrant=False`), the model's
Offloader for an offloaded or host layer, the layer's slim table for a slim one. Eval and
generation run the layer's forward as it is.
"""

import functools

import torch
from torch.utils.checkpoint import checkpoint

from harness.config.engine import EngineConfig
from harness.engine import lora_layer, trim
from harness.engine.host_layers import HostRun
from harness.engine.kernels import RMSNorm, SwiGLU
from harness.engine.layer_plan import host_positions
from harness.engine.slim import Recipes


def decoder_layers(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def slim_positions(n: int, ecfg: EngineConfig) -> set[int]:
    """The layers engine.slim_activations makes slim: those neither recomputed nor host layers."""
    if not ecfg.slim_activations:
        return set()
    recomputed, host = host_positions(n, ecfg)
    return set(range(n)) - recomputed - host


def layer_recipes(layer) -> Recipes:
    """The slim table the layer's owned norms and SwiGLU already record in (a base built before),
    else a new one."""
    for module in layer.modules():
        if isinstance(module, RMSNorm | SwiGLU) and module.recipes is not None:
            return module.recipes
    return Recipes()


def plain(run, *args):
    return run(*args)


class Checkpoint:
    """torch's non-reentrant checkpoint (what HF's own hook runs), the recompute marked on the
    model's Recompute flag where a trimmed projection reads it. `rng=False` (engine.cuda_graphs):
    no RNG state saved and restored around the recompute, which a graph capture cannot do and
    nothing needs (the layer's dropout seeds are on the device: graphs.py)."""

    def __init__(self, recompute: trim.Recompute | None, rng: bool = True) -> None:
        self.recompute, self.rng = recompute, rng

    def __call__(self, run, *args):
        kw = {"use_reentrant": False, "preserve_rng_state": self.rng}
        if self.recompute is None:
            return checkpoint(run, *args, **kw)
        return checkpoint(run, *args, context_fn=self.recompute.contexts, **kw)


class LayerRun:
    """A decoder layer's `_gradient_checkpointing_func`: `how` runs the forward; with host layers
    in the model, the output's gradient hook starts their copies back (`fetch`)."""

    def __init__(self, how, fetch=None) -> None:
        self.how, self.fetch = how, fetch

    def __call__(self, run, *args):
        out = self.how(run, *args)
        hidden = out[0] if isinstance(out, tuple) else out
        if self.fetch is not None and isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(self.fetch)
        return out


def place(layers: list, ecfg: EngineConfig, *, recipes: dict[int, Recipes], offloader,
          recompute: trim.Recompute) -> dict:  # fmt: skip
    """Set each decoder layer's runner and its fused LoRA layers' slim and trim settings. Returns
    the counts the record keeps."""
    recomputed, host = host_positions(len(layers), ecfg)
    trimmed = 0
    for pos, layer in enumerate(layers):
        if pos in host:
            how = HostRun(offloader, pos, layer)
        elif pos in recomputed:
            ckpt = Checkpoint(recompute if ecfg.trim_recompute else None, not ecfg.cuda_graphs)
            how = offloader.checkpoint if ecfg.checkpointing == "offload" else ckpt
        else:
            how = recipes[pos].run if pos in recipes else None
        fetch = functools.partial(offloader.fetch_below, pos) if host else None
        layer.gradient_checkpointing = how is not None or fetch is not None
        if layer.gradient_checkpointing:
            layer._gradient_checkpointing_func = LayerRun(how or plain, fetch)
        for module in layer.modules():
            if lora_layer.is_fused(module):
                module.recipes = recipes.get(pos)
        down = getattr(getattr(layer, "mlp", None), "down_proj", None)
        if lora_layer.is_fused(down):
            down.trim = ecfg.trim_recompute and pos in recomputed and trim.trimmable(layer)
            down.recompute = recompute if down.trim else None
            trimmed += down.trim
    return {"checkpointed_layers": len(recomputed), "num_layers": len(layers),
            "host_layers": len(host), "recompute_trimmed": trimmed,
            "slim_layers": len(recipes)}  # fmt: skip
