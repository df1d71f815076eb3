"""What a fine-tuning step keeps on the GPU, counted from first principles (bytes, uncalibrated).

The estimate adds what lives on the GPU at the peak of a training step (bytes):

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
    activations       bytes/token stashed per decoder layer, times layers kept alive by the
                      checkpointing mode, times batch * seq.
    logits            batch * seq * vocab * 10 B: bf16 logits + fp32 upcast + fp32 log-softmax.
                      Liger's fused linear cross-entropy never materialises them (~0).

``upcast_frozen``: peft's ``prepare_model_for_kbit_training`` (harness/models.py calls it for
4-bit) casts every non-4-bit parameter to fp32. Embeddings and lm_head then take 4 B/param, the
residual stream and norm outputs run in fp32, and autocast keeps a bf16 copy of lm_head for the
backward. Measured on an H100, Llama-3-8B nf4 r16 batch 1: 13.26 GiB reserved with the cast,
10.00 without; counted here: +1.96 (fp32 embed/head) +0.98 (bf16 head copy) +0.5 (fp32 residual).
"""

from dataclasses import dataclass

from harness.assets.shapes import SHAPES
from harness.config.engine import recompute_fraction

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
LOGIT_BYTES = 10  # bf16 logits 2 + fp32 upcast 4 + fp32 log-softmax kept for backward 4
TARGET_SETS = {
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
ATTN_MODULES = frozenset(TARGET_SETS["attention"])


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
    checkpoint_fraction: float | None = None  # selective (null: 0.5) / offload (null: 1.0)
    kept_layers: str = "spread"  # spread | top: where the layers not recomputed sit
    host_layers: int = 0  # of the layers taken off the GPU, those kept in host memory
    slim_activations: bool = False  # kept layers keep norm/SwiGLU inputs, not outputs
    embeddings_on_cpu: bool = False  # the (untied) input embedding table in host memory
    head_on_cpu: bool = False  # the (untied) LM head in host memory, on the GPU forward to loss
    chunked_loss: bool = False  # the loss through a chunked LM head (TRL's trainer): no logits
    memory_cap_gib: float | None = None  # engine.memory_cap_gib: reserved never passes it (or OOM)
    causal_padding: bool = False  # engine.causal_padding: padded batches without the padding mask

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
        embed = 4.0 * shape.embedding_params + 2.0 * shape.vocab_size * shape.hidden_size
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
    }


def off_peak_bytes(shape: Shape, s: Setting) -> float:
    """Bytes left out of the peak: LoRA grads (after the peak) and paged optimizer states."""
    if s.full_finetune:
        return 0.0
    n_lora = lora_param_count(shape, s)
    paged = OPTIMIZER_BYTES.get(s.optimizer, 8.0) * n_lora if _paged(s) else 0.0
    return DTYPE_BYTES.get(s.lora_dtype, 4) * n_lora + paged


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


