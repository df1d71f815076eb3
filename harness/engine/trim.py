"""engine.trim_recompute=true: a recomputed decoder layer skips the frozen matmul of its MLP's down
projection, the one piece of its forward that backward never reads. Needs engine.lora_kernel=fused.

Why: backward through a recomputed layer needs what its forward saved: the norms' inputs, q, k, v,
the attention output, gate, up, every adapted Linear's input and its [tokens, r] adapter branch.
In a llama block (Llama, Qwen2, Mistral: `x + down(silu(gate) * up)` closes the layer) the output
of down_proj feeds only the residual add, whose backward reads no values, and the recompute's
output is never read (torch.utils.checkpoint throws it away; engine.checkpointing=offload
backpropagates from it, which reads its graph, not its values). So the recompute can skip that
projection's dequantization and its [tokens, ffn] x [ffn, hidden] matmul: 27% of a llama3-8b
layer's matmul FLOPs, in each of the 26 (fast) or 28 (lean) recomputed layers. Its adapter branch
(x Aᵀ with the dropout mask) is still computed and saved: backward needs it for B's gradient.

Same math, bit for bit: backward runs the same kernels on the same saved tensors (the fused op's
backward never reads its output); the skipped output is an uninitialized buffer that nothing reads.

How: the built model owns one `Recompute` flag. The recomputed layers' runners (layers.py) raise it
around the forward they run again; a trimmed down_proj (a fused LoRA layer with `trim` set)
skips its base matmul while it is raised.
"""

import contextlib

# decoder layers that end with `residual + mlp(post_attention_layernorm(h))`, the MLP with
# `down_proj(act(gate_proj(x)) * up_proj(x))`; another architecture (a norm after the MLP) would
# read down_proj's output in backward: not trimmed
LAYERS = ("LlamaDecoderLayer", "Qwen2DecoderLayer", "MistralDecoderLayer")
SWIGLU_MLPS = ("LlamaMLP", "Qwen2MLP", "MistralMLP")  # down(act(gate(x)) * up(x))


class Recompute:
    """Raised while a checkpointed layer's forward runs again in backward. That runs on autograd's
    thread while the forward's thread waits in backward, so one count per model is enough."""

    def __init__(self) -> None:
        self.depth = 0

    @property
    def active(self) -> bool:
        return self.depth > 0

    @contextlib.contextmanager
    def running(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def contexts(self):
        """torch.utils.checkpoint's `context_fn`: nothing around the forward, raised around the
        recompute."""
        return contextlib.nullcontext(), self.running()


def trimmable(layer) -> bool:
    """A llama-style decoder layer whose down_proj output no recompute needs."""
    from harness.engine.kernels import SwiGLU

    mlp = getattr(layer, "mlp", None)
    known_mlp = isinstance(mlp, SwiGLU) or type(mlp).__name__ in SWIGLU_MLPS
    return type(layer).__name__ in LAYERS and known_mlp and hasattr(mlp, "down_proj")
