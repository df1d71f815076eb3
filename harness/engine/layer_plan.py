"""Which decoder layers a trial recomputes in backward, keeps on the GPU, or keeps in host memory
(engine.checkpointing, engine.checkpoint_fraction, engine.kept_layers, engine.host_layers). Pure
functions of the depth and the config: preflight checks them before any model is loaded."""

import math

from harness.config.engine import EngineConfig, recompute_fraction
from harness.errors import ConfigError


def spread(n: int, fraction: float) -> set[int]:
    """round(fraction * n) of n layer indices (at least one), spread evenly over the depth."""
    k = max(1, round(fraction * n))
    return {math.floor(i * n / k) for i in range(k)}


def recomputed_layers(n: int, fraction: float, kept_layers: str = "spread") -> set[int]:
    """The indices of the decoder layers recomputed in backward: round(fraction * n) of n (at
    least one; none at fraction 0), spread over the depth, or (kept_layers=top) the first ones,
    so that the layers that keep their activations are the last. Backward runs the last layers
    first and frees what they saved before it recomputes any layer below: only the recompute
    working set of one layer and the kept layers' activations never meet at the peak."""
    if fraction <= 0:
        return set()
    if kept_layers == "top":
        return set(range(max(1, round(fraction * n))))
    return spread(n, fraction)


def host_positions(n: int, ecfg: EngineConfig) -> tuple[set[int], set[int]]:
    """(recomputed, host): of the layers `checkpoint_fraction` would recompute, `host_layers`
    spread evenly over them (centred: each copy has compute on both sides) keep their saved
    tensors in host memory; the others are recomputed."""
    mode = ecfg.checkpointing
    chosen = sorted(recomputed_layers(n, recompute_fraction(mode, ecfg.checkpoint_fraction),
                                      ecfg.kept_layers))  # fmt: skip
    h = ecfg.host_layers
    if h > len(chosen):
        why = (f"at most the {len(chosen)} of {n} layers that engine.checkpoint_fraction="
               f"{ecfg.checkpoint_fraction} takes off the GPU")  # fmt: skip
        raise ConfigError("engine.host_layers", h, why)
    host = {chosen[math.floor((i + 0.5) * len(chosen) / h)] for i in range(h)}
    return set(chosen) - host, host
