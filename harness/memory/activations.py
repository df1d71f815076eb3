"""What a training step adds on top of the resident weights, counted from first principles (bytes,
uncalibrated): the activations its checkpointing mode keeps and the logits of its loss.

    activations   bytes/token saved per decoder layer, times the layers the checkpointing mode
                  keeps, times batch * seq; a recomputed layer's working set and dequantized
                  weights where the peak is in the layers' backward.
    logits        HF's loss on materialised logits: batch * seq * vocab * 12 B in the loss's
                  backward; ~0 through a fused or chunked LM head (Liger's, TRL's trainer).

A step has two candidate peaks: at the loss (what the forward saved, and the loss's own buffers)
and in the layers' backward (what the forward saved, and the working set of the layer being
recomputed, the loss's buffers freed by then). Each term counts what is alive at the higher one.
"""

from harness.config.engine import recompute_fraction
from harness.memory.terms import DTYPE_BYTES, TARGET_SETS, Setting, Shape

# In the loss's backward, per logit: the fp32 log-softmax HF's cross-entropy keeps (4 B), the
# gradient flowing into it (4) and the gradient of the fp32-upcast logits it makes (4). The
# forward's bf16 logits (2) and their fp32 upcast (4) are gone by then: the model's output is
# dropped once its loss is read. (Allocated - resident - layer inputs) / (tokens * vocab) on the
# loop records and the probe's full-recompute rows: 12.1-12.7 B.
LOGIT_BYTES = 12
ATTN_MODULES = frozenset(TARGET_SETS["attention"])
NORM_READERS = frozenset(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))


