"""What a fine-tuning step keeps resident on the GPU, counted from first principles (bytes,
uncalibrated); what the step adds on top (activations, logits) is counted in activations.py.

Resident at the peak of a training step (bytes):

    weights           4-bit: 0.5 B/param for decoder linears; bf16 (2 B/param) for embeddings and
                      lm_head, which bitsandbytes leaves unquantized. LoRA: 2 B/param everywhere.
    quant_constants   absmax per 64-weight block: fp32 -> 0.5 bit/param; double-quantized (8-bit
                      absmax + one fp32 per 256 blocks) -> 0.127 bit/param.
    lora_params       r * (in + out) per adapted linear (+ out for DoRA's magnitude), in lora dtype.
    grads             full FT: bf16, 2 B/param. LoRA grads are allocated during backward, after the
                      logits peak has passed, so they are not part of it (H100: r16 -> r64 on
                      Llama-3-8B added 0.44 GiB allocated; the extra adapter weights alone 0.47).
    optimizer_states  per trainable param: AdamW fp32 m+v 8 B, 8-bit AdamW 2 B, SGD 0 B. Paged
                      variants keep them in CUDA managed memory, outside torch's reserved figure,
                      and spill to host under pressure: not counted. Full FT adds a 4 B fp32
                      master copy (2 + 2 + 12 = 16 B/param).

``upcast_frozen``: peft's ``prepare_model_for_kbit_training`` casts every non-4-bit parameter to
fp32: embeddings and head 4 B/param, residual stream and norm outputs fp32, and autocast's bf16
head copy (H100 llama3-8b nf4 r16 b1: 13.26 GiB reserved with the cast, 10.00 without).
"""

from dataclasses import dataclass

from harness.assets.shapes import SHAPES

