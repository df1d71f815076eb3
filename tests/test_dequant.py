"""train.dequant_kernel=triton (harness/dequant_triton.py): one Triton kernel writes the values
bitsandbytes' dequantize_4bit writes, NF4 and FP4, with and without double quantization; on the
CPU through Triton's interpreter, on CUDA compiled and bit for bit; the key is refused where it
cannot act (on the CPU); with peft's modules (lora_kernel=peft) it has nothing to act on
and the record says so (levers.dequant_triton = 0)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO, requires_cuda

from harness.config.schema import TrainConfig
from harness.engine import build as levers
from harness.errors import ConfigError

CHECK = textwrap.dedent("""
    import sys, torch
    import bitsandbytes.functional as F
    from harness.engine.dequant_triton import dequantize_4bit
    dev, interp = sys.argv[1], sys.argv[2] == "1"
    torch.manual_seed(0)

    def reference(q, st):  # bitsandbytes' algorithm in torch ops, fp32 until the final cast
        absmax = st.absmax
        if st.nested:
            s2 = st.state2
            scale2 = s2.absmax.repeat_interleave(s2.blocksize)[: absmax.numel()]
            absmax = s2.code[absmax.long()] * scale2 + st.offset
        b = q.reshape(-1).long()
        nib = torch.stack([b >> 4, b & 15], dim=1).reshape(-1)
        vals = st.code[nib] * absmax.float().repeat_interleave(st.blocksize)[: nib.numel()]
        return vals.reshape(st.shape).to(st.dtype)

    n = 0
    # rows x cols with cols a multiple of the block (as every model dimension here); the last
    # shape spans several programs of the kernel and ends in a partial one
    for shape in [(64, 128), (130, 192), (8, 6208), (3, 4096 * 3 + 64)]:
        for qt in ("nf4", "fp4"):
            for nested in (True, False):
                for wd in (torch.bfloat16, torch.float16, torch.float32):
                    w = (torch.randn(shape, device=dev) * 0.05).to(wd)
                    case = (shape, qt, nested, wd)
                    q, st = F.quantize_4bit(w, blocksize=64, compress_statistics=nested,
                                            quant_type=qt, quant_storage=torch.uint8)
                    # on CUDA bitsandbytes itself; on the CPU its algorithm (its CPU kernels
                    # differ from its CUDA ones by CPU instruction set)
                    ref = F.dequantize_4bit(q, st) if dev == "cuda" else reference(q, st)
                    if dev == "cuda":
                        assert torch.equal(ref, reference(q, st)), case
                    got = dequantize_4bit(q, st)
                    assert got.dtype == ref.dtype and got.shape == ref.shape
                    if interp and wd == torch.bfloat16:
                        # the interpreter's numpy has no bf16 and rounds its own way: within one
                        # bf16 step of bitsandbytes (compiled on CUDA: bit for bit)
                        step = ref.float().abs() * 2.0**-7 + 1e-30
                        assert ((got.float() - ref.float()).abs() <= step).all(), case
                    else:
                        assert torch.equal(got, ref), (case, (got != ref).sum().item())
                    cast = dequantize_4bit(q, st, torch.float32)
                    assert torch.equal(cast, got.float()), case
                    n += 1
    print(f"dequant ok {n}")
""")


def _check(device: str, interp: bool) -> None:
    env = {**os.environ, **({"TRITON_INTERPRET": "1"} if interp else {})}
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, device, "1" if interp else "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0 and "dequant ok 48" in proc.stdout, (proc.stdout + proc.stderr)[
        -3000:
    ]


def test_triton_dequant_writes_bitsandbytes_values_in_the_interpreter():
    pytest.importorskip("triton", reason="triton not installed (it ships with CUDA torch)")
    _check("cpu", interp=True)


@requires_cuda
@pytest.mark.gpu
def test_triton_dequant_writes_bitsandbytes_values_on_cuda():
    _check("cuda", interp=False)


def test_dequant_kernel_is_refused_where_it_cannot_act():
    with pytest.raises(ConfigError, match="train.dequant_kernel"):
        TrainConfig(dequant_kernel="fast")
    with pytest.raises(ConfigError, match="train.dequant_kernel.*CUDA"):
        levers.check(TrainConfig(dequant_kernel="triton", lora_kernel="fused"), "cpu")


@requires_cuda
@pytest.mark.gpu
def test_fused_op_with_triton_dequant_matches_bitsandbytes_dequant_exactly():
    """The same adapted 4-bit layers, fused op, dequantized by bitsandbytes or by the kernel:
    identical outputs and gradients."""
    import bitsandbytes as bnb

    from harness.engine import lora_op

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(256, 512, bias=False, compute_dtype=torch.bfloat16,
                              quant_type="nf4", compress_statistics=True).cuda()  # fmt: skip
    a = torch.randn(16, 256, device="cuda", requires_grad=True)
    b = torch.randn(512, 16, device="cuda", requires_grad=True)
    x = torch.randn(4, 64, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert lora_op.triton_dequant_ok(layer)
    outs = []
    for use in (False, True):
        if use:
            setattr(layer, lora_op.DEQUANT_ATTR, True)
        y = lora_op.LoraLinear.apply(
            x, a, b, layer, 2.0, 0.1, 1234, torch.bfloat16, torch.bfloat16
        )  # fmt: skip
        ga, gb, gx = torch.autograd.grad(y.float().square().sum(), (a, b, x))
        outs.append((y, ga, gb, gx))
    for ref, got in zip(*outs, strict=True):
        assert torch.equal(ref, got)
