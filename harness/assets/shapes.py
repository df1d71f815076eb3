"""Named real architecture shapes: the one registry of model shapes in the harness.

Random-weight trials (`model.source=random model.shape=<name>`) build these to measure speed and
memory at sizes whose weights cannot be fetched here; they are labelled as such and report no
quality scores. The memory model reads the same entries (`harness.memory.terms.named_shape`).
Values are copied from each model's published config.json.
"""

from typing import Any

FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
)
# Llama 3.1 / 3.2 stretch an 8k-trained RoPE to 128k positions.
LLAMA3_ROPE = {
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
}
# name: ((model_type, hidden, intermediate, layers, heads, kv heads, vocab, positions, rope theta,
# norm eps, tied embeddings), other config.json keys)
_ROWS: dict[str, tuple[tuple, dict[str, Any]]] = {
    # meta-llama/Meta-Llama-3-8B
    "llama3-8b": (("llama", 4096, 14336, 32, 32, 8, 128256, 8192, 5e5, 1e-5, False), {}),
    # meta-llama/Meta-Llama-3-70B
    "llama3-70b": (("llama", 8192, 28672, 80, 64, 8, 128256, 8192, 5e5, 1e-5, False), {}),
    # meta-llama/Llama-3.2-1B
    "llama3.2-1b": (("llama", 2048, 8192, 16, 32, 8, 128256, 131072, 5e5, 1e-5, True), LLAMA3_ROPE),
    # meta-llama/Llama-3.2-3B
    "llama3.2-3b": (("llama", 3072, 8192, 28, 24, 8, 128256, 131072, 5e5, 1e-5, True), LLAMA3_ROPE),
    # meta-llama/Llama-2-13b-hf
    "llama2-13b": (("llama", 5120, 13824, 40, 40, 40, 32000, 4096, 1e4, 1e-5, False), {}),
    # huggyllama/llama-30b (LLaMA 1 "33B")
    "llama1-33b": (("llama", 6656, 17920, 60, 52, 52, 32000, 2048, 1e4, 1e-6, False), {}),
    # Qwen/Qwen2.5-1.5B
    "qwen2.5-1.5b": (("qwen2", 1536, 8960, 28, 12, 2, 151936, 32768, 1e6, 1e-6, True), {}),
    # Qwen/Qwen2.5-7B
    "qwen2.5-7b": (("qwen2", 3584, 18944, 28, 28, 4, 152064, 32768, 1e6, 1e-6, False), {}),
    # HuggingFaceTB/SmolLM2-135M (same shape as the embedded model; random weights)
    "smollm2-135m": (("llama", 576, 1536, 30, 9, 3, 49152, 8192, 1e5, 1e-5, True), {}),
    # A 2-layer llama for tests: seconds per trial on the CPU.
    "tiny-llama": (("llama", 64, 128, 2, 4, 2, 49152, 2048, 1e4, 1e-5, True), {}),
}
SHAPES: dict[str, dict[str, Any]] = {
    name: {**dict(zip(FIELDS, row, strict=True)), **extra} for name, (row, extra) in _ROWS.items()
}


def shape_config(name: str):
    """A transformers config for a named shape (no weights)."""
    from transformers import AutoConfig

    params = dict(SHAPES[name])
    model_type = params.pop("model_type")
    return AutoConfig.for_model(model_type, **params)
