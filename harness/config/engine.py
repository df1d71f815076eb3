"""The engine: how a trial's model runs (kernels, dtypes, recompute, what sits in host memory).

One config group (`conf/engine/`: plain, fast, lean, max, exact), typed here. The defaults are the
plain stack: peft's LoRA modules, HF's kernels, peft's fp32 upcast, every layer recomputed. Each
lever is put in place once, when the model is built (harness/engine/build.py); what each buys is
measured in BENCHMARKS.md.
"""

from dataclasses import dataclass

from harness.config.checks import one_of, positive
from harness.errors import ConfigError

CHECKPOINTING = ("none", "full", "selective", "offload")
DEFAULT_FRACTION = {"selective": 0.5, "offload": 1.0}  # engine.checkpoint_fraction=null
KEPT_LAYERS = ("spread", "top")  # where the layers that are not recomputed sit
KERNELS = ("none", "liger")
LORA_KERNELS = ("peft", "fused")
DEQUANT_KERNELS = ("bnb", "triton")
FROZEN_DTYPES = ("fp32", "bf16")
RESIDUAL_DTYPES = ("auto", "fp32")
PROJECTION_DTYPES = ("auto", "fp32")
# harness: the levers below, the harness's own modules | unsloth: Unsloth's loading and kernels
# (harness/engine/unsloth.py), the peer measured side by side; it takes no harness lever
BACKENDS = ("harness", "unsloth")
UNSLOTH_KEYS = ("name", "backend", "checkpointing", "memory_cap_gib", "gc_freeze")


def recompute_fraction(mode: str, fraction: float | None) -> float:
    """The share of decoder layers `mode` recomputes: the fraction given, else the mode's own
    (none: 0, full: 1; selective and offload take engine.checkpoint_fraction)."""
    if mode not in DEFAULT_FRACTION:
        return 0.0 if mode == "none" else 1.0
    return DEFAULT_FRACTION[mode] if fraction is None else fraction


