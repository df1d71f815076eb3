"""train.lora_kernel=fused (harness/lora_op.py, harness/lora_triton.py): the one-op LoRA Linear
computes peft's function and gradients, on the real 4-bit layers; its Triton dropout kernels
match a float64-free reference built from the very mask they draw (Triton's interpreter on the
CPU; the compiled kernels on CUDA)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO, loss_and_grads, requires_cuda, tiny_4bit

from harness.config.schema import TrainConfig
from harness.engine import build as levers
from harness.engine import lora_op

KERNEL_CHECK = textwrap.dedent("""
    import sys, torch
    from harness.engine.lora_triton import lora_a_forward, lora_a_grad, lora_x_grad_add
    dev, dt = sys.argv[1], getattr(torch, sys.argv[2])
    torch.manual_seed(int(sys.argv[3]))
    for n, k, r in [(100, 300, 8), (257, 1032, 16), (64, 128, 33)]:
        p, seed, c = 0.25, int(torch.randint(0, 2**31 - 1, (1,))), 0.7
        # the kernels' own mask: gx += m * (e0 @ e0-row) is m itself
        keep = torch.zeros(n, k, dtype=dt, device=dev)
        hot = torch.zeros(n, r, dtype=dt, device=dev); hot[:, 0] = 1
        ahot = torch.zeros(r, k, dtype=dt, device=dev); ahot[0] = 1
        keep = lora_x_grad_add(keep, hot, ahot, p, seed).float()
        assert ((keep == 0) | (keep == 1)).all(), "mask not binary"
        assert abs(keep.mean().item() - (1 - p)) < 0.03, keep.mean().item()
        x, a = torch.randn(n, k, device=dev).to(dt), torch.randn(r, k, device=dev).to(dt)
        g, g0 = torch.randn(n, r, device=dev).to(dt), torch.randn(n, k, device=dev).to(dt)
        xd = x.double() * keep.double()
        # the default launch configs, and others (split K, smaller tiles) that must agree
        w = {"num_warps": 4, "num_stages": 2}
        alt = ({"BM": 16, "BK": 64, "SPLIT": 3, **w}, {"BN": 32, "BK": 64, "ROWS": 64, **w},
               {"BM": 32, "BK": 64, **w})
        checks = {
            "forward": (lora_a_forward(x, a, p, seed, c), c * xd @ a.double().t()),
            "grad_a": (lora_a_grad(g, x, p, seed), g.double().t() @ xd),
            "grad_x": (lora_x_grad_add(g0.clone(), g, a, p, seed),
                       g0.double() + (g.double() @ a.double()) * keep.double()),
        }
        checks["forward split-K"] = (lora_a_forward(x, a, p, seed, c, alt[0]), checks["forward"][1])
        checks["grad_a rows"] = (lora_a_grad(g, x, p, seed, alt[1]), checks["grad_a"][1])
        checks["grad_x tiles"] = (lora_x_grad_add(g0.clone(), g, a, p, seed, alt[2]),
                                  checks["grad_x"][1])
        for name, (out, ref) in checks.items():
            err = ((out.double() - ref).norm() / ref.norm()).item()
            # fp32: exact in the interpreter, tf32 dots on the GPU (~3e-4); 16-bit: output rounding
            tol = (1e-5 if dev == "cpu" else 2e-3) if dt == torch.float32 else 2e-2
            assert err < tol, (name, n, k, r, err)
        # a second draw with another seed gives another mask
        other = lora_x_grad_add(torch.zeros_like(g0), hot, ahot, p, seed + 1).float()
        assert (other != keep).any()
    print("kernels ok")
""")


def _kernel_check(device: str, dtype: str, seed: int = 0, env: dict | None = None):
    proc = subprocess.run(
        [sys.executable, "-c", KERNEL_CHECK, device, dtype, str(seed)],
        cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0 and "kernels ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_triton_dropout_kernels_match_the_reference_in_the_interpreter(dtype):
    """Triton's interpreter runs the kernels on CPU tensors (its numpy has no bf16: fp16 and fp32
    here; bf16 runs compiled on CUDA below)."""
    pytest.importorskip("triton", reason="triton not installed (it ships with CUDA torch)")
    _kernel_check("cpu", dtype, env={"TRITON_INTERPRET": "1"})


@requires_cuda
@pytest.mark.gpu
def test_triton_dropout_kernels_match_the_reference_on_cuda():
    _kernel_check("cuda", "bfloat16", seed=1)
    _kernel_check("cuda", "float32", seed=2)


_loss_grads = loss_and_grads


def test_fused_op_matches_peft_on_real_4bit_layers():
    model = tiny_4bit(0.0)
    ids = torch.randint(0, 1000, (2, 16))
    loss_ref, grads_ref = _loss_grads(model, ids)
    applied = levers.apply(model, TrainConfig(lora_kernel="fused", checkpointing="none"),
                           compute_dtype=torch.bfloat16)  # fmt: skip
    assert applied["lora_fused"] == 14
    loss, grads = _loss_grads(model, ids)
    assert grads.keys() == grads_ref.keys() and len(grads) == 28
    torch.testing.assert_close(loss, loss_ref, rtol=2e-3, atol=2e-3)
    for name, grad in grads_ref.items():  # the base runs in bf16: bf16-level agreement
        err = (grads[name] - grad).norm() / grad.norm()
        assert err < 2e-2, (name, float(err))


def test_fused_op_with_dropout_under_checkpointing_recomputes_the_same_mask():
    """With dropout the recomputed layer must redraw the forward's mask: the gradient with
    checkpointing equals the gradient without it, for the same CPU RNG state."""
    model = tiny_4bit(0.3)
    levers.apply(model, TrainConfig(lora_kernel="fused", checkpointing="none"),
                 compute_dtype=torch.bfloat16)  # fmt: skip
    ids = torch.randint(0, 1000, (2, 16))
    torch.manual_seed(5)
    loss_ref, grads_ref = _loss_grads(model, ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    levers.apply(model, TrainConfig(lora_kernel="fused", checkpointing="full"),
                 compute_dtype=torch.bfloat16)  # fmt: skip
    torch.manual_seed(5)
    loss, grads = _loss_grads(model, ids)
    torch.testing.assert_close(loss, loss_ref)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad)
    torch.manual_seed(6)  # another draw: other masks, another loss
    assert not torch.equal(_loss_grads(model, ids)[0], loss_ref)


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
    layer = tiny_4bit(0.0).base_model.model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 1e-4)  # updates well under bf16's resolution
    x = torch.randn(2, 8, layer.in_features)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        base_out = layer.base_layer(x)
        ref = layer(x)  # peft
        levers._lora_kernel(layer, "fused")
        out = layer(x)
    assert out.dtype == ref.dtype == base_out.dtype == torch.float32
    delta = ref - base_out
    assert delta.abs().max() > 0
    assert (out - ref).norm() < 0.05 * delta.norm()
    torch.testing.assert_close(out - base_out, delta, rtol=0.05, atol=1e-6)
