"""Speed and memory levers of the trial. Each is one config key, applied to the adapted model after
`attach_adapter`; every call sets the state of every lever from the config, so a base reused from
a sweep's pool never carries the previous trial's choice.

    train.kernels=liger           Liger's Triton RMSNorm, SwiGLU and RoPE (CUDA + triton)
    train.lora_kernel=fused       each adapted Linear as one autograd op (harness/lora_op.py)
    train.dequant_kernel=triton   the fused op's 4-bit dequantization in one Triton kernel
    train.frozen_dtype=bf16       undo peft's fp32 upcast of embeddings, norms and head
    train.residual_dtype=fp32     with it, keep the fp32 residual stream (harness/residual.py)
    train.projection_dtype=fp32   and q, k, v, gate, up return base + branch in fp32 (residual.py)
    train.checkpointing=selective recompute train.checkpoint_fraction of the decoder layers
    train.checkpointing=offload   the same (default: every layer), their inputs in host memory
    train.kept_layers=top         the layers not recomputed are the last ones, not spread out
    train.trim_recompute=true     a recomputed layer skips down_proj's frozen matmul, whose
                                  output backward never reads (harness/trim.py)
    train.host_layers=N           N of the layers to recompute keep their saved tensors in pinned
                                  host memory instead (harness/host_layers.py)
    train.slim_activations=true   layers not recomputed keep norm/SwiGLU inputs only (slim.py)
    train.embeddings_on_cpu=true  the frozen input embedding table in host memory
    train.head_on_cpu=true        the frozen LM head in pinned host memory, streamed in per forward
    train.expandable_segments     PyTorch's expandable allocator segments (less fragmentation)
    train.memory_cap_gib=G        the allocator reserves at most G GiB (frees its cache first)
    train.causal_padding=true     batches with trailing padding only run without the padding
                                  mask: the unmasked attention kernel (applied in the collator:
                                  train.py)
    train.gc_freeze=true          Python's collector skips the objects alive before training
                                  (applied around training: measure.frozen_heap)
    train.flat_optimizer          one optimizer update over all adapter tensors (flat_optim.py,
                                  applied where HF's Trainer builds the optimizer: train.py)

What each costs or saves on an H100 is measured by sweeps/speed.yaml (BENCHMARKS.md).
"""

import types

import torch
from torch import nn

from harness.config.schema import TrainConfig
from harness.engine import host_frozen, host_layers, lora_op, offload, residual, slim, trim
from harness.engine.layer_plan import host_positions
from harness.errors import ConfigError

_MARK = "_harness_lever"  # set on modules whose forward this module replaced


def check(tcfg: TrainConfig, device: str, num_layers: int | None = None) -> None:
    """Refuse, before any model is loaded, levers this device cannot run (and, given the model's
    depth, more host layers than there are layers to recompute)."""
    if num_layers is not None:
        host_positions(num_layers, tcfg)
    if tcfg.kernels == "liger":
        if not device.startswith("cuda"):
            raise ConfigError("train.kernels", "liger", "Triton kernels need CUDA; allowed: none")
        try:
            import liger_kernel.ops  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                "train.kernels", "liger", f"pip install liger-kernel ({e}); allowed: none"
            ) from None
    cuda_only = {
        "train.dequant_kernel": tcfg.dequant_kernel == "triton" and "triton",
        "train.checkpointing": tcfg.checkpointing == "offload" and "offload",
        "train.host_layers": tcfg.host_layers,
        "train.embeddings_on_cpu": tcfg.embeddings_on_cpu,
        "train.head_on_cpu": tcfg.head_on_cpu,
        "train.expandable_segments": tcfg.expandable_segments,
        "train.memory_cap_gib": tcfg.memory_cap_gib,
    }
    for key, value in cuda_only.items():
        if value and not device.startswith("cuda"):
            raise ConfigError(key, value, "acts on GPU memory; needs CUDA")