@dataclass
class EngineConfig:
    """Speed and memory levers. Same loss function, data and optimizer under every engine."""

    name: str = "plain"  # the preset this started from (conf/engine/<name>.yaml); a label
    backend: str = "harness"  # harness | unsloth (an optional extra, CUDA only)
    kernels: str = "none"  # none | liger: Triton RMSNorm, SwiGLU and RoPE (CUDA)
    lora_kernel: str = "peft"  # peft | fused: each adapted Linear as one autograd op
    dequant_kernel: str = "bnb"  # bnb | triton: the fused op's 4-bit dequant in one kernel (CUDA)
    frozen_dtype: str = "fp32"  # fp32 (peft's upcast) | bf16: embeddings, norms, head stay bf16
    # auto: the embeddings' dtype | fp32: the plain stack's fp32 residual stream under bf16 weights
    residual_dtype: str = "auto"
    # auto | fp32 (with residual_dtype=fp32): q, k, v, gate, up return base + branch in fp32
    projection_dtype: str = "auto"
    checkpointing: str = "full"  # none | full | selective | offload: recompute in backward
    # share of decoder layers recomputed, for selective and offload; null = the mode's default
    # (selective 0.5, offload 1.0 = every layer); none and full ignore it
    checkpoint_fraction: float | None = None
    # spread: the layers not recomputed evenly over the depth | top: the last ones, whose saved
    # activations backward frees before any recompute starts (same math, a lower peak)
    kept_layers: str = "spread"
    # of the layers checkpoint_fraction takes off the GPU, this many keep their saved tensors in
    # pinned host memory (copied out in forward, back ahead of backward) instead of recomputing
    host_layers: int = 0
    slim_activations: bool = False  # kept layers save norm/SwiGLU inputs, not outputs
    # a recomputed layer skips down_proj's frozen matmul, whose output backward never reads
    trim_recompute: bool = False
    embeddings_on_cpu: bool = False  # frozen input embedding table in host memory (CUDA)
    head_on_cpu: bool = False  # frozen LM head in pinned host memory, copied in per forward
    # the allocator reserves at most this much: past it, it frees its cached blocks and retries
    # before it raises OOM (CUDA; null: no cap)
    memory_cap_gib: float | None = None
    flat_optimizer: bool = False  # one optimizer update over all adapter tensors (same math)
    # right-padded batches attend under the causal mask alone (no padding mask; same math)
    causal_padding: bool = False
    # one full collection before training, then gc.freeze(): the collector's full passes during
    # training scan only what training makes
    gc_freeze: bool = False
    # each decoder layer's training forward and backward replayed as CUDA graphs: one launch
    # each, not one per kernel (harness/engine/graphs.py; CUDA, lora_kernel=fused)
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        for key, allowed in (("checkpointing", CHECKPOINTING), ("kept_layers", KEPT_LAYERS),
                             ("kernels", KERNELS), ("lora_kernel", LORA_KERNELS),
                             ("dequant_kernel", DEQUANT_KERNELS), ("frozen_dtype", FROZEN_DTYPES),
                             ("residual_dtype", RESIDUAL_DTYPES),
                             ("projection_dtype", PROJECTION_DTYPES),
                             ("backend", BACKENDS)):  # fmt: skip
            one_of(f"engine.{key}", getattr(self, key), allowed)
        if self.backend == "unsloth":
            plain = EngineConfig()
            for key in self.__dataclass_fields__:
                if key not in UNSLOTH_KEYS and getattr(self, key) != getattr(plain, key):
                    why = f"{getattr(plain, key)}: engine.backend=unsloth takes no harness lever"
                    raise ConfigError(f"engine.{key}", getattr(self, key), why)
        if self.checkpoint_fraction is not None and not 0 < self.checkpoint_fraction <= 1:
            raise ConfigError("engine.checkpoint_fraction", self.checkpoint_fraction, "in (0, 1]")
        if not isinstance(self.host_layers, int) or self.host_layers < 0:
            raise ConfigError("engine.host_layers", self.host_layers, "must be an integer >= 0")
        if self.host_layers and self.checkpointing not in ("selective", "offload"):
            why = "takes layers that engine.checkpointing=selective or offload would recompute"
            raise ConfigError("engine.host_layers", self.host_layers, why)
        for key, why in (("slim_activations", "the fused op saves the recipe for the output"),
                         ("trim_recompute", "the fused op is what skips the matmul")):  # fmt: skip
            if getattr(self, key) and self.lora_kernel != "fused":
                raise ConfigError(f"engine.{key}", True, f"needs engine.lora_kernel=fused ({why})")
        if self.cuda_graphs:
            self._check_graphs()
        if self.projection_dtype == "fp32" and self.residual_dtype != "fp32":
            raise ConfigError(
                "engine.projection_dtype", "fp32", "needs engine.residual_dtype=fp32 (fp32 stream)"
            )
        if self.memory_cap_gib is not None:
            positive("engine.memory_cap_gib", self.memory_cap_gib)

    def _check_graphs(self) -> None:
        """What a replayed layer cannot do: choose anything on the host per call (peft's dropout
        draws its mask from torch's generator) or move tensors on the host's schedule."""
        needs = (("lora_kernel", "fused", self.lora_kernel == "fused",
                  "its dropout seeds are read on the device"),
                 ("checkpointing", "none, full or selective", self.checkpointing != "offload",
                  "offload copies on a side stream"),
                 ("host_layers", "0", not self.host_layers, "host layers copy on a side stream"),
                 ("slim_activations", "false", not self.slim_activations,
                  "slim layers look their inputs up on the host"))  # fmt: skip
        for key, allowed, ok, why in needs:
            if not ok:
                raise ConfigError("engine.cuda_graphs", True,
                                  f"needs engine.{key}={allowed} ({why})")  # fmt: skip

    @property
    def recompute_fraction(self) -> float:
        return recompute_fraction(self.checkpointing, self.checkpoint_fraction)

    def cuda_levers(self) -> dict[str, object]:
        """The levers set here that act on GPU memory or run CUDA kernels only."""
        on = {
            "backend": self.backend == "unsloth",
            "kernels": self.kernels == "liger",
            "dequant_kernel": self.dequant_kernel == "triton",
            "checkpointing": self.checkpointing == "offload",
            "host_layers": self.host_layers,
            "embeddings_on_cpu": self.embeddings_on_cpu,
            "head_on_cpu": self.head_on_cpu,
            "memory_cap_gib": self.memory_cap_gib,
            "cuda_graphs": self.cuda_graphs,
        }
        return {key: getattr(self, key) for key, used in on.items() if used}
