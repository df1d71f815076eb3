"""Each speed lever leaves the training math unchanged where it runs on the CPU; the CUDA-only
ones (Liger's Triton kernels, activation offloading) skip here with the reason. Their speed and
memory are measured by the benchmark sweep (sweeps/speed.yaml), never asserted here."""

from dataclasses import replace

import pytest
import torch
from conftest import (
    TINY,
    compose_cfg,
    load_json,
    lora_b_random,
    loss_and_grads,
    requires_cuda,
    run_harness,
)

from harness.config.schema import TrainConfig, to_trial_config
from harness.engine import build as levers
from harness.engine import layer_plan, lora_op, offload
from harness.errors import ConfigError
from harness.trial.measure import frozen_heap


def _tiny_peft(dropout: float = 0.0, seed: int = 0, tied: bool = True, layers: int = 2):
    """A llama (2 layers) with a peft LoRA adapter on every Linear, fp32, in train mode."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from harness.assets.shapes import shape_config

    torch.manual_seed(seed)
    hf_config = shape_config("tiny-llama")
    hf_config.tie_word_embeddings = tied
    hf_config.num_hidden_layers = layers
    base = AutoModelForCausalLM.from_config(hf_config)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")
    return lora_b_random(get_peft_model(base, cfg))


_loss_and_grads = loss_and_grads


def _apply(model, **train):
    return levers.apply(model, TrainConfig(**train), compute_dtype=torch.bfloat16)


def test_fused_lora_matches_peft_loss_and_gradients():
    model = _tiny_peft()
    ids = torch.randint(0, 1000, (2, 24))
    loss_ref, grads_ref = _loss_and_grads(model, ids)
    applied = _apply(model, lora_kernel="fused", checkpointing="none")
    assert applied["lora_fused"] == 2 * 7  # 7 adapted Linear layers in each of 2 layers
    loss, grads = _loss_and_grads(model, ids)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-6)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7)


def test_fused_lora_dropout_regenerates_the_same_mask_in_backward():
    """With dropout the branch is x*m/(1-p) @ A^T @ B^T: its gradients, computed by hand from the
    mask the forward drew, must match the fused backward exactly."""
    layer = _tiny_peft(dropout=0.3).base_model.model.model.layers[0].mlp.up_proj
    levers._lora_kernel(layer, "fused")
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
    model = _tiny_peft()
    _apply(model, lora_kernel="fused")
    ids = torch.randint(0, 1000, (1, 8))
    with model.disable_adapter():  # adapter off: peft's own forward, the base alone
        off = model(input_ids=ids).logits
    _apply(model, lora_kernel="peft")  # and the lever is undone on the same instance
    assert not any(levers._MARK in vars(m) for m in model.modules())
    with model.disable_adapter():
        torch.testing.assert_close(model(input_ids=ids).logits, off)


@pytest.mark.parametrize("mode", ["full", "selective", "none"])
def test_checkpointing_modes_leave_loss_and_gradients_unchanged(mode):
    model = _tiny_peft()
    ids = torch.randint(0, 1000, (2, 16))
    loss_ref, grads_ref = _loss_and_grads(model, ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    applied = _apply(model, checkpointing=mode, checkpoint_fraction=0.5)
    assert applied["checkpointed_layers"] == {"full": 2, "selective": 1, "none": 0}[mode]
    loss, grads = _loss_and_grads(model, ids)
    torch.testing.assert_close(loss, loss_ref)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad)


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
    with pytest.raises(ConfigError, match="train.kept_layers.*'bottom'"):
        TrainConfig(kept_layers="bottom")


@pytest.mark.parametrize("kept_layers", ["spread", "top"])
def test_kept_layer_placement_leaves_loss_and_gradients_unchanged(kept_layers):
    """4 layers, 2 recomputed: spread recomputes layers 0 and 2, top layers 0 and 1."""
    model = _tiny_peft(layers=4)
    ids = torch.randint(0, 1000, (2, 16))
    loss_ref, grads_ref = _loss_and_grads(model, ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    applied = _apply(model, checkpointing="selective", checkpoint_fraction=0.5,
                     kept_layers=kept_layers)  # fmt: skip
    flags = [layer.gradient_checkpointing for layer in levers._decoder_layers(model)]
    expected = {"spread": [True, False, True, False], "top": [True, True, False, False]}
    assert flags == expected[kept_layers]
    assert applied["checkpointed_layers"] == 2
    loss, grads = _loss_and_grads(model, ids)
    torch.testing.assert_close(loss, loss_ref)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad)


def test_gc_freeze_moves_live_objects_out_of_the_collectors_reach_for_the_block():
    import gc

    before = gc.get_freeze_count()
    with frozen_heap(True):
        assert gc.get_freeze_count() > before  # the model, data and libraries: not scanned
    assert gc.get_freeze_count() == before
    with frozen_heap(False):
        assert gc.get_freeze_count() == before


def test_frozen_bf16_casts_only_frozen_unquantized_weights():
    model = _tiny_peft()
    for param in model.parameters():  # what peft's prepare_model_for_kbit_training leaves: fp32
        param.data = param.data.float()
    applied = _apply(model, frozen_dtype="bf16")
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert applied["frozen_cast"] == sum(p.numel() for p in frozen)
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in trainable)  # the adapter's master weights


def test_frozen_bf16_is_exact_for_weights_that_were_bf16():
    """The upcast weights were bf16 before prepare_model_for_kbit_training; casting back loses
    nothing. (The loss then moves by bf16 rounding of the activations, measured on the GPU.)"""
    model = _tiny_peft()
    for param in model.parameters():
        param.data = param.data.to(torch.bfloat16).float()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _apply(model, frozen_dtype="bf16")
    for name, param in model.named_parameters():
        assert torch.equal(param.detach().float(), before[name])


def test_levers_are_rejected_before_loading_where_they_cannot_run():
    with pytest.raises(ConfigError, match="train.kernels"):
        levers.check(TrainConfig(kernels="liger"), "cpu")
    with pytest.raises(ConfigError, match="train.checkpointing"):
        levers.check(TrainConfig(checkpointing="offload"), "cpu")
    with pytest.raises(ConfigError, match="train.checkpoint_fraction"):
        TrainConfig(checkpointing="selective", checkpoint_fraction=0)
    with pytest.raises(ConfigError, match="train.lora_kernel"):
        TrainConfig(lora_kernel="triton")


@pytest.mark.parametrize("engine", ["plain", "fast", "lean", "max", "exact"])
def test_engine_presets_compose_to_valid_trial_configs(engine):
    cfg = to_trial_config(compose_cfg([f"engine={engine}"]))
    plain = TrainConfig()
    assert (cfg.train.kernels == "liger") == (engine != "plain")
    assert cfg.train.lr == plain.lr and cfg.lora.dropout == 0.05  # math settings untouched


def test_exact_preset_is_the_fast_one_with_plain_precision():
    exact = to_trial_config(compose_cfg(["engine=exact"])).train
    fast = to_trial_config(compose_cfg(["engine=fast"])).train
    wide = {"residual_dtype": "fp32", "projection_dtype": "fp32"}
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
            "train.lora_kernel=fused",
            "train.checkpointing=selective",
            "train.flat_optimizer=true",
            "train.gc_freeze=true",
            "train.kept_layers=top",
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


@requires_cuda
def test_liger_kernels_match_hf_modules_on_cuda():
    model = _tiny_peft().cuda()
    ids = torch.randint(0, 1000, (2, 32), device="cuda")
    loss_ref, grads_ref = _loss_and_grads(model, ids)
    applied = _apply(model, kernels="liger")
    assert applied["liger_rmsnorm"] == 5 and applied["liger_swiglu"] == 2
    loss, grads = _loss_and_grads(model, ids)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-6)


@requires_cuda
def test_offload_trial_has_the_plain_loss_curve_on_cuda(tmp_path):
    common = [*TINY, "train.max_steps=4", "lora.dropout=0", "train.device=cuda"]
    curves = {}
    for name in ("full", "offload"):
        out = tmp_path / name
        proc = run_harness([*common, f"train.checkpointing={name}", f"out_dir={out}"])
        assert proc.returncode == 0, proc.stderr[-2000:]
        curves[name] = [p["loss"] for p in load_json(out / "record.json")["loss"]["curve"]]
    # as on the CPU: float rounding amplified by Adam, ~1e-4
    assert curves["offload"] == pytest.approx(curves["full"], rel=1e-3)


def test_offloaded_recompute_reenters_the_forwards_autocast_on_another_thread():
    """Backward runs on autograd's device thread, where autocast is off: the offloaded recompute
    takes the forward's autocast state with it (an fp32 stream under bf16 autocast recomputed in
    fp32 ran at half the speed, with 7 GiB more: BENCHMARKS.md, fifteenth round)."""
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
def test_offloaded_recompute_under_autocast_matches_full_recompute_on_cuda():
    """fp32 weights under bf16 autocast (the fp32 stream's setting): the offloaded recompute runs
    the layer as its forward did, so loss and gradients are full recompute's."""
    model = _tiny_peft(tied=False).cuda()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    ids = torch.randint(0, 1000, (2, 32), device="cuda")
    results = {}
    for mode in ("full", "offload"):
        _apply(model, checkpointing=mode)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results[mode] = _loss_and_grads(model, ids)
    torch.testing.assert_close(results["offload"][0], results["full"][0])
    for name, grad in results["full"][1].items():
        torch.testing.assert_close(results["offload"][1][name], grad)


@requires_cuda
def test_offloaded_checkpoint_and_cpu_embeddings_keep_loss_and_gradients_on_cuda():
    """Layer inputs in pinned host memory and the embedding table on the CPU: the same loss and
    gradients as full recompute, with dropout (the fused kernel's seeds replay in backward)."""
    model = _tiny_peft(dropout=0.2, tied=False).cuda()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    ids = torch.randint(0, 1000, (2, 32), device="cuda")
    _apply(model, lora_kernel="fused", checkpointing="full")
    torch.manual_seed(3)
    loss_ref, grads_ref = _loss_and_grads(model, ids)
    applied = _apply(model, lora_kernel="fused", checkpointing="offload", embeddings_on_cpu=True,
                     expandable_segments=True)  # fmt: skip
    assert applied["checkpointed_layers"] == 2 and applied["embeddings_on_cpu"] == 49152 * 64
    assert model.get_input_embeddings().weight.device.type == "cpu"
    torch.manual_seed(3)
    loss, grads = _loss_and_grads(model, ids)
    torch.testing.assert_close(loss, loss_ref)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad)
    # each backward fetched the layer below's input ahead and took itself off the stack
    assert offload._OFFLOADED == []
    with torch.no_grad():  # a forward without backward (train mode) parks nothing
        model(input_ids=ids)
    assert offload._OFFLOADED == []
    model(input_ids=ids)  # an aborted step: its parked inputs wait on the stack ...
    assert len(offload._OFFLOADED) == 2
    torch.manual_seed(3)
    torch.testing.assert_close(_loss_and_grads(model, ids)[0], loss_ref)  # ... and do not matter
    _apply(model, lora_kernel="fused", checkpointing="full")  # undone on the same instance
    assert offload._OFFLOADED == []  # ... until the next trial's levers drop them
    assert model.get_input_embeddings().weight.device.type == "cuda"
    torch.manual_seed(3)
    torch.testing.assert_close(_loss_and_grads(model, ids)[0], loss_ref)


