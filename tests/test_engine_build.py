"""build() puts each lever in place once, as modules the harness owns: the modules are the harness's
where a lever is on and HF's or peft's where none is; each owned module computes HF's bits with
its options off; a base a sweep reuses for a trial of the same engine is left as it was (only the
fresh LoRA layers are set up); a base built for another engine is refused; the few process-wide
settings are named, installed once and never undone; and no patch of a library object is left in
the engine's code."""

import re
from pathlib import Path

import pytest
import torch
from conftest import requires_cuda
from engine_models import assert_same_bits, build, built, ecfg, step, tiny_4bit, tiny_peft

from harness.config.engine import EngineConfig
from harness.config.schema import LoraConfig, QuantConfig
from harness.engine import build as engine
from harness.engine import lora_layer, process
from harness.engine.host_frozen import Embedding
from harness.engine.kernels import RMSNorm, RopeAttention, SwiGLU
from harness.engine.layers import LayerRun, decoder_layers
from harness.errors import ConfigError
from harness.trial import model as models

ENGINE = Path(engine.__file__).parent
# every lever the CPU runs, at once: fused layers, bf16 weights with the fp32 stream and
# projections, 2 of 4 layers recomputed (trimmed), the kept ones slim
CPU_LEVERS = dict(lora_kernel="fused", frozen_dtype="bf16", residual_dtype="fp32",
                  projection_dtype="fp32", checkpointing="selective", checkpoint_fraction=0.5,
                  kept_layers="top", trim_recompute=True, slim_activations=True)  # fmt: skip


def _base_modules(model) -> dict[str, int]:
    """name -> id of every module outside the adapter's LoRA layers (the pooled base's tree)."""
    base = model.get_base_model()
    lora = [n for n, m in base.named_modules() if hasattr(m, "lora_A")]
    return {n: id(m) for n, m in base.named_modules()
            if not any(n == x or n.startswith(x + ".") for x in lora)}  # fmt: skip


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _reattach(model, cfg: EngineConfig):
    """What the sweep's pool does between two trials of one engine: the adapter off, a fresh one
    on (peft builds the engine's LoRA layers again)."""
    base = models.detach_adapter(model)
    qcfg = QuantConfig(type="nf4", double_quant=True, compute_dtype="bf16")
    return models.attach_adapter(base, LoraConfig(r=8, alpha=16, dropout=0.1), qcfg,
                                 targets="all-linear", checkpointing=True, seed=0,
                                 custom_modules=engine.lora_modules(cfg))  # fmt: skip


def test_the_built_modules_are_the_harness_s_where_a_lever_is_on():
    plain, _ = built(layers=4)
    assert not any(isinstance(m, RMSNorm | SwiGLU | RopeAttention | Embedding)
                   or lora_layer.is_fused(m) for m in plain.modules())  # fmt: skip
    model, levers = built(
        layers=4,
        **{
            **CPU_LEVERS,
            "frozen_dtype": "fp32",
            "residual_dtype": "auto",
            "projection_dtype": "auto",
        },
    )
    layers = decoder_layers(model)
    kept, recomputed = layers[2:], layers[:2]
    assert all(isinstance(m.mlp, SwiGLU) and isinstance(m.input_layernorm, RMSNorm) for m in kept)
    assert not any(isinstance(m.mlp, SwiGLU) for m in recomputed)  # no lever: HF's MLP
    assert all(isinstance(m._gradient_checkpointing_func, LayerRun) for m in layers)
    assert levers["slim_layers"] == 2 and levers["recompute_trimmed"] == 2
    assert all(lora_layer.is_fused(m) for m in model.modules() if hasattr(m, "lora_A"))


