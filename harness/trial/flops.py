"""Model FLOPs utilization (MFU) of a trial, against a measured matmul ceiling.

    model FLOPs / token   = 6 * N + 6 * L * S * d_attn
    recompute FLOPs / tok = f * (2 * N_layers + 2 * L * S * d_attn) - 2 * N_trimmed
                                                                       (shown apart, not in MFU)

N counts every matmul weight: the decoder's Linear layers, the LM head and the LoRA factors;
embeddings are lookups, not matmuls. 6N is the usual forward (2N) + backward (4N) count, so it
credits weight gradients that QLoRA never computes for its frozen weights (the work actually
needed is nearer 4N): MFU here compares with other reports, not with the chip's peak. The attention
term is causal: each token attends to (S+1)/2 positions on average, 4 * d_attn FLOPs each
(QK^T and AV) forward, 3x that forward + backward. f is the share of decoder layers recomputed;
N_trimmed the down_proj weights those recomputes skip (hidden * ffn per trimmed layer:
engine.trim_recompute, harness/trim.py).

    executed FLOPs / token = 4 * (N_layers + N_head) + 6 * N_lora + 3 * attention + recompute

is what a QLoRA step really runs (forward, the frozen weights' input gradients, the adapter's
weight gradients): `executed_util` is that against the matmul ceiling, the honest "how busy".
"""

import torch

# a bf16 8192^3 matmul measured 788 TFLOP/s on an H100 SXM; an H200 has the same matrix units
# (769-798 TFLOP/s measured).
PEAK_FLOPS = 788e12


def matmul_params(hf_config) -> tuple[int, int]:
    """(decoder Linear weights, LM head weights) of a model shape, from a weightless instance."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    head = model.get_output_embeddings()
    head_n = head.weight.numel() if head is not None else 0
    linear = sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    )
    return linear, head_n


def utilization(
    hf_config, tokens_per_s: float, *, seq_len: float, lora_params: int, recompute_fraction: float,
    recompute_trimmed_layers: int = 0, peak_flops: float = PEAK_FLOPS,
) -> dict[str, float]:  # fmt: skip
    """MFU and its parts for a measured rate of tokens (all tokens of the batch, not only the
    ones that carry loss: every one of them goes through the model)."""
    linear, head = matmul_params(hf_config)
    n = linear + head + lora_params
    layers = hf_config.num_hidden_layers
    d_attn = hf_config.num_attention_heads * getattr(
        hf_config, "head_dim", hf_config.hidden_size // hf_config.num_attention_heads
    )
    attn_fwd = 2 * layers * (seq_len + 1) * d_attn  # causal: 4 * d_attn * (S+1)/2 per layer
    model_flops = 6 * n + 3 * attn_fwd
    trimmed = recompute_trimmed_layers * hf_config.hidden_size * hf_config.intermediate_size
    recompute = recompute_fraction * (2 * linear + attn_fwd) - 2 * trimmed
    executed = 4 * (linear + head) + 6 * lora_params + 3 * attn_fwd + recompute
    return {
        "model_flops_per_token": model_flops,
        "executed_flops_per_token": executed,
        "executed_util": executed * tokens_per_s / peak_flops,
        "recompute_flops_per_token": recompute,
        "mfu": model_flops * tokens_per_s / peak_flops,
        "hfu": (model_flops + recompute) * tokens_per_s / peak_flops,
        "peak_flops": peak_flops,
    }
