"""train.trim_recompute=true: a recomputed decoder layer skips the frozen matmul of its MLP's down
projection, the one piece of its forward that backward never reads. Needs train.lora_kernel=fused.

Why: backward through a recomputed layer needs what its forward saved: the norms' inputs, q, k, v,
the attention output, gate, up, every adapted Linear's input and its [tokens, r] adapter branch.
In a llama block (Llama, Qwen2, Mistral: `x + down(silu(gate) * up)` closes the layer) the output
of down_proj feeds only the residual add, whose backward reads no values, and the recompute's
output is never read (torch.utils.checkpoint throws it away; train.checkpointing=offload
backpropagates from it, which reads its graph, not its values). So the recompute can skip that
projection's dequantization and its [tokens, ffn] x [ffn, hidden] matmul: 27% of a llama3-8b
layer's matmul FLOPs, in each of the 26 (fast) or 28 (lean) recomputed layers. Its adapter branch
(x Aᵀ with the dropout mask) is still computed and saved: backward needs it for B's gradient.

Same math, bit for bit: backward runs the same kernels on the same saved tensors (the fused op's
backward never reads its output); the skipped output is an uninitialized buffer that nothing reads.
"""

import contextlib
import functools

ATTR = "_harness_trim"  # on a LoRA module whose output no recompute needs
# decoder layers that end with `residual + mlp(post_attention_layernorm(h))`, the MLP with
# `down_proj(act(gate_proj(x)) * up_proj(x))`; another architecture (a norm after the MLP) would
# read down_proj's output in backward: not trimmed
_LAYERS = ("LlamaDecoderLayer", "Qwen2DecoderLayer", "MistralDecoderLayer")
SWIGLU_MLPS = ("LlamaMLP", "Qwen2MLP", "MistralMLP")  # down(act(gate(x)) * up(x))
_DEPTH = [0]  # > 0 while a checkpointed layer's forward runs again in backward


@contextlib.contextmanager
def recomputing():
    """Around the forward that a checkpoint runs again in backward (autograd's thread: the
    forward's thread waits in backward meanwhile, so a process-wide count is enough)."""
    _DEPTH[0] += 1
    try:
        yield
    finally:
        _DEPTH[0] -= 1


def skips(module) -> bool:
    """Whether `module`'s frozen matmul is skipped now: a trimmed projection, recomputed."""
    return _DEPTH[0] > 0 and bool(vars(module).get(ATTR))


def _contexts():
    return contextlib.nullcontext(), recomputing()


def checkpoint_func(original, on: bool):
    """HF's non-reentrant checkpoint function, with its recompute marked (on)."""
    return functools.partial(original, context_fn=_contexts) if on else original


def apply(layers: list, on: bool) -> int:
    """Mark (on) or unmark the down projection of each recomputed llama-style layer. Run after the
    layers' checkpointing flags are set. Returns how many are marked."""
    n = 0
    for layer in layers:
        mlp = getattr(layer, "mlp", None)
        down = getattr(mlp, "down_proj", None)
        if down is None:
            continue
        vars(down).pop(ATTR, None)
        known = type(layer).__name__ in _LAYERS and type(mlp).__name__ in SWIGLU_MLPS
        if on and known and layer.gradient_checkpointing and hasattr(down, "lora_A"):
            setattr(down, ATTR, True)
            n += 1
    return n
