"""engine.lora_kernel=fused (harness/engine/lora_op.py, lora_layer.py, lora_triton.py): the one-op
LoRA Linear computes peft's function and gradients, on the real 4-bit layers; its Triton dropout
kernels match a float64 reference built from the very mask they draw (Triton's interpreter on the
CPU; the compiled kernels on CUDA)."""

import pytest
import torch
from conftest import requires_cuda
from engine_models import (
    assert_close,
    build,
    ecfg,
    enable_checkpointing,
    in_interpreter,
    run_interpreted,
    step,
    tiny_4bit,
)

from harness.engine import lora_op

SHAPES = [(100, 300, 8), (257, 1032, 16), (64, 128, 33)]  # rows, in_features, rank
# the interpreter's numpy has no bf16: fp16 and fp32 on the CPU; bf16 runs compiled on CUDA
DEVICE_DTYPES = [
    pytest.param("cpu", torch.float32, id="interpreter-fp32", marks=in_interpreter),
    pytest.param("cpu", torch.float16, id="interpreter-fp16", marks=in_interpreter),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=[requires_cuda, pytest.mark.gpu]),
    pytest.param("cuda", torch.float32, id="cuda-fp32", marks=[requires_cuda, pytest.mark.gpu]),
]


def _mask(kernels, n, k, r, p, seed, dtype, device) -> torch.Tensor:
    """The kernels' own keep-mask, read back: gx += m * (e0 @ e0-row) is m itself."""
    hot = torch.zeros(n, r, dtype=dtype, device=device)
    hot[:, 0] = 1
    ahot = torch.zeros(r, k, dtype=dtype, device=device)
    ahot[0] = 1
    keep = torch.zeros(n, k, dtype=dtype, device=device)
    return kernels.lora_x_grad_add(keep, hot, ahot, p, seed).float()


@pytest.mark.parametrize("n,k,r", SHAPES)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_triton_dropout_kernels_match_the_reference(device, dtype, n, k, r):
    from harness.engine import lora_triton as kernels

    torch.manual_seed(n)
    p, seed, c = 0.25, int(torch.randint(0, 2**31 - 1, (1,))), 0.7
    keep = _mask(kernels, n, k, r, p, seed, dtype, device)
    assert ((keep == 0) | (keep == 1)).all(), "mask not binary"
    assert abs(keep.mean().item() - (1 - p)) < 0.03, keep.mean().item()
    x, a = torch.randn(n, k, device=device).to(dtype), torch.randn(r, k, device=device).to(dtype)
    g, g0 = torch.randn(n, r, device=device).to(dtype), torch.randn(n, k, device=device).to(dtype)
    xd = x.double() * keep.double()
    # the default launch configs, and others (split K, smaller tiles) that must agree
    w = {"num_warps": 4, "num_stages": 2}
    alt = ({"BM": 16, "BK": 64, "SPLIT": 3, **w}, {"BN": 32, "BK": 64, "ROWS": 64, **w},
           {"BM": 32, "BK": 64, **w})  # fmt: skip
    forward, grad_a = c * xd @ a.double().t(), g.double().t() @ xd
    grad_x = g0.double() + (g.double() @ a.double()) * keep.double()
    checks = {
        "forward": (kernels.lora_a_forward(x, a, p, seed, c), forward),
        "grad_a": (kernels.lora_a_grad(g, x, p, seed), grad_a),
        "grad_x": (kernels.lora_x_grad_add(g0.clone(), g, a, p, seed), grad_x),
        "forward split-K": (kernels.lora_a_forward(x, a, p, seed, c, alt[0]), forward),
        "grad_a rows": (kernels.lora_a_grad(g, x, p, seed, alt[1]), grad_a),
        "grad_x tiles": (kernels.lora_x_grad_add(g0.clone(), g, a, p, seed, alt[2]), grad_x),
    }
    # fp32: exact in the interpreter, tf32 dots on the GPU (~3e-4); 16-bit: output rounding
    tol = (1e-5 if device == "cpu" else 2e-3) if dtype == torch.float32 else 2e-2
    for name, (out, ref) in checks.items():
        err = ((out.double() - ref).norm() / ref.norm()).item()
        assert err < tol, (name, err)
    # a second draw with another seed gives another mask
    assert (_mask(kernels, n, k, r, p, seed + 1, dtype, device) != keep).any()
    # the seed read from a one-element device int64 (engine.cuda_graphs) draws the same mask
    held = torch.tensor([seed], dtype=torch.int64, device=device)
    assert torch.equal(_mask(kernels, n, k, r, p, held, dtype, device), keep)
    for name, out in (("forward", kernels.lora_a_forward(x, a, p, held, c)),
                      ("grad_a", kernels.lora_a_grad(g, x, p, held))):  # fmt: skip
        assert torch.equal(out, checks[name][0]), name


def test_triton_dropout_kernels_run_in_the_interpreter():
    """The interpreter cases above, in a process started with Triton's interpreter on."""
    run_interpreted(__file__, expected=2 * len(SHAPES))


def test_fused_op_matches_peft_on_real_4bit_layers():
    ids = torch.randint(0, 1000, (2, 16))
    plain = tiny_4bit(0.0)
    build(plain, ecfg())
    model = tiny_4bit(0.0, ecfg(lora_kernel="fused"))
    levers = build(model, ecfg(lora_kernel="fused"))
    assert levers["lora_fused"] == 14
    (loss_ref, grads_ref), (loss, grads) = step(plain, ids), step(model, ids)
    assert grads.keys() == grads_ref.keys() and len(grads) == 28
    torch.testing.assert_close(loss, loss_ref, rtol=2e-3, atol=2e-3)
    for name, grad in grads_ref.items():  # the base runs in bf16: bf16-level agreement
        err = (grads[name] - grad).norm() / grad.norm()
        assert err < 2e-2, (name, float(err))