def apply(model, tcfg: TrainConfig, *, compute_dtype: torch.dtype) -> dict:
    """Set every lever on `model` (a peft model) as `tcfg` says. Returns what was applied."""
    offload.reset()  # parked inputs of an aborted pass (an OOM trial) go
    host_frozen.head_on_cpu(model, False)  # a pooled base's head back in place before any cast
    applied = {"frozen_cast": _frozen_dtype(model, tcfg.frozen_dtype, compute_dtype)}
    applied.update(_kernels(model, tcfg.kernels))
    applied["lora_fused"], applied["dequant_triton"] = _lora_kernel(
        model, tcfg.lora_kernel, tcfg.dequant_kernel
    )
    applied.update(_checkpointing(model, tcfg))
    wide = tcfg.residual_dtype == "fp32" and tcfg.frozen_dtype != "fp32"
    # before _slim: slim's norm hooks must come after the residual's own
    fused = tcfg.lora_kernel == "fused"
    proj = wide and tcfg.projection_dtype == "fp32"
    applied.update(residual.apply(model, wide, compute_dtype, fused=fused, projections=proj))
    applied["slim_layers"] = _slim(model, tcfg.slim_activations, tcfg.kernels)
    applied["embeddings_on_cpu"] = host_frozen.embeddings_on_cpu(model, tcfg.embeddings_on_cpu)
    applied["head_on_cpu"] = host_frozen.head_on_cpu(model, tcfg.head_on_cpu)
    applied["expandable_segments"] = offload.expandable_segments(tcfg.expandable_segments)
    applied["memory_cap_gib"] = offload.memory_cap(tcfg.memory_cap_gib)
    return applied


def _frozen_dtype(model, dtype: str, compute_dtype: torch.dtype) -> int:
    """peft's prepare_model_for_kbit_training casts every non-4-bit weight to fp32. The weights were
    bf16, so casting back is exact; what changes is that activations follow the embedding's dtype,
    so the residual stream and the elementwise math run in bf16 (llama3-8b: -2.1 GB of weights and
    half the bytes of every saved activation). fp32 keeps peft's behaviour: nothing to do."""
    if dtype == "fp32":
        return 0
    n = 0
    for param in model.parameters():
        if param.requires_grad or not param.is_floating_point():
            continue
        if param.__class__.__name__ == "Params4bit" or param.dtype == compute_dtype:
            continue
        param.data = param.data.to(compute_dtype)
        n += param.numel()
    return n


def _restore(module: nn.Module) -> None:
    if getattr(module, _MARK, None):
        del module.forward
        delattr(module, _MARK)


def _bind(module: nn.Module, fn, tag: str) -> None:
    module.forward = types.MethodType(fn, module)
    setattr(module, _MARK, tag)


def _kernels(model, kernels: str) -> dict:
    norms = mlps = 0
    for module in model.modules():
        is_norm = type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
        is_mlp = all(hasattr(module, k) for k in ("gate_proj", "up_proj", "down_proj", "act_fn"))
        is_mlp = is_mlp and "SiLU" in type(module.act_fn).__name__
        if not (is_norm or is_mlp):
            continue
        _restore(module)
        if kernels == "liger":
            _bind(module, _liger_rmsnorm if is_norm else _liger_swiglu, "liger")
            norms, mlps = norms + is_norm, mlps + is_mlp
    return {"liger_rmsnorm": norms, "liger_swiglu": mlps, "liger_rope": _rope(kernels)}


# HF's decoder modules call their module-level apply_rotary_pos_emb; Liger's RoPE kernel has the
# same signature and math (rotate-half convention) and rotates q and k in place, in one pass.
_ROPE_MODULES = ("llama", "qwen2", "mistral")
_HF_ROPE: dict[str, object] = {}


def _rope(kernels: str) -> int:
    import importlib

    n = 0
    for family in _ROPE_MODULES:
        mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        original = _HF_ROPE.setdefault(family, mod.apply_rotary_pos_emb)
        if kernels == "liger":
            from liger_kernel.transformers.rope import liger_rotary_pos_emb

            mod.apply_rotary_pos_emb, n = liger_rotary_pos_emb, n + 1
        else:
            mod.apply_rotary_pos_emb = original
    return n


def _liger_rmsnorm(self, hidden_states):
    from liger_kernel.ops import LigerRMSNormFunction

    # casting_mode "llama" = HF's LlamaRMSNorm/Qwen2RMSNorm: only the inverse RMS in fp32.
    return LigerRMSNormFunction.apply(
        hidden_states, self.weight, self.variance_epsilon, 0.0, "llama"
    )


def _liger_swiglu(self, x):
    from liger_kernel.ops import LigerSiLUMulFunction

    # saves gate and up, recomputes silu(gate)*up in backward: one [tokens, ffn] tensor fewer
    # (and in a slim layer the product too: down_proj's input)
    act = slim.swiglu(LigerSiLUMulFunction.apply, self.gate_proj(x), self.up_proj(x))
    return self.down_proj(act)


def _hf_swiglu_slim(self, x):
    """HF's MLP forward, the same ops, with the product remembered for slim layers."""
    return self.down_proj(slim.swiglu(self._harness_mul, self.gate_proj(x), self.up_proj(x)))


