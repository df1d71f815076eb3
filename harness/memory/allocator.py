"""Reserved over allocated: what PyTorch's caching allocator holds beyond live tensors.

Peak reserved (``torch.cuda.max_memory_reserved``) is the segments the allocator holds at its
highest, not the tensors alive then. The difference grows with what the allocator cannot hand out
again; each quantity below is counted in GiB and the fit (harness/memory/fit.py) scales it:

    cached        one layer's activations, allocator without expandable segments: freed blocks
                  of the recompute's working set are cached whole and a later, larger request
                  takes a new segment (plain llama3-8b b4: 1.16 GiB over 15.39 allocated;
                  b1 0.26; qwen2.5-1.5b b4 0.56; smollm2-135m b4 0.14).
    expandable    the same with expandable segments, which grow one mapping in 2 MiB pages
                  (fast llama3-8b b4: 0.25-0.39 GiB; b1 0.16; qwen2.5-1.5b b4 0.10).
    host_copies   host layers (engine.host_layers): each parks its saved tensors with a copy on
                  a side stream (~22 ms a llama3-8b b4 layer at ~50 GB/s) that outlasts the next
                  layers' forward; the blocks a copy reads are not handed out again until it has
                  run, so the allocator reserves new ones (H200, fast + 6 / 12 host layers:
                  reserved - allocated 2.34-3.28 / 6.77 GiB, fast alone 0.27).
    loss_blocks   HF's loss on materialised logits (the reference loop): the forward's bf16 logits
                  (2 B a logit) are freed before the backward asks for fp32 blocks twice their
                  size, so they stay cached beside them (loop, reserved - allocated: llama3-8b
                  b4 3.56 GiB, b1 0.91, qwen2.5-1.5b b4 3.09, for bf16 logits of 1.96, 0.49
                  and 2.32; the rest tracks a layer's activations, as ``cached``).
    head_stream   engine.head_on_cpu: the head's bf16 copy, made on a side stream each forward,
                  is a block of its own size that the layers' smaller requests do not reuse
                  (lean llama3-8b b4: 1.29-1.43 GiB over allocated, 0.51-0.57 without the lever).

A memory cap (engine.memory_cap_gib) makes the allocator free its cache rather than reserve past
it: reserved is min(cap, uncapped) (lean: 6.36-6.40 under a 6.4 cap, 6.73-6.84 without; three
capped settings at 0.00-0.04 GiB under their caps), and tensors past the cap are an OOM.
"""

from harness.memory.activations import layer_bytes, logits_bytes
from harness.memory.terms import GIB, Setting, Shape


def slack_terms(shape: Shape, s: Setting) -> dict[str, float]:
    """The allocator's quantities of a setting (GiB, before calibration), by fit term name."""
    layer, _, _ = layer_bytes(shape, s)
    work = layer * s.batch_size * s.seq_len / GIB
    off_gpu = s.checkpointing in ("selective", "offload")
    head = 2.0 * shape.vocab_size * shape.hidden_size / GIB
    streamed = s.head_on_cpu and not shape.tie_embeddings
    tokens_vocab = s.batch_size * s.seq_len * shape.vocab_size
    return {
        "cached": 0.0 if s.expandable_segments else work,
        "expandable": work if s.expandable_segments else 0.0,
        "host_copies": s.host_layers * work if off_gpu else 0.0,
        "head_stream": head if streamed else 0.0,
        "loss_blocks": 2.0 * tokens_vocab / GIB if logits_bytes(shape, s) else 0.0,
    }


def apply_cap(out: dict[str, float], cap: float | None) -> dict[str, float]:
    """``out`` (a prediction with ``total`` and ``tensors_gib``) under a memory cap.

    Above the cap, reserved is the cap (the allocator's slack gives way); tensors do not: past
    the cap they are an OOM, flagged ``exceeds_cap`` and predicted at the tensors' peak.
    """
    if cap is None or out["total"] <= cap:
        return out
    tensors = out["tensors_gib"]
    return {**out, "uncapped_total": out["total"], "total": max(cap, tensors),
            "exceeds_cap": tensors > cap}  # fmt: skip