def test_fused_op_with_dropout_under_checkpointing_recomputes_the_same_mask():
    """With dropout the recomputed layer must redraw the forward's mask: the gradient with
    checkpointing equals the gradient without it, for the same CPU RNG state. (The recompute is
    the layers' runner: build sets it again on the same model, as after each attach.)"""
    model = tiny_4bit(0.3, ecfg(lora_kernel="fused"))
    build(model, ecfg(lora_kernel="fused"))
    ids = torch.randint(0, 1000, (2, 16))
    ref = step(model, ids, seed=5)
    enable_checkpointing(model)
    levers = build(model, ecfg(lora_kernel="fused", checkpointing="full"))
    assert levers["checkpointed_layers"] == 2
    assert_close(step(model, ids, seed=5), ref)
    # another draw: other masks, another loss
    assert not torch.equal(step(model, ids, seed=6)[0], ref[0])


@requires_cuda
@pytest.mark.gpu
def test_fused_op_on_cuda_matches_a_reference_built_from_its_mask():
    """bf16 autocast on CUDA (the trial's setting): the Triton path's output and gradients equal
    x Wᵀ + s (x ⊙ m / (1-p)) Aᵀ Bᵀ with m read back from the kernels, to bf16 rounding."""
    from harness.engine.lora_triton import lora_x_grad_add

    torch.manual_seed(0)
    dev, n, k, o, r, p, s = "cuda", 512, 1024, 768, 16, 0.1, 2.0
    base = torch.nn.Linear(k, o, bias=False, device=dev, dtype=torch.bfloat16).requires_grad_(False)
    x = torch.randn(4, n // 4, k, device=dev, dtype=torch.bfloat16, requires_grad=True)
    a = (torch.randn(r, k, device=dev) * 0.05).requires_grad_()
    b = (torch.randn(o, r, device=dev) * 0.05).requires_grad_()
    seed = 12345
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = lora_op.LoraLinear.apply(x, a, b, base, s, p, seed, torch.bfloat16, torch.bfloat16)
    gy = torch.randn_like(y)
    y.backward(gy)
    hot = torch.zeros(n, r, dtype=torch.bfloat16, device=dev)
    hot[:, 0] = 1
    ahot = torch.zeros(r, k, dtype=torch.bfloat16, device=dev)
    ahot[0] = 1
    keep = lora_x_grad_add(torch.zeros(n, k, dtype=torch.bfloat16, device=dev), hot, ahot, p, seed)
    keep = keep.view(x.shape).double()
    xr, ar, br = (t.detach().double().requires_grad_() for t in (x, a, b))
    ref = xr @ base.weight.double().t() + s * ((xr * keep / (1 - p)) @ ar.t()) @ br.t()
    ref.backward(gy.double())
    for out, want in [(y, ref), (x.grad, xr.grad), (a.grad, ar.grad), (b.grad, br.grad)]:
        assert ((out.double() - want).norm() / want.norm()).item() < 2e-2


def test_fused_op_on_a_biased_16bit_base_is_the_lora_formula():
    """quant=none and biased projections (Qwen2's q/k/v): y = xWᵀ + b + s(x Aᵀ)Bᵀ, fp32 on the
    CPU, with the gradients autograd gives that formula."""
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 10, bias=True).requires_grad_(False)
    x = torch.randn(3, 4, 12, requires_grad=True)
    a, b = torch.randn(4, 12, requires_grad=True), torch.randn(10, 4, requires_grad=True)
    y = lora_op.LoraLinear.apply(x, a, b, base, 0.5, 0.0, 0, torch.float32, torch.float32)
    y.square().sum().backward()
    xr, ar, br = (t.detach().clone().requires_grad_() for t in (x, a, b))
    ref = xr @ base.weight.t() + base.bias + 0.5 * (xr @ ar.t()) @ br.t()
    ref.square().sum().backward()
    torch.testing.assert_close(y, ref)
    for got, want in [(x.grad, xr.grad), (a.grad, ar.grad), (b.grad, br.grad)]:
        torch.testing.assert_close(got, want)


def test_fused_op_adds_the_branch_in_the_residual_dtype_as_peft_does():
    """frozen_dtype=fp32 (the plain stack's fp32 residual stream) under bf16 autocast: peft adds
    its bf16 branch to the 4-bit base's fp32 output; a small update must not be rounded away in a
    bf16 sum (H200: that moved the loss of steps 3-9 by up to 0.23)."""
    layers = []
    for cfg in (ecfg(), ecfg(lora_kernel="fused")):  # peft's layer, then the fused twin
        model = tiny_4bit(0.0, cfg)
        build(model, cfg)
        layer = model.base_model.model.model.layers[0].mlp.up_proj
        with torch.no_grad():
            layer.lora_B["default"].weight.normal_(
                0, 1e-4, generator=torch.Generator().manual_seed(1)
            )
        layers.append(layer)
    x = torch.randn(2, 8, layers[0].in_features)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        base_out = layers[0].base_layer(x)
        ref = layers[0](x)  # peft
        out = layers[1](x)
    assert out.dtype == ref.dtype == base_out.dtype == torch.float32
    delta = ref - base_out
    assert delta.abs().max() > 0
    assert (out - ref).norm() < 0.05 * delta.norm()
    torch.testing.assert_close(out - base_out, delta, rtol=0.05, atol=1e-6)