def _lora_kernel(model, kernel: str, dequant: str = "bnb") -> tuple[int, int]:
    """(adapted Linear layers on the fused op, of them dequantized by the Triton kernel)."""
    n = n_triton = 0
    for module in model.modules():
        if not (hasattr(module, "lora_A") and hasattr(module, "base_layer")):
            continue
        _restore(module)
        vars(module.base_layer).pop(lora_op.DEQUANT_ATTR, None)
        if kernel == "fused":
            _bind(module, _fused_lora_forward, "fused")
            n += 1
            if dequant == "triton" and lora_op.triton_dequant_ok(module.base_layer):
                setattr(module.base_layer, lora_op.DEQUANT_ATTR, True)
                n_triton += 1
    return n, n_triton


def _single_plain_adapter(layer, kwargs) -> str | None:
    """The one active vanilla-LoRA adapter, or None where peft's own forward must run (merged,
    disabled, mixed-batch adapters, DoRA and other variants, LoRA bias)."""
    if layer.disable_adapters or layer.merged or kwargs.get("adapter_names") is not None:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(name):
        return None
    return name


def _fused_lora_forward(self, x, *args, **kwargs):
    name = _single_plain_adapter(self, kwargs)
    out_dtype = vars(self).get(residual.OUT_DTYPE)  # a down_proj writing to an fp32 residual
    if name is None or not lora_op.supported_base(self.base_layer):
        x = x if out_dtype is None else x.to(out_dtype)  # peft's forward, as in the plain stack
        return type(self).forward(self, x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    drop = self.lora_dropout[name]
    p = drop.p if isinstance(drop, nn.Dropout) and drop.training else 0.0
    # Drawn from the CPU generator, which activation checkpointing restores before it recomputes
    # a layer, so the recomputed layer regenerates the same mask.
    seed = int(torch.randint(0, 2**31 - 1, (1,))) if p else 0
    # peft's matmuls: the adapter's in the autocast dtype (else its weights' dtype); the base in
    # bitsandbytes' compute dtype (a 16-bit base: the autocast dtype, else its weight's)
    autocast = torch.is_autocast_enabled(x.device.type)
    dtype = torch.get_autocast_dtype(x.device.type) if autocast else a.dtype
    base = self.base_layer
    base_dtype = dtype if autocast else base.weight.dtype
    if base.weight.__class__.__name__ == "Params4bit":
        base_dtype = base.compute_dtype or x.dtype
    return lora_op.LoraLinear.apply(
        x, a, b, base, float(self.scaling[name]), p, seed, dtype, base_dtype, out_dtype,
        trim.skips(self),
    )  # fmt: skip


def _decoder_layers(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _checkpointing(model, tcfg: TrainConfig) -> dict:
    """Set each decoder layer's checkpointing flag and host-layer state. attach_adapter enabled
    checkpointing on all layers (any mode but none); a pooled base may still carry the previous
    trial's flags."""
    layers = _decoder_layers(model)
    n, mode = len(layers), tcfg.checkpointing
    chosen, host = host_positions(n, tcfg)
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i in chosen and hasattr(
            layer, "_gradient_checkpointing_func"
        )
        if layer.gradient_checkpointing:  # offload: our own recompute, inputs in host memory
            original = vars(layer).setdefault("_harness_ckpt", layer._gradient_checkpointing_func)
            layer._gradient_checkpointing_func = (
                offload.offloaded_checkpoint
                if mode == "offload"
                else trim.checkpoint_func(original, tcfg.trim_recompute)
            )
    done = sum(layer.gradient_checkpointing for layer in layers)
    return {"checkpointed_layers": done, "num_layers": n,
            "host_layers": host_layers.apply(layers, host),
            "recompute_trimmed": trim.apply(layers, tcfg.trim_recompute)}  # fmt: skip


def _slim(model, on: bool, kernels: str) -> int:
    """Bind slim.slim_layer_forward on the decoder layers that are not recomputed (on), or undo it.
    Run after _checkpointing and _kernels (which restored every MLP's forward)."""
    n = 0
    for layer in _decoder_layers(model):
        _restore(layer)
        kept = on and not layer.gradient_checkpointing and not host_layers.is_host(layer)
        slim.hook_norms(layer, kept)
        if not kept:
            continue
        _bind(layer, slim.slim_layer_forward, "slim")
        mlp = getattr(layer, "mlp", None)
        if kernels != "liger" and type(mlp).__name__ in trim.SWIGLU_MLPS:
            mlp._harness_mul = lambda g, u, act=mlp.act_fn: act(g) * u
            _bind(mlp, _hf_swiglu_slim, "slim")
        n += 1
    return n
