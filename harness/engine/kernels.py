"""The decoder's owned modules, put in place by build() where a lever changes how they compute:

    RMSNorm        engine.kernels=liger (Liger's Triton kernel), engine.residual_dtype=fp32 (the
                   fp32 stream's norm output rounded once to the weights' dtype), or a slim layer
                   (engine.slim_activations: its output recomputed in backward, slim.py)
    SwiGLU         engine.kernels=liger (Liger's silu(gate) * up), or a slim layer
    RopeAttention  engine.kernels=liger: Liger's RoPE kernel, which rotates q and k in place in one
                   pass (HF's rotate-half convention, the same math)

Each holds the very Parameters and submodules of the module it replaces, under the same names
(state_dict, peft's adapter and unload see the same tree). With every option off each computes
what HF's module computes, op for op (tests/test_levers.py checks the bits).
"""

import sys

import torch
from torch import nn

# attention classes whose forward RopeAttention copies (transformers 5: the same body, Qwen2 and
# Mistral pass a sliding window)
ROPE_ATTENTION = ("LlamaAttention", "Qwen2Attention", "MistralAttention")


def is_hf_rmsnorm(module: nn.Module) -> bool:
    return (
        not isinstance(module, RMSNorm)
        and type(module).__name__.endswith("RMSNorm")
        and hasattr(module, "variance_epsilon")
    )


def is_hf_swiglu(module: nn.Module) -> bool:
    """down(act(gate(x)) * up(x)) with a SiLU act: the MLP of Llama, Qwen2, Mistral."""
    parts = ("gate_proj", "up_proj", "down_proj", "act_fn")
    return (
        not isinstance(module, SwiGLU)
        and all(hasattr(module, k) for k in parts)
        and "SiLU" in type(module.act_fn).__name__
    )


class RMSNorm(nn.Module):
    """x / rms(x) * weight, HF's llama arithmetic (only the inverse RMS in fp32)."""

    def __init__(self, norm: nn.Module, *, liger: bool, narrow: bool, recipes=None) -> None:
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon
        self.liger, self.narrow, self.recipes = liger, narrow, recipes
        self.kernel = None
        if liger:
            from liger_kernel.ops import LigerRMSNormFunction

            self.kernel = LigerRMSNormFunction.apply

    def settings(self) -> dict:
        return {"liger": self.liger, "narrow": self.narrow, "slim": self.recipes is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            # casting_mode "llama" = HF's LlamaRMSNorm/Qwen2RMSNorm
            out = self.kernel(x, self.weight, self.variance_epsilon, 0.0, "llama")
        else:
            hidden_states = x.to(torch.float32)
            variance = hidden_states.pow(2).mean(-1, keepdim=True)
            hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
            out = self.weight * hidden_states.to(x.dtype)
        if self.narrow and out.dtype.itemsize > self.weight.dtype.itemsize:
            # an fp32 stream's norm: rounded once here, where the plain stack rounds it at the
            # next matmul's cast, which is all that reads it (residual.py)
            out = out.to(self.weight.dtype)
        if self.recipes is not None:
            self.recipes.remember(out, self, x)
        return out

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, {self.settings()}"


class SwiGLU(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)), the product by Liger's kernel (it saves gate and
    up and recomputes the product in backward: one [tokens, ffn] tensor fewer) or HF's ops."""

    def __init__(self, mlp: nn.Module, *, liger: bool, recipes=None) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.act_fn = mlp.act_fn
        self.liger, self.recipes = liger, recipes
        self.kernel = None
        if liger:
            from liger_kernel.ops import LigerSiLUMulFunction

            self.kernel = LigerSiLUMulFunction.apply

    def settings(self) -> dict:
        return {"liger": self.liger, "slim": self.recipes is not None}

    def mul(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self.kernel(gate, up) if self.kernel is not None else self.act_fn(gate) * up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        act = self.mul(gate, up)
        if self.recipes is not None:  # a slim layer: down_proj saves the recipe, not the product
            self.recipes.remember(act, self.mul, gate, up)
        return self.down_proj(act)


class RopeAttention(nn.Module):
    """HF's llama-family attention (transformers 5.17-5.25's forward, copied) with its RoPE function
    chosen at build: Liger's kernel in place of HF's module-level `apply_rotary_pos_emb`, which
    the harness never replaces. Holds the attention's q/k/v/o projections and settings."""

    def __init__(self, attn: nn.Module, rope) -> None:
        super().__init__()
        for key in ("config", "layer_idx", "head_dim", "num_key_value_groups", "scaling",
                    "attention_dropout", "is_causal"):  # fmt: skip
            setattr(self, key, getattr(attn, key))
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        )  # fmt: skip
        self.window = {}  # Llama passes none; Qwen2 its layer's, Mistral its config's
        if hasattr(attn, "sliding_window"):
            self.sliding_window = attn.sliding_window
            self.window = {"sliding_window": attn.sliding_window}
        elif type(attn).__name__ == "MistralAttention":
            self.window = {"sliding_window": getattr(attn.config, "sliding_window", None)}
        self.rope = rope
        self.eager = sys.modules[type(attn).__module__].eager_attention_forward
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.interfaces = ALL_ATTENTION_FUNCTIONS

    def settings(self) -> dict:
        return {"rope": getattr(self.rope, "__module__", "")}

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):  # fmt: skip
        cache = cache if cache is not None else past_key_values  # transformers < 5.25 names it so
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = self.rope(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(
                key_states, value_states, self.layer_idx, kwargs=kwargs
            )
        interface = self.interfaces.get_interface(self.config._attn_implementation, self.eager)
        attn_output, attn_weights = interface(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling,
            **self.window, **kwargs,
        )  # fmt: skip
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights
