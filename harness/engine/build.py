"""The engine's levers, put in place once when the model is built. Each is one config key:

    engine.kernels=liger           Liger's Triton RMSNorm, SwiGLU and RoPE (owned modules,
                                  kernels.py; CUDA + liger-kernel)
    engine.lora_kernel=fused       each adapted Linear as one autograd op: peft builds the
                                  harness's LoRA layer (lora_modules(), lora_layer.py)
    engine.dequant_kernel=triton   the fused op's 4-bit dequantization in one Triton kernel
    engine.frozen_dtype=bf16       undo peft's fp32 upcast of embeddings, norms and head
    engine.residual_dtype=fp32     with it, keep the fp32 residual stream (residual.py)
    engine.projection_dtype=fp32   and q, k, v, gate, up return base + branch in fp32
    engine.checkpointing=selective recompute engine.checkpoint_fraction of the decoder layers
    engine.checkpointing=offload   the same (default: every layer), their inputs in host memory
                                  (offload.py)
    engine.kept_layers=top         the layers not recomputed are the last ones, not spread out
    engine.trim_recompute=true     a recomputed layer skips down_proj's frozen matmul, whose
                                  output backward never reads (trim.py)
    engine.host_layers=N           N of the layers to recompute keep their saved tensors in pinned
                                  host memory instead (host_layers.py)
    engine.slim_activations=true   layers not recomputed keep norm/SwiGLU inputs only (slim.py)
    engine.embeddings_on_cpu=true  the frozen input embedding table in host memory (host_frozen.py)
    engine.head_on_cpu=true        the frozen LM head in pinned host memory, streamed in per forward
    engine.memory_cap_gib=G        the allocator reserves at most G GiB (process.py: process-wide)
    engine.causal_padding=true     batches with trailing padding only run without the padding
                                  mask (the collator: harness/trial/train.py)
    engine.gc_freeze=true          Python's collector skips the objects alive before training
                                  (around training: harness/trial/measure.py)
    engine.flat_optimizer=true     one optimizer update over all adapter tensors (flat_optim.py,
                                  where HF's Trainer builds the optimizer: harness/trial/train.py)
    engine.cuda_graphs=true        each decoder layer's training forward and backward replayed as
                                  CUDA graphs, captured at the first training step (graphs.py)

`build` replaces modules in the tree with modules the harness owns, each holding the replaced
module's Parameters and submodules under the same names; per-trial state (side streams, pinned
buffers, parked tensors) lives in objects the built model holds. Nothing is undone: a sweep reuses
a built base only for a trial of the same engine, and `build` leaves a base it built as it is.
What each lever costs or saves is measured by benchmarks/levers.yaml (BENCHMARKS.md).
"""

import torch
from torch import nn

from harness.config.engine import EngineConfig
from harness.engine import graphs, lora_layer, lora_op, residual
from harness.engine import layers as layer_runs
from harness.engine.graphs import run_counts
from harness.engine.host_frozen import Embedding, HostHead
from harness.engine.kernels import (
    ROPE_ATTENTION,
    RMSNorm,
    RopeAttention,
    SwiGLU,
    is_hf_rmsnorm,
    is_hf_swiglu,
)
from harness.engine.layer_plan import host_positions
from harness.engine.offload import Offloader
from harness.engine.process import install_process_patches, installed_patches, process_patches
from harness.engine.trim import Recompute
from harness.errors import ConfigError

__all__ = ["build", "check", "install_process_patches", "installed_patches", "lora_modules",
           "process_patches", "run_counts"]  # fmt: skip

_ON_CPU = {  # what each CUDA-only lever may be on a CPU trial
    "kernels": "none", "dequant_kernel": "bnb", "checkpointing": "none, full or selective",
    "host_layers": "0", "embeddings_on_cpu": "false", "head_on_cpu": "false",
    "memory_cap_gib": "null", "backend": "harness", "cuda_graphs": "false",
}  # fmt: skip
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
          "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_hooks",
          "_backward_pre_hooks")  # fmt: skip


def check(ecfg: EngineConfig, device: str, num_layers: int | None = None) -> None:
    """Refuse, before any model is loaded, levers this device cannot run (and, given the model's
    depth, more host layers than there are layers to recompute)."""
    if num_layers is not None:
        host_positions(num_layers, ecfg)
    cuda_only = ecfg.cuda_levers()
    if cuda_only and not device.startswith("cuda"):
        key, value = next(iter(cuda_only.items()))
        also = [f"engine.{k}" for k in cuda_only if k != key]
        more = f" (so do {', '.join(also)})" if also else ""
        raise ConfigError(f"engine.{key}", value,
                          f"needs CUDA{more}; on {device}: {_ON_CPU[key]}")  # fmt: skip
    if ecfg.kernels == "liger":
        try:
            import liger_kernel.ops  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                "engine.kernels", "liger", f"pip install liger-kernel ({e}); allowed: none"
            ) from None