def layer_bytes(shape: Shape, s: Setting) -> tuple[float, float, float]:
    """(layer, slim layer, layer input) bytes per token that one decoder layer saves.

    Per token and layer, bf16: attention stashes norm in/out, q, k, v, rotated q and k and the
    attention output, 2*(5h + 3kv) B (flash/SDPA: no seq^2 term); the MLP stashes norm in/out,
    gate, up, act(gate), product, 2*(2h + 4i) B. Liger's RoPE keeps no unrotated q and k and its
    SwiGLU recomputes act(gate): -2*(h + kv) - 2i. Each adapter keeps its input cast to the adapter
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
    if s.kernels == "liger":
        attn, mlp = attn - (2.0 * (h + kv) if s.liger_rope else 0.0), mlp - 2.0 * i
    if s.projections_fp32 and not upcast and not s.full_finetune:  # q, k, v, gate, up twice as wide
        attn, mlp = attn + 2.0 * (h + 2 * kv), mlp + 2.0 * 2 * i
    if not s.full_finetune and s.lora_kernel == "fused":
        # one op per adapted Linear saves its input once (shared with the base matmul and the other
        # projections reading it); the dropout mask is regenerated, never stored. Only fp32 norm
        # outputs add a bf16 copy of each distinct input (attn in, attn out, mlp in, act).
        if norm_out == 4.0:
            attn, mlp = attn + 2.0 * 2 * h, mlp + 2.0 * (h + i)
        if s.fused_masks and s.dropout > 0:  # Unsloth's keep a 1 B mask per adapter and input
            dims = shape.linears()
            for name in s.target_modules():
                mask = float(dims.get(name, (h, h))[0])
                attn, mlp = (attn + mask, mlp) if name in ATTN_MODULES else (attn, mlp + mask)
    elif not s.full_finetune:
        # Each adapter saves its dropout output (the input's dtype) and mask (1 B), and autocast's
        # bf16 copy of an fp32 input for lora_A: q, k, v, gate and up read the norm output (fp32
        # when upcast: 4 + 1 + 2 B), o and down bf16 activations (2 + 1 B); no dropout, no copy
        # but that one (H100 plain llama3-8b b4, frozen bf16: 10.12 GiB allocated).
        dims = shape.linears()
        for name in s.target_modules():
            fan_in, fan_out = dims.get(name, (h, h))
            wide = norm_out if name in NORM_READERS else 2.0
            per = (wide + 1.0 if s.dropout > 0 else 0.0) + (2.0 if wide == 4.0 else 0.0)
            extra = fan_in * per + (
                fan_out * DTYPE_BYTES.get(s.lora_dtype, 4) if "dora" in s.variant else 0
            )
            if name in ATTN_MODULES:
                attn += extra
            else:
                mlp += extra
    # slim: a layer that is not recomputed recomputes its two norm outputs and the SwiGLU product
    # in backward instead of keeping them (harness/engine/slim.py)
    slim = attn + mlp - (2 * norm_out * h + 2.0 * i if s.slim_activations else 0.0)
    return attn + mlp, slim, res * h


def activation_peaks(shape: Shape, s: Setting) -> tuple[float, float]:
    """(at the loss, in the layers' backward): activation bytes held at each candidate peak."""
    layer, slim, boundary = layer_bytes(shape, s)
    n, tokens = shape.num_layers, s.batch_size * s.seq_len
    # full: only layer inputs survive forward; one layer is recomputed at a time in backward.
    # selective: round(fraction * n) layers recomputed (at least one), the rest keep everything.
    # offload: the same with the recomputed layers' inputs in host memory (two in flight).
    k = max(1, round(recompute_fraction(s.checkpointing, s.checkpoint_fraction) * n))
    # Padded batches with the padding mask: attention holds about one dense [batch, heads, seq,
    # seq] bf16 tensor while layers keep their activations (llama3-8b b4: 1 GiB; H200 fast, the
    # padding mask against engine.causal_padding: 14.63 vs 13.86 GiB allocated), none under full
    # recompute (lean: 5.40 vs 5.38). The probe's random tokens have no padding: no mask.
    mask = 0.0 if s.causal_padding else 2.0 * s.batch_size * shape.num_heads * s.seq_len**2
    # host layers (engine.host_layers): their saved tensors in host memory; one is on the GPU at
    # a time beyond the recompute's working set, fetched ahead of its backward. What their
    # parking copies cost in reserved memory is the allocator's (harness/memory/allocator.py).
    off_gpu = s.checkpointing in ("selective", "offload")
    host = layer * tokens if s.host_layers and off_gpu else 0.0
    # A recomputed layer's backward dequantizes its 4-bit weights to bf16 (2 B/param) beside its
    # working set (lean llama3-8b: 0.41 GiB of the 0.5-0.8 a full recompute holds over its count).
    quantized = s.quant in ("nf4", "fp4") and not s.full_finetune
    work = layer * tokens + host + (2.0 * shape.linear_params / n if quantized else 0.0)
    at_loss, backward = 0.0, work
    if off_gpu and k < n:
        # At the loss: every kept layer's activations, and a streamed LM head (static_bytes
        # leaves it out). In backward, recomputing the top recomputed layer: its working set and
        # the kept layers below it, which are all but the top one where they are spread (its
        # index is the last), none where they are the last (kept_layers=top).
        # H200 llama3-8b b4: 6 kept, spread or top, 13.86 GiB allocated both.
        head = 2.0 * shape.vocab_size * shape.hidden_size
        head = head if s.head_on_cpu and not shape.tie_embeddings else 0.0
        below = 0 if s.kept_layers == "top" else n - k - 1
        at_loss = mask + (n - k) * slim * tokens + head
        backward = mask + below * slim * tokens + work
    saved = {
        "full": n * boundary * tokens,
        "selective": (k - (s.host_layers if host else 0)) * boundary * tokens,
        "offload": 2 * boundary * tokens,
    }
    if s.checkpointing not in saved:  # no recompute: everything saved, the peak at the loss
        kept = n * (slim if s.checkpointing == "none" else layer) * tokens + mask
        return kept, kept
    return saved[s.checkpointing] + at_loss, saved[s.checkpointing] + backward


def materialised_logits_bytes(shape: Shape, s: Setting) -> float:
    """What HF's loss holds in its backward on full logits; 0 through a fused or chunked LM head
    (Liger's, or TRL's trainer, which every harness trial trains with: H100, llama3-8b b4 16.55
    GiB reserved against 28.78 in the probe's loop on the same fp32-upcast model)."""
    if s.kernels == "liger" or s.chunked_loss:
        return 0.0
    return float(LOGIT_BYTES) * s.batch_size * s.seq_len * shape.vocab_size


def loss_holds_peak(shape: Shape, s: Setting) -> bool:
    """Whether the step peaks at the loss: materialised logits and what the forward saved
    outweigh a layer's recompute (every loop record and full-recompute probe row: 2.9-13.9 GiB
    of logits against a 0.5-3.5 GiB working set)."""
    logits = materialised_logits_bytes(shape, s)
    at_loss, backward = activation_peaks(shape, s)
    return logits > 0 and at_loss + logits >= backward


def activation_bytes(shape: Shape, s: Setting) -> float:
    """Activation bytes held at the peak of a step (allocated), before calibration."""
    at_loss, backward = activation_peaks(shape, s)
    return max(at_loss if loss_holds_peak(shape, s) else max(at_loss, backward), 0.0)


def logits_bytes(shape: Shape, s: Setting) -> float:
    """Logit bytes held at the peak of a step: HF's loss buffers where the step peaks at the
    loss, none where it peaks in the layers' backward (the loss freed them) or the LM head is
    fused or chunked."""
    return materialised_logits_bytes(shape, s) if loss_holds_peak(shape, s) else 0.0