GIB = 1024**3
OPTIMIZER_BYTES = {
    "paged_adamw_8bit": 2.0,
    "adamw_8bit": 2.0,
    "paged_adamw_32bit": 8.0,
    "adamw_torch": 8.0,
    "adamw_torch_fused": 8.0,
    "sgd": 0.0,
}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
QUANT_CONST_BITS = {True: 0.127, False: 0.5}
TARGET_SETS = {
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


@dataclass(frozen=True)
class Shape:
    """Decoder shape (Llama family) that drives parameter and activation counts."""

    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    tie_embeddings: bool = False

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each decoder linear, by module name."""
        h, i = self.hidden_size, self.intermediate_size
        kv = h // self.num_heads * self.num_kv_heads
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Parameters in decoder linears (what 4-bit quantization touches)."""
        return self.num_layers * sum(a * b for a, b in self.linears().values())

    @property
    def embedding_params(self) -> int:
        """Embedding plus lm_head (shared when tied); norms are negligible and left out."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)

    @property
    def params_total(self) -> int:
        """All parameters (without norms)."""
        return self.linear_params + self.embedding_params

    @classmethod
    def named(cls, name: str) -> "Shape":
        """A shape of the registry (harness/assets/shapes.py), e.g. ``Shape.named("llama3-8b")``."""
        c = SHAPES[name]
        return cls(
            c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"],
            c["num_attention_heads"], c["num_key_value_heads"], bool(c["tie_word_embeddings"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Setting:
    """The settings that move peak memory. Defaults: the QLoRA recipe of the built-in anchors."""

    quant: str = "nf4"  # nf4 | fp4 | none (bf16 frozen weights: plain LoRA)
    double_quant: bool = True
    full_finetune: bool = False  # bf16 weights + fp32 master + AdamW: 16 B/param
    r: int = 16
    targets: str | tuple[str, ...] = "all-linear"
    variant: str = "lora"
    lora_dtype: str = "fp32"
    dropout: float = 0.05
    batch_size: int = 1
    seq_len: int = 2048
    checkpointing: str = "full"  # none | full | selective | offload
    optimizer: str = "paged_adamw_8bit"
    kernels: str = "none"  # none | liger
    upcast_frozen: bool = False  # prepare_model_for_kbit_training: non-4-bit params to fp32
    residual_fp32: bool = False  # engine.residual_dtype=fp32: fp32 stream, bf16 norm outputs
    projections_fp32: bool = False  # engine.projection_dtype=fp32: q, k, v, gate, up in fp32
    lora_kernel: str = "peft"  # peft | fused: one op per adapted Linear, input saved once, no mask
    fused_masks: bool = False  # the fused LoRA ops keep each adapter's dropout mask (Unsloth's)
    checkpoint_fraction: float | None = None  # selective (null: 0.5) / offload (null: 1.0)
    kept_layers: str = "spread"  # spread | top: where the layers not recomputed sit
    host_layers: int = 0  # of the layers taken off the GPU, those kept in host memory
    slim_activations: bool = False  # kept layers keep norm/SwiGLU inputs, not outputs
    embeddings_on_cpu: bool = False  # the (untied) input embedding table in host memory
    head_on_cpu: bool = False  # the (untied) LM head in host memory, on the GPU forward to loss
    chunked_loss: bool = False  # the loss through a chunked LM head (TRL's trainer): no logits
    memory_cap_gib: float | None = None  # engine.memory_cap_gib: reserved never passes it (or OOM)
    causal_padding: bool = False  # engine.causal_padding: padded batches without the padding mask
    cuda_graphs: bool = False  # engine.cuda_graphs: each layer's graph buffers stay allocated
    liger_rope: bool = True  # with kernels=liger, RoPE too (records from before it: False)
    expandable_segments: bool = False  # the allocator's expandable segments (older records)
    carried_gib: float = 0.0  # memory an earlier trial in the same process left allocated

    def target_modules(self) -> tuple[str, ...]:
        """Adapted module names, from a preset name or an explicit list."""
        if isinstance(self.targets, str):
            return TARGET_SETS.get(self.targets, (self.targets,))
        return tuple(self.targets)


def static_bytes(shape: Shape, s: Setting) -> dict[str, float]:
    """Weights, quantization constants, adapter, grads and optimizer states (bytes)."""
    if s.full_finetune:
        n = shape.params_total
        return {
            "weights": 2.0 * n,
            "quant_constants": 0.0,
            "lora_params": 0.0,
            "grads": 2.0 * n,
            "optimizer_states": (4.0 + OPTIMIZER_BYTES.get(s.optimizer, 8.0)) * n,
        }
    quantized = s.quant in ("nf4", "fp4")
    linear_bytes = (0.5 if quantized else 2.0) * shape.linear_params
    consts = QUANT_CONST_BITS[bool(s.double_quant)] / 8 * shape.linear_params if quantized else 0.0
    n_lora = lora_param_count(shape, s)
    per = DTYPE_BYTES.get(s.lora_dtype, 4)
    embed = 2.0 * shape.embedding_params
    if s.upcast_frozen:  # fp32 embeddings/head + the bf16 head copy autocast keeps for backward
        embed = 4.0 * shape.embedding_params
        # the copy lives to the head's backward: on the peak where that is at the loss (logits
        # materialised, or no recompute), off it where the peak is a layer's recompute after it
        # (plain llama3-8b b1: 9.40 GiB allocated, 10.17 counted with it)
        if s.checkpointing == "none" or not (s.chunked_loss or s.kernels == "liger"):
            embed += 2.0 * shape.vocab_size * shape.hidden_size
    table = (4.0 if s.upcast_frozen else 2.0) * shape.vocab_size * shape.hidden_size  # one of two
    if s.embeddings_on_cpu and not shape.tie_embeddings:
        embed -= table
    # the streamed head is on the GPU from the forward's start to the head's backward: off the
    # peak where that sits in the decoder layers' backward (any recompute), on it without one
    if s.head_on_cpu and not shape.tie_embeddings and s.checkpointing != "none":
        embed -= table
    return {
        "weights": linear_bytes + embed,
        "quant_constants": consts,
        "lora_params": per * n_lora,
        "grads": 0.0,
        "optimizer_states": 0.0 if _paged(s) else OPTIMIZER_BYTES.get(s.optimizer, 8.0) * n_lora,
        "graph_buffers": graph_bytes(shape, s, per * n_lora),
    }


def graph_bytes(shape: Shape, s: Setting, lora_grads: float) -> float:
    """engine.cuda_graphs (harness/engine/graphs.py): what each decoder layer's two graphs keep
    allocated between replays beyond what eager layers keep. The graph's static input is the
    layer input a recompute saves anyway; on top: its static output, the incoming gradient's
    buffer and the input gradient it writes (3 hidden-state tensors), the rotary cos and sin it
    copies in, and the adapter gradients it returns, which eager backward makes after the peak
    (llama3-8b b1 and qwen2.5-1.5b b4, every layer recomputed: 1.56 and 2.33 GiB over the count
    without them)."""
    if not s.cuda_graphs or s.full_finetune:
        return 0.0
    tokens, h = s.batch_size * s.seq_len, shape.hidden_size
    res = 4.0 if s.upcast_frozen or s.residual_fp32 else 2.0
    head_dim = h // shape.num_heads
    per_layer = 3 * res * h + 2 * 2.0 * head_dim
    return shape.num_layers * tokens * per_layer + lora_grads


def off_peak_bytes(shape: Shape, s: Setting) -> float:
    """Bytes left out of the peak: LoRA grads (after the peak) and paged optimizer states."""
    if s.full_finetune:
        return 0.0
    n_lora = lora_param_count(shape, s)
    paged = OPTIMIZER_BYTES.get(s.optimizer, 8.0) * n_lora if _paged(s) else 0.0
    grads = 0.0 if s.cuda_graphs else DTYPE_BYTES.get(s.lora_dtype, 4) * n_lora  # graph_bytes
    return grads + paged


def _paged(s: Setting) -> bool:
    return s.optimizer.startswith("paged_")


def lora_param_count(shape: Shape, s: Setting) -> int:
    """Trainable adapter parameters: r*(in+out) per adapted linear, + out for DoRA magnitudes."""
    dims = shape.linears()
    per_layer = 0
    for name in s.target_modules():
        fan_in, fan_out = dims.get(name, (shape.hidden_size, shape.hidden_size))
        per_layer += s.r * (fan_in + fan_out) + (fan_out if "dora" in s.variant else 0)
    return shape.num_layers * per_layer