def lora_modules(ecfg: EngineConfig) -> dict[type, type] | None:
    """For engine.lora_kernel=fused, the base layer type -> LoRA layer class mapping to register
    with peft before the adapter is attached (peft's LoraConfig._register_custom_module), so that
    peft builds the harness's fused LoRA layers; None for peft's own."""
    return lora_layer.lora_modules() if ecfg.lora_kernel == "fused" else None


def build(model, ecfg: EngineConfig, *, compute_dtype: torch.dtype) -> dict:
    """Put every lever of `ecfg` in place on `model`, a peft model just adapted (with
    `lora_modules(ecfg)` registered). Call once per adapter; on a base built before for the same
    engine it changes nothing at the base level and sets up the fresh LoRA layers only. Returns
    what the record keeps under `levers`."""
    if any(map(lora_layer.is_fused, model.modules())) != (ecfg.lora_kernel == "fused"):
        why = "attach the adapter with custom_modules=lora_modules(engine): peft builds the layers"
        raise ConfigError("engine.lora_kernel", ecfg.lora_kernel, why)
    install_process_patches(ecfg)
    levers = {"frozen_cast": _frozen_dtype(model, ecfg.frozen_dtype, compute_dtype)}
    wide = ecfg.residual_dtype == "fp32" and ecfg.frozen_dtype != "fp32"
    layers = layer_runs.decoder_layers(model)
    slim = layer_runs.slim_positions(len(layers), ecfg)
    recipes = {pos: layer_runs.layer_recipes(layers[pos]) for pos in sorted(slim)}
    levers.update(_decoder_modules(model, layers, recipes, ecfg.kernels == "liger", wide))
    levers["lora_fused"], levers["dequant_triton"] = _fused_layers(model, ecfg.dequant_kernel)
    recompute = Recompute()  # one per trial, as the Offloader: shared by its runners
    runs = {"recipes": recipes, "offloader": Offloader(recompute), "recompute": recompute}
    levers.update(layer_runs.place(layers, ecfg, **runs))
    projections = wide and ecfg.projection_dtype == "fp32"
    levers.update(residual.place(model, wide=wide, projections=projections, dtype=compute_dtype))
    levers["embeddings_on_cpu"] = _embedding(model, ecfg.embeddings_on_cpu, wide)
    levers["head_on_cpu"] = _head(model, ecfg.head_on_cpu)
    levers["memory_cap_gib"] = ecfg.memory_cap_gib if installed_patches() else None
    levers["cuda_graph_layers"] = graphs.place(model, layers) if ecfg.cuda_graphs else 0
    return levers


def _frozen_dtype(model, dtype: str, compute_dtype: torch.dtype) -> int:
    """peft's prepare_model_for_kbit_training casts every non-4-bit weight to fp32. The weights were
    bf16, so casting back is exact; what changes is that activations follow the embedding's dtype,
    so the residual stream and the elementwise math run in bf16 (llama3-8b: -2.1 GB of weights and
    half the bytes of every saved activation). fp32 keeps peft's behaviour: nothing to do.
    Returns the frozen weights now held in `compute_dtype` (the same on a base built before)."""
    if dtype == "fp32":
        return 0
    n = 0
    for param in model.parameters():
        if param.requires_grad or not param.is_floating_point():
            continue
        if param.__class__.__name__ == "Params4bit":
            continue
        if param.dtype != compute_dtype:
            param.data = param.data.to(compute_dtype)
        n += param.numel()
    return n


def _swap(parent: nn.Module, name: str, old: nn.Module, new: nn.Module) -> None:
    """Put `new` in `old`'s place, with the hooks libraries registered on `old` (e.g. HF's
    input-require-grads hook on the embedding)."""
    for attr in _HOOKS:
        setattr(new, attr, getattr(old, attr))
    new.train(old.training)
    setattr(parent, name, new)


def _settle(parent: nn.Module, name: str, child: nn.Module, want: dict, make) -> None:
    """Replace `child` by `make()` where `want` turns a setting on; leave an owned module built
    for the same settings; refuse one built for others (a base built for another engine)."""
    owned = isinstance(child, RMSNorm | SwiGLU | RopeAttention | Embedding | HostHead)
    have = child.settings() if owned else None
    if have is None:
        if any(want.values()):
            _swap(parent, name, child, make())
    elif have != {k: want.get(k) for k in have}:
        why = "a base is reused only by a trial of the same engine"
        raise RuntimeError(f"{name} was built for {have}, this engine wants {want}: {why}")


def _rope(liger: bool):
    if not liger:
        return None
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    return liger_rotary_pos_emb


def _wanted(child: nn.Module, table, liger: bool, wide: bool, rope):
    """(settings, maker) of the owned module for `child`, or None where none replaces it."""
    slim = table is not None
    if is_hf_rmsnorm(child) or isinstance(child, RMSNorm):
        want = {"liger": liger, "narrow": wide, "slim": slim}
        return want, lambda: RMSNorm(child, liger=liger, narrow=wide, recipes=table)
    if is_hf_swiglu(child) or isinstance(child, SwiGLU):
        return {"liger": liger, "slim": slim}, lambda: SwiGLU(child, liger=liger, recipes=table)
    if type(child).__name__ in ROPE_ATTENTION or isinstance(child, RopeAttention):
        return {"rope": getattr(rope, "__module__", None)}, lambda: RopeAttention(child, rope)
    return None