def activation_bytes(shape: Shape, s: Setting) -> float:
    """Activation bytes held at the peak, before calibration.

    Per token and layer, bf16: attention stashes norm in/out, q, k, v, rotated q and k and the
    attention output, 2*(5h + 3kv) B (flash/SDPA: no seq^2 term); the MLP stashes norm in/out,
    gate, up, act(gate), product, 2*(2h + 4i) B. Each adapter keeps its input cast to the adapter
    dtype (+1 B dropout mask). Llama-3-8B, fp32 all-linear, dropout>0: 47 + 131 + 195 = 373 kB.
    """
    h, i = shape.hidden_size, shape.intermediate_size
    kv = h // shape.num_heads * shape.num_kv_heads
    # Norm inputs/outputs and the residual stream: fp32 once frozen params are upcast; with
    # engine.residual_dtype=fp32 the stream (norm inputs) is fp32 and the norm outputs bf16.
    upcast = s.upcast_frozen and not s.full_finetune
    res = 4.0 if upcast or (s.residual_fp32 and not s.full_finetune) else 2.0
    norm_out = 4.0 if upcast else 2.0
    attn, mlp = (res + norm_out) * h + 2.0 * (3 * h + 3 * kv), (res + norm_out) * h + 2.0 * 4 * i
    if s.projections_fp32 and not upcast and not s.full_finetune:  # q, k, v, gate, up twice as wide
        attn, mlp = attn + 2.0 * (h + 2 * kv), mlp + 2.0 * 2 * i
    if not s.full_finetune and s.lora_kernel == "fused":
        # one op per adapted Linear saves its input once (shared with the base matmul and the other
        # projections reading it); the dropout mask is regenerated, never stored. Only fp32 norm
        # outputs add a bf16 copy of each distinct input (attn in, attn out, mlp in, act).
        if norm_out == 4.0:
            attn, mlp = attn + 2.0 * 2 * h, mlp + 2.0 * (h + i)
    elif not s.full_finetune:
        per = DTYPE_BYTES.get(s.lora_dtype, 4) + (1 if s.dropout > 0 else 0)
        dims = shape.linears()
        for name in s.target_modules():
            fan_in, fan_out = dims.get(name, (h, h))
            extra = fan_in * per + (
                fan_out * DTYPE_BYTES.get(s.lora_dtype, 4) if "dora" in s.variant else 0
            )
            if name in ATTN_MODULES:
                attn += extra
            else:
                mlp += extra
    layer, boundary, n = attn + mlp, res * h, shape.num_layers
    # slim: a layer that is not recomputed recomputes its two norm outputs and the SwiGLU product
    # in backward instead of keeping them (harness/slim.py)
    slim = layer - (2 * norm_out * h + 2.0 * i if s.slim_activations else 0.0)
    # full: only layer inputs survive forward; one layer is recomputed at a time in backward.
    # selective: round(fraction * n) layers recomputed (at least one), the rest keep everything.
    # offload: the same with the recomputed layers' inputs in host memory (two in flight).
    k = max(1, round(recompute_fraction(s.checkpointing, s.checkpoint_fraction) * n))
    tokens = s.batch_size * s.seq_len
    # The anchors' right-padded batches ran attention with the padding mask, which held about one
    # dense [batch, heads, seq, seq] bf16 tensor at the loss of settings that keep layers
    # (llama3-8b b4: 1 GiB; H200, with engine.causal_padding: -0.89 to -1.29 GiB reserved on three
    # selective settings, none on full offload: BENCHMARKS.md).
    mask = 2.0 * s.batch_size * shape.num_heads * s.seq_len**2 if s.causal_padding else 0.0
    # host layers (engine.host_layers): their saved tensors in host memory; one is on the GPU at a
    # time beyond the recompute's working set, fetched ahead of its backward. Their parking copies
    # (~22 ms a llama3-8b b4 layer at ~50 GB/s) outlast the next layers' forward; the blocks they
    # read are not handed out again until they have run, so the allocator reserves new ones. H200,
    # fast + 4 / 6 / 12 host layers: reserved - allocated 1.28 / 2.34-3.27 / 6.77 GiB (the fast
    # preset alone 0.27): half a layer per host layer (a cap removes it: BENCHMARKS.md).
    off_gpu = s.checkpointing in ("selective", "offload")
    host = layer * tokens if s.host_layers and off_gpu else 0.0
    in_flight = 0.5 * s.host_layers * layer * tokens if host and s.memory_cap_gib is None else 0.0
    keep = layer * tokens + host
    if s.checkpointing in ("selective", "offload") and k < n:
        # Two candidate peaks. At the loss: every kept layer's activations, and a streamed LM head
        # (static_bytes leaves it out). In backward, recomputing the top recomputed layer: one
        # layer's working set and the kept layers below it, which are all but the top one where
        # they are spread (its index is the last), none where they are the last (kept_layers=top).
        # H200 llama3-8b b4: 6 kept, spread or top, 13.86 GiB allocated both.
        head = 2.0 * shape.vocab_size * h if s.head_on_cpu and not shape.tie_embeddings else 0.0
        below = 0 if s.kept_layers == "top" else n - k - 1
        keep = max((n - k) * slim * tokens + head - mask, (below * slim + layer) * tokens + host)
    total = {
        "none": n * slim * tokens - mask,
        "full": (n * boundary + layer) * tokens,
        "selective": (k - (s.host_layers if host else 0)) * boundary * tokens + keep,
        "offload": 2 * boundary * tokens + keep,
    }.get(s.checkpointing, n * layer * tokens)
    return max(total + in_flight, 0.0)


def logits_bytes(shape: Shape, s: Setting) -> float:
    """Logit memory at the loss; a fused/chunked LM head (Liger's, or TRL's trainer, which every
    harness trial trains with: H100, llama3-8b b4 16.55 GiB vs 28.78 in a plain loop) keeps one
    chunk (~0). The built-in anchors come from a plain loop that materialises the logits."""
    if s.kernels == "liger" or s.chunked_loss:
        return 0.0
    return float(LOGIT_BYTES) * s.batch_size * s.seq_len * shape.vocab_size