@requires_cuda
@pytest.mark.parametrize("trl_head", [False, True])
def test_streamed_head_keeps_loss_and_gradients_and_leaves_after_backward_on_cuda(trl_head):
    """The LM head in pinned host memory, copied in per forward: the same loss and gradients
    (HF's module call, and TRL's chunked loss, which reads `lm_head.weight`); the copy is gone
    once the head's backward has run; undone on the same instance."""
    from trl.trainer.utils import add_fused_lm_head

    model = _tiny_peft(dropout=0.1, tied=False).cuda()
    if trl_head:
        add_fused_lm_head(model.get_base_model())
    ids = torch.randint(0, 1000, (2, 32), device="cuda")

    def step():
        model.zero_grad()
        kwargs = {"fused_lm_head": True} if trl_head else {}
        start = torch.cuda.memory_allocated()
        loss = model(input_ids=ids, labels=ids, **kwargs).loss
        at_loss = torch.cuda.memory_allocated() - start
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), grads, (at_loss, torch.cuda.memory_allocated() - start)

    _apply(model, lora_kernel="fused", checkpointing="full")
    torch.manual_seed(3)
    loss_ref, grads_ref, _ = step()
    before = torch.cuda.memory_allocated()
    applied = _apply(model, lora_kernel="fused", checkpointing="full", head_on_cpu=True)
    head = model.get_output_embeddings()
    assert applied["head_on_cpu"] == 49152 * 64 and "lm_head.weight" not in dict(
        model.named_parameters()
    )
    head_bytes = 49152 * 64 * 4
    # off the GPU between steps
    assert before - torch.cuda.memory_allocated() == pytest.approx(head_bytes, abs=2**16)
    torch.manual_seed(3)
    loss, grads, (at_loss, after_backward) = step()
    torch.testing.assert_close(loss, loss_ref)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad)
    # on the GPU at the loss, gone after the head's backward (the adapter's grads are ~0.1 MB)
    assert at_loss >= head_bytes and after_backward < head_bytes / 4
    assert vars(head)["_harness_head"]["live"] is None
    host = vars(head)["_harness_head"]["host"]
    assert host.is_pinned() and torch.equal(head.weight.cpu(), host)  # a copy made on demand
    _apply(model, lora_kernel="fused", checkpointing="full")  # undone on the same instance
    assert isinstance(head.weight, torch.nn.Parameter) and head.weight.is_cuda
    torch.manual_seed(3)
    torch.testing.assert_close(step()[0], loss_ref)