def _decoder_modules(model, layers: list, recipes: dict, liger: bool, wide: bool) -> dict:
    """RMSNorms, SwiGLU MLPs and attention as owned modules where a lever changes them."""
    slim_of = {id(m): recipes[pos] for pos in recipes for m in layers[pos].modules()}
    rope = _rope(liger)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            wanted = _wanted(child, slim_of.get(id(child)), liger, wide, rope)
            if wanted is not None:
                _settle(parent, name, child, *wanted)
    owned = [m for m in model.modules() if isinstance(m, RMSNorm | SwiGLU | RopeAttention)]
    return {
        "liger_rmsnorm": sum(isinstance(m, RMSNorm) and m.liger for m in owned),
        "liger_swiglu": sum(isinstance(m, SwiGLU) and m.liger for m in owned),
        "liger_rope": sum(isinstance(m, RopeAttention) for m in owned),
        "residual_fp32_norms": sum(isinstance(m, RMSNorm) and m.narrow for m in owned),
    }


def _fused_layers(model, dequant: str) -> tuple[int, int]:
    """(adapted Linear layers on the fused op, of them dequantized by the Triton kernel)."""
    fused = [m for m in model.modules() if lora_layer.is_fused(m)]
    for layer in fused:
        if dequant == "triton" and lora_op.triton_dequant_ok(layer.base_layer):
            from harness.engine.dequant_triton import Dequantizer  # CUDA engines only: triton

            layer.dequant = layer.dequant or Dequantizer()
    return len(fused), sum(layer.dequant is not None for layer in fused)


def _parent(model, module: nn.Module) -> tuple[nn.Module, str]:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is module:
                return parent, name
    raise ValueError(f"{type(module).__name__} is not in the model")


def _tied(model) -> bool:
    """Whether the LM head and the input embedding share one matrix (neither can move alone)."""
    out = model.get_output_embeddings()
    if out is None or isinstance(out, HostHead):  # a streamed head is an untied one
        return False
    return out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def _embedding(model, on_cpu: bool, wide: bool) -> int:
    """The input embedding as an owned module where a lever changes it. Returns the weights in
    host memory (0 where the table is tied to the LM head or trainable)."""
    emb = model.get_input_embeddings()
    host = on_cpu and not _tied(model) and not emb.weight.requires_grad
    want = {"host": host, "out_dtype": torch.float32 if wide else None}
    if isinstance(emb, nn.Embedding | Embedding):
        parent, name = _parent(model, emb)
        _settle(parent, name, emb, want,
                lambda: Embedding(emb, host=host, out_dtype=want["out_dtype"]))  # fmt: skip
    emb = model.get_input_embeddings()
    return emb.weight.numel() if isinstance(emb, Embedding) and emb.host else 0


def _head(model, on_cpu: bool) -> int:
    """The frozen, untied LM head as a HostHead (on_cpu). Returns the weights in host memory (0
    where the head is tied to the input embedding, trainable or not a plain Linear)."""
    head = model.get_output_embeddings()
    usable = isinstance(head, nn.Linear) and head.bias is None and not head.weight.requires_grad
    if isinstance(head, HostHead) or (on_cpu and usable and not _tied(model)):
        parent, name = _parent(model, head)
        _settle(parent, name, head, {"host": on_cpu}, lambda: _host_head(model, head))
    head = model.get_output_embeddings()
    return head.host.numel() if isinstance(head, HostHead) else 0


def _host_head(model, head: nn.Linear) -> HostHead:
    new = HostHead(head)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    decoder.register_forward_pre_hook(new.prefetch)
    decoder.register_forward_hook(new.drop_after_backward)
    return new


def build_unsloth(cfg, weights: str, tokenizer: str, targets) -> tuple[object, dict]:
    """`engine.backend=unsloth`: the adapted model from Unsloth (harness/engine/unsloth.py), and
    what the record keeps under `levers`. The tokenizer stays the harness's (same data)."""
    from harness.engine import unsloth
    from harness.trial.measure import package_version

    install_process_patches(cfg.engine)  # marks the process: the next trial needs its own
    model, _ = unsloth.load(
        weights, tokenizer, ecfg=cfg.engine, lcfg=cfg.lora, qcfg=cfg.quant, targets=targets,
        seed=cfg.train.seed, max_seq_len=cfg.data.max_seq_len,
    )  # fmt: skip
    levers = {"backend": "unsloth", "unsloth": package_version("unsloth"),
              "checkpointing": unsloth.CHECKPOINTING[cfg.engine.checkpointing]}  # fmt: skip
    levers["memory_cap_gib"] = cfg.engine.memory_cap_gib if installed_patches() else None
    layers = model.config.num_hidden_layers  # for MFU's recompute term: all or none recomputed
    recomputed = layers if cfg.engine.checkpointing != "none" else 0
    levers.update(num_layers=layers, checkpointed_layers=recomputed)
    return model, levers