def test_a_pooled_base_is_built_once_and_its_next_trial_matches_a_fresh_one():
    """The sweep's pool: a base built for an engine, its adapter swapped for a fresh one, built
    again. Nothing at the base level changes (the same module objects, no hook added twice);
    the fresh LoRA layers are set up; loss and gradients are a freshly loaded base's."""
    cfg = ecfg(**CPU_LEVERS)
    ids = torch.randint(0, 1000, (2, 16))
    model = _reattach(tiny_4bit(0.1, cfg), cfg)  # a base built before? not yet: attach twice
    first = build(model, cfg)
    tree, hooks = _base_modules(model), _hooks(model)
    assert build(model, cfg) == first  # built twice in place: nothing moves
    assert _base_modules(model) == tree and _hooks(model) == hooks
    pooled = _reattach(model, cfg)
    assert build(pooled, cfg) == first
    assert _base_modules(pooled) == tree
    assert all(lora_layer.is_fused(m) and m.out_dtype in (None, torch.float32)
               for m in pooled.modules() if hasattr(m, "lora_A"))  # fmt: skip
    fresh = _reattach(tiny_4bit(0.1, cfg), cfg)
    build(fresh, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_same_bits(step(pooled, ids), step(fresh, ids))


def test_a_base_built_for_another_engine_is_refused():
    cfg = ecfg(**CPU_LEVERS)
    model = tiny_peft(cfg)
    build(model, cfg)
    other = ecfg(**{**CPU_LEVERS, "slim_activations": False})
    with pytest.raises(RuntimeError, match="built for .*'slim': True.*same engine"):
        build(model, other)


def test_fused_levers_need_peft_to_build_the_fused_layers():
    assert engine.lora_modules(EngineConfig()) is None
    mapping = engine.lora_modules(EngineConfig(lora_kernel="fused"))
    assert list(mapping.values()) == [lora_layer.FusedLinear4bit, lora_layer.FusedLinear]
    with pytest.raises(ConfigError, match="engine.lora_kernel='fused'.*custom_modules"):
        build(tiny_peft(), ecfg(lora_kernel="fused"))
    with pytest.raises(ConfigError, match="engine.lora_kernel='peft'"):
        build(tiny_peft(ecfg(lora_kernel="fused")), ecfg())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_owned_norm_and_swiglu_compute_hf_s_bits(dtype):
    layer = decoder_layers(tiny_peft())[0]
    norm, mlp = layer.input_layernorm, layer.mlp
    owned = RMSNorm(norm, liger=False, narrow=False)
    assert owned.weight is norm.weight
    x = torch.randn(2, 8, 64, dtype=dtype)
    assert torch.equal(owned(x), norm(x))
    owned = SwiGLU(mlp, liger=False)
    assert owned.gate_proj is mlp.gate_proj and owned.down_proj is mlp.down_proj
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        assert torch.equal(owned(x), mlp(x))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_owned_attention_computes_hf_s_bits_with_hf_s_rope(family):
    """RopeAttention copies HF's attention forward and takes the RoPE function it is given: with
    the family's own `apply_rotary_pos_emb` it is HF's attention, bit for bit (loss and
    gradients); engine.kernels=liger gives it Liger's kernel (CUDA)."""
    import importlib

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=1000,
                                  attn_implementation="sdpa")  # fmt: skip
    if family != "llama":
        config.sliding_window = 8
    ids = torch.randint(0, 1000, (2, 24))
    results = []
    for owned in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).train()
        if owned:
            rope = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
            for layer in model.model.layers:
                layer.self_attn = RopeAttention(layer.self_attn, rope.apply_rotary_pos_emb)
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert_same_bits(results[1], results[0])


def test_process_patches_are_named_per_engine_and_installed_once():
    assert engine.process_patches(EngineConfig()) == frozenset()
    assert engine.process_patches(EngineConfig(memory_cap_gib=6.4)) == {"memory_cap_gib=6.4"}
    assert engine.installed_patches() == frozenset()  # the CPU installs nothing
    engine.install_process_patches(EngineConfig())
    assert engine.installed_patches() == frozenset()


@requires_cuda
@pytest.mark.gpu
def test_memory_cap_bounds_reserved_memory_on_cuda(monkeypatch):
    """Past the cap, the allocator first hands back its cached blocks and retries; an allocation
    that still does not fit is an OOM. Installed once for the process: an engine with another
    cap must run in a process of its own."""
    monkeypatch.setattr(process, "_INSTALLED", set())  # this test's process record
    torch.cuda.empty_cache()
    big = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 256 MiB, then cached
    del big
    cap = round((torch.cuda.memory_allocated() + 2**29) / 2**30, 3)  # 512 MiB above what is used
    try:
        engine.install_process_patches(EngineConfig(memory_cap_gib=cap))
        assert engine.installed_patches() == {f"memory_cap_gib={cap:g}"}
        engine.install_process_patches(EngineConfig(memory_cap_gib=cap))  # idempotent
        kept = [torch.empty(2**27, dtype=torch.uint8, device="cuda") for _ in range(3)]
        assert torch.cuda.memory_reserved() <= cap * 2**30
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(2**29, dtype=torch.uint8, device="cuda")
        del kept
        with pytest.raises(RuntimeError, match="process of its own"):
            engine.install_process_patches(EngineConfig())
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)  # this test's process goes on


def test_the_engine_patches_no_library_object():
    """No rebound forward, no class swap, no attribute stamped on a library object, no module
    global holding a trial's state (process.py's one record of process-wide settings aside), no
    private allocator call. The behaviour tests above show what replaced them."""
    banned = {
        "a rebound method": r"types\.MethodType|\.__get__\(",
        "a class swap": r"\.__class__\s*=[^=]",
        "a stamped attribute": r"_harness_",
        "a replaced library function": r"apply_rotary_pos_emb\s*=",
        "a private allocator call": r"_set_allocator_settings|_accelerator_setAllocatorSettings",
        "a deleted parameter": r"_parameters\[",
        "an undo path": r"\b(restore|undo)\w*\(",
    }
    state = re.compile(r"^_?[A-Z_]+\s*(:[^=]*)?=\s*(\{\}|\[\]|set\(\)|dict\(\)|list\(\))", re.M)
    for path in sorted(ENGINE.glob("*.py")):
        text = path.read_text()
        for what, pattern in banned.items():
            assert not re.search(pattern, text), f"{path.name}: {what}"
        holders = [m.group(0) for m in state.finditer(text)]
        allowed = ["_INSTALLED: set[str] = set()"] if path.name == "process.py" else []
        assert holders == allowed, path.name