def test_host_memory_levers_are_refused_on_the_cpu():
    for key in ("embeddings_on_cpu", "head_on_cpu", "expandable_segments"):
        with pytest.raises(ConfigError, match=f"train.{key}"):
            levers.check(TrainConfig(**{key: True}), "cpu")
    with pytest.raises(ConfigError, match="train.checkpointing"):
        levers.check(TrainConfig(checkpointing="offload"), "cpu")
    with pytest.raises(ConfigError, match="train.memory_cap_gib"):
        levers.check(TrainConfig(memory_cap_gib=8.0), "cpu")
    with pytest.raises(ConfigError, match="train.memory_cap_gib.*-1"):
        TrainConfig(memory_cap_gib=-1)


@requires_cuda
def test_memory_cap_bounds_reserved_memory_and_lifts_on_cuda():
    """Past the cap, the allocator first hands back its cached blocks and retries; an allocation
    that still does not fit is an OOM. The next trial's lever (null) lifts the cap."""
    offload.expandable_segments(True)
    torch.cuda.empty_cache()
    big = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 256 MiB, then cached
    del big
    cap = (torch.cuda.memory_allocated() + 2**29) / 2**30  # 512 MiB above what is in use
    try:
        assert offload.memory_cap(cap) == cap
        kept = [torch.empty(2**27, dtype=torch.uint8, device="cuda") for _ in range(3)]
        assert torch.cuda.memory_reserved() <= cap * 2**30
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(2**29, dtype=torch.uint8, device="cuda")
        del kept
    finally:
        assert offload.memory_cap(None) is None
        offload.expandable_segments(False)
    torch.empty(2**29, dtype=torch.uint8, device="cuda")  # lifted
