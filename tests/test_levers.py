"""Each speed lever leaves the training math unchanged where it runs on the CPU; the CUDA-only
ones (Liger's Triton kernels, activation offloading, host memory) skip here with the reason. Their
speed and memory are measured by the benchmark (benchmarks/levers.yaml), never asserted here.
A lever is compared on twins: two models made from the same seed, one built with the lever."""

from dataclasses import replace

import pytest
import torch
from conftest import TINY, compose_cfg, load_json, requires_cuda, run_harness
from engine_models import (
    assert_close,
    build,
    built,
    ecfg,
    offloader,
    runner,
    step,
    tiny_peft,
)

from harness.config.engine import EngineConfig
from harness.config.schema import TrainConfig, to_trial_config
from harness.engine import build as engine
from harness.engine import layer_plan, lora_layer, lora_op, offload
from harness.engine.layers import Checkpoint, decoder_layers
from harness.errors import ConfigError
from harness.trial.measure import frozen_heap


def test_fused_lora_matches_peft_loss_and_gradients():
    ids = torch.randint(0, 1000, (2, 24))
    plain, _ = built()
    model, levers = built(lora_kernel="fused")
    assert levers["lora_fused"] == 2 * 7  # 7 adapted Linear layers in each of 2 layers
    assert_close(step(model, ids), step(plain, ids), rtol=1e-4, atol=1e-6)


def test_peft_builds_the_fused_layers_with_the_same_names_and_weights():
    """The custom-module mapping makes peft build the harness's class in place of its own: the
    same parameter names and initial values, so adapters save and load as peft's."""
    plain, fused = tiny_peft(), tiny_peft(ecfg(lora_kernel="fused"))
    ref, got = plain.state_dict(), fused.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    adapted = [m for m in fused.modules() if hasattr(m, "lora_A")]
    assert len(adapted) == 14 and all(lora_layer.is_fused(m) for m in adapted)
    assert not any(lora_layer.is_fused(m) for m in plain.modules())
    unloaded = fused.unload()  # peft's own unload: the base layers back, no harness class left
    assert not any(lora_layer.is_fused(m) for m in unloaded.modules())


def test_fused_lora_dropout_regenerates_the_same_mask_in_backward():
    """With dropout the branch is x*m/(1-p) @ A^T @ B^T: its gradients, computed by hand from the
    mask the forward drew, must match the fused backward exactly."""
    model, _ = built(dropout=0.3, lora_kernel="fused")
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    x = torch.randn(3, 5, layer.in_features, requires_grad=True)
    torch.manual_seed(7)
    out = layer(x)
    out.square().sum().backward()
    torch.manual_seed(7)  # the seed the forward drew, and so its mask
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    keep = lora_op.dropout_mask(x.shape, 0.3, seed, x.device)  # mask / (1 - p)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    xr = x.detach().clone().requires_grad_()
    a_ref, b_ref = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ref = layer.base_layer(xr) + (xr * keep) @ a_ref.t() @ b_ref.t() * layer.scaling["default"]
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(a.grad, a_ref.grad)
    torch.testing.assert_close(b.grad, b_ref.grad)
    assert 0.5 < (keep == 0).float().mean() / 0.3 < 1.5  # the mask really drops ~30%


def test_fused_lora_falls_back_to_peft_where_it_does_not_apply():
    plain, _ = built()
    model, _ = built(lora_kernel="fused")
    ids = torch.randint(0, 1000, (1, 8))
    with model.disable_adapter(), plain.disable_adapter():  # peft's own forward: the base alone
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)


@pytest.mark.parametrize("mode", ["full", "selective", "none"])
def test_checkpointing_modes_leave_loss_and_gradients_unchanged(mode):
    ids = torch.randint(0, 1000, (2, 16))
    plain, _ = built()
    model, levers = built(checkpointing=mode, checkpoint_fraction=0.5)
    assert levers["checkpointed_layers"] == {"full": 2, "selective": 1, "none": 0}[mode]
    assert_close(step(model, ids), step(plain, ids))


def test_selective_spreads_the_recomputed_layers_over_the_depth():
    chosen = sorted(layer_plan.spread(32, 0.75))
    assert len(chosen) == 24 and chosen[0] == 0
    gaps = [b - a for a, b in zip(chosen[:-1], chosen[1:], strict=True)]
    assert max(gaps) == 2  # no run of kept layers
    assert layer_plan.spread(28, 0.5) == set(range(0, 28, 2))
    assert layer_plan.spread(2, 0.1) == {0}  # at least one


def test_kept_layers_top_recomputes_the_first_layers_and_keeps_the_last():
    assert layer_plan.recomputed_layers(32, 0.8125, "top") == set(range(26))
    assert layer_plan.recomputed_layers(32, 0.8125, "spread") == layer_plan.spread(32, 0.8125)
    assert layer_plan.recomputed_layers(32, 0.8125, "spread") != set(range(26))
    for placement in ("top", "spread"):
        assert layer_plan.recomputed_layers(32, 1.0, placement) == set(range(32))
        assert layer_plan.recomputed_layers(32, 0.0, placement) == set()
        assert layer_plan.recomputed_layers(32, 0.01, placement) == {0}  # at least one
    with pytest.raises(ConfigError, match="engine.kept_layers.*'bottom'"):
        EngineConfig(kept_layers="bottom")


@pytest.mark.parametrize("kept_layers", ["spread", "top"])
def test_kept_layer_placement_leaves_loss_and_gradients_unchanged(kept_layers):
    """4 layers, 2 recomputed: spread recomputes layers 0 and 2, top layers 0 and 1."""
    ids = torch.randint(0, 1000, (2, 16))
    plain, _ = built(layers=4)
    model, levers = built(layers=4, checkpointing="selective", checkpoint_fraction=0.5,
                          kept_layers=kept_layers)  # fmt: skip
    flags = [isinstance(getattr(runner(m), "how", None), Checkpoint) for m in decoder_layers(model)]
    expected = {"spread": [True, False, True, False], "top": [True, True, False, False]}
    assert flags == expected[kept_layers]
    assert levers["checkpointed_layers"] == 2
    assert_close(step(model, ids), step(plain, ids))


def test_gc_freeze_moves_live_objects_out_of_the_collectors_reach_for_the_block():
    import gc

    before = gc.get_freeze_count()
    with frozen_heap(True):
        assert gc.get_freeze_count() > before  # the model, data and libraries: not scanned
    assert gc.get_freeze_count() == before
    with frozen_heap(False):
        assert gc.get_freeze_count() == before


def test_frozen_bf16_casts_only_frozen_unquantized_weights():
    model = tiny_peft()
    for param in model.parameters():  # what peft's prepare_model_for_kbit_training leaves: fp32
        param.data = param.data.float()
    levers = build(model, ecfg(frozen_dtype="bf16"))
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert levers["frozen_cast"] == sum(p.numel() for p in frozen)
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in trainable)  # the adapter's master weights


def test_frozen_bf16_is_exact_for_weights_that_were_bf16():
    """The upcast weights were bf16 before prepare_model_for_kbit_training; casting back loses
    nothing. (The loss then moves by bf16 rounding of the activations, measured on the GPU.)"""
    model = tiny_peft()
    for param in model.parameters():
        param.data = param.data.to(torch.bfloat16).float()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    build(model, ecfg(frozen_dtype="bf16"))
    for name, param in model.named_parameters():
        assert torch.equal(param.detach().float(), before[name])


def test_levers_are_rejected_before_loading_where_they_cannot_run():
    with pytest.raises(ConfigError, match="engine.kernels='liger': needs CUDA; on cpu: none"):
        engine.check(EngineConfig(kernels="liger"), "cpu")
    with pytest.raises(ConfigError, match="engine.checkpointing.*needs CUDA"):
        engine.check(EngineConfig(checkpointing="offload"), "cpu")
    with pytest.raises(ConfigError, match="engine.checkpoint_fraction"):
        EngineConfig(checkpointing="selective", checkpoint_fraction=0)
    with pytest.raises(ConfigError, match="engine.lora_kernel"):
        EngineConfig(lora_kernel="triton")


def test_cuda_levers_on_the_cpu_are_refused_in_one_message_naming_each():
    """Every CUDA-only lever at once: one ConfigError naming the first with its value and what a
    CPU trial may set it to, and the others beside it."""
    cfg = EngineConfig(kernels="liger", lora_kernel="fused", dequant_kernel="triton",
                       checkpointing="offload", embeddings_on_cpu=True, head_on_cpu=True,
                       memory_cap_gib=6.4)  # fmt: skip
    with pytest.raises(ConfigError) as err:
        engine.check(cfg, "cpu")
    assert err.value.field == "engine.kernels" and err.value.value == "liger"
    for key in ("dequant_kernel", "checkpointing", "embeddings_on_cpu", "head_on_cpu",
                "memory_cap_gib"):  # fmt: skip
        assert f"engine.{key}" in str(err.value)
    for key in ("embeddings_on_cpu", "head_on_cpu"):
        with pytest.raises(ConfigError, match=f"engine.{key}=True: needs CUDA; on cpu: false"):
            engine.check(EngineConfig(**{key: True}), "cpu")
    with pytest.raises(ConfigError, match="engine.memory_cap_gib=8.0: needs CUDA; on cpu: null"):
        engine.check(EngineConfig(memory_cap_gib=8.0), "cpu")
    with pytest.raises(ConfigError, match="engine.memory_cap_gib.*-1"):
        EngineConfig(memory_cap_gib=-1)
    engine.check(EngineConfig(lora_kernel="fused", checkpointing="selective"), "cpu")  # CPU ok


@pytest.mark.parametrize("engine_name", ["plain", "fast", "lean", "max", "exact"])
def test_engine_presets_compose_to_valid_trial_configs(engine_name):
    cfg = to_trial_config(compose_cfg([f"engine={engine_name}"]))
    assert (cfg.engine.kernels == "liger") == (engine_name != "plain")
    assert cfg.engine.name == engine_name
    assert cfg.train.lr == TrainConfig().lr and cfg.lora.dropout == 0.05  # math untouched
    assert engine.process_patches(cfg.engine) == frozenset()  # no preset patches the process


def test_exact_preset_is_the_eager_fast_one_with_plain_precision():
    """exact: the fast kernels in plain's precision, on the eager fast engine it was measured on
    (no CUDA graphs, 26 of 32 layers recomputed)."""
    exact = to_trial_config(compose_cfg(["engine=exact"])).engine
    fast = to_trial_config(compose_cfg(["engine=fast"])).engine
    wide = {"residual_dtype": "fp32", "projection_dtype": "fp32", "name": "exact",
            "cuda_graphs": False, "checkpoint_fraction": 0.8125}  # fmt: skip
    assert exact == replace(fast, **wide) and fast.residual_dtype == "auto"


def test_fused_and_selective_trial_has_the_plain_loss_curve(tmp_path):
    """The real entry point, 4-bit on the CPU: the CPU-capable levers reproduce the plain stack's
    loss curve (dropout 0: the masks of the two paths come from different generators). torch's
    AdamW: the tiny model's tensors are under bitsandbytes' 8-bit size, which flat_optimizer
    leaves per-tensor (tests/test_flat_optim.py checks the 8-bit fold)."""
    common = [*TINY, "train.max_steps=4", "lora.dropout=0", "train.device=cpu", "optim=adamw_torch"]
    curves = {}
    for name, extra in {
        "plain": ["engine=plain"],
        "levers": [
            "engine.lora_kernel=fused",
            "engine.checkpointing=selective",
            "engine.flat_optimizer=true",
            "engine.gc_freeze=true",
            "engine.kept_layers=top",
            "train.save_adapter=true",
        ],
    }.items():
        out = tmp_path / name
        proc = run_harness([*common, *extra, f"out_dir={out}"])
        assert proc.returncode == 0, proc.stderr[-2000:]
        rec = load_json(out / "record.json")
        assert rec["status"] == "success", rec["error"]
        curves[name] = [p["loss"] for p in rec["loss"]["curve"]]
    assert rec["levers"]["lora_fused"] > 0 and rec["levers"]["checkpointed_layers"] == 1
    assert rec["levers"]["flat_optimizer_tensors"] > 0
    assert (out / "adapter" / "adapter_model.safetensors").exists()  # views of one buffer save
    # Adam's first steps amplify float rounding: two plain runs on the CPU already differ by ~3e-5
    assert curves["levers"] == pytest.approx(curves["plain"], rel=1e-3)


def test_offloaded_recompute_reenters_the_forwards_autocast_on_another_thread():
    """Backward runs on autograd's device thread, where autocast is off: the offloaded recompute
    takes the forward's autocast state with it (an fp32 stream under bf16 autocast recomputed in
    fp32 ran at half the speed, with 7 GiB more)."""
    import threading

    a = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state = offload.autocast_state("cpu")
    seen = {}

    def recompute():
        seen["bare"] = (a @ a).dtype
        with offload.autocast_as(state):
            seen["restored"] = (a @ a).dtype
        seen["after"] = (a @ a).dtype

    worker = threading.Thread(target=recompute)
    worker.start()
    worker.join()
    assert seen == {"bare": torch.float32, "restored": torch.bfloat16, "after": torch.float32}
    assert state["cpu"] == {"enabled": True, "dtype": torch.bfloat16, "cache_enabled": True}


@requires_cuda
@pytest.mark.gpu
def test_liger_kernels_match_hf_modules_on_cuda():
    ids = torch.randint(0, 1000, (2, 32), device="cuda")
    plain = built()[0].cuda()
    model, levers = built(kernels="liger")
    model.cuda()
    assert levers["liger_rmsnorm"] == 5 and levers["liger_swiglu"] == 2
    assert levers["liger_rope"] == 2
    assert_close(step(model, ids), step(plain, ids), rtol=1e-3, atol=1e-5)


@requires_cuda
@pytest.mark.gpu
def test_offload_trial_has_the_plain_loss_curve_on_cuda(tmp_path):
    common = [*TINY, "train.max_steps=4", "lora.dropout=0", "train.device=cuda"]
    curves = {}
    for name in ("full", "offload"):
        out = tmp_path / name
        proc = run_harness([*common, f"engine.checkpointing={name}", f"out_dir={out}"])
        assert proc.returncode == 0, proc.stderr[-2000:]
        curves[name] = [p["loss"] for p in load_json(out / "record.json")["loss"]["curve"]]
    # as on the CPU: float rounding amplified by Adam, ~1e-4
    assert curves["offload"] == pytest.approx(curves["full"], rel=1e-3)


@requires_cuda
@pytest.mark.gpu
def test_offloaded_recompute_under_autocast_matches_full_recompute_on_cuda():
    """fp32 weights under bf16 autocast (the fp32 stream's setting): the offloaded recompute runs
    the layer as its forward did, so loss and gradients are full recompute's."""
    ids = torch.randint(0, 1000, (2, 32), device="cuda")
    results = {}
    for mode in ("full", "offload"):
        model = built(tied=False, checkpointing=mode)[0].cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results[mode] = step(model, ids)
    assert_close(results["offload"], results["full"])


@requires_cuda
@pytest.mark.gpu
def test_offloaded_checkpoint_and_cpu_embeddings_keep_loss_and_gradients_on_cuda():
    """Layer inputs in pinned host memory and the embedding table on the CPU: the same loss and
    gradients as full recompute, with dropout (the fused kernel's seeds replay in backward)."""
    ids = torch.randint(0, 1000, (2, 32), device="cuda")
    full = built(0.2, tied=False, lora_kernel="fused", checkpointing="full")[0].cuda()
    ref = step(full, ids)
    model = tiny_peft(ecfg(lora_kernel="fused"), dropout=0.2, tied=False, checkpointing=True)
    levers = build(model.cuda(), ecfg(lora_kernel="fused", checkpointing="offload",
                                      embeddings_on_cpu=True))  # fmt: skip
    assert levers["checkpointed_layers"] == 2 and levers["embeddings_on_cpu"] == 49152 * 64
    assert model.get_input_embeddings().weight.device.type == "cpu"
    assert_close(step(model, ids), ref)
    parked = offloader(model)
    # each backward fetched the layer below's input ahead and took itself off the stack
    assert parked.stack == []
    with torch.no_grad():  # a forward without backward (train mode) parks nothing
        model(input_ids=ids)
    assert parked.stack == []
    model(input_ids=ids)  # an aborted step: its parked inputs wait on the stack ...
    assert len(parked.stack) == 2
    assert_close(step(model, ids), ref)  # ... and do not matter


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("trl_head", [False, True])
def test_streamed_head_keeps_loss_and_gradients_and_leaves_after_backward_on_cuda(trl_head):
    """The LM head in pinned host memory, copied in per forward: the same loss and gradients
    (HF's module call, and TRL's chunked loss, which reads `lm_head.weight`); the copy is gone
    once the head's backward has run."""
    from trl.trainer.utils import add_fused_lm_head

    from harness.engine.host_frozen import HostHead

    ids = torch.randint(0, 1000, (2, 32), device="cuda")
    kwargs = {"fused_lm_head": True} if trl_head else {}

    def measured_step(model):
        model.zero_grad()
        torch.manual_seed(3)
        start = torch.cuda.memory_allocated()
        loss = model(input_ids=ids, labels=ids, **kwargs).loss
        at_loss = torch.cuda.memory_allocated() - start
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return (loss.detach(), grads), (at_loss, torch.cuda.memory_allocated() - start)

    models = {}
    for on in (False, True):
        model = tiny_peft(ecfg(lora_kernel="fused"), dropout=0.1, tied=False, checkpointing=True)
        model.cuda()
        if trl_head:
            add_fused_lm_head(model.get_base_model())
        before = torch.cuda.memory_allocated()
        models[on] = (model, build(model, ecfg(lora_kernel="fused", checkpointing="full",
                                               head_on_cpu=on)))  # fmt: skip
        moved = before - torch.cuda.memory_allocated()
    (model, levers), head_bytes = models[True], 49152 * 64 * 4
    head = model.get_output_embeddings()
    assert isinstance(head, HostHead) and levers["head_on_cpu"] == 49152 * 64
    assert "lm_head.weight" not in dict(model.named_parameters())
    assert moved == pytest.approx(head_bytes, abs=2**16)  # off the GPU between steps
    ref, _ = measured_step(models[False][0])
    got, (at_loss, after_backward) = measured_step(model)
    assert_close(got, ref)
    # on the GPU at the loss, gone after the head's backward (the adapter's grads are ~0.1 MB)
    assert at_loss >= head_bytes and after_backward < head_bytes / 4
    assert head.live is None and head.host.is_pinned()
    assert torch.equal(head.weight.cpu(), head.host)  # a copy made on demand
