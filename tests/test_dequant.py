"""engine.dequant_kernel=triton (harness/engine/dequant_triton.py): one Triton kernel writes the
values bitsandbytes' dequantize_4bit writes, NF4 and FP4, with and without double quantization;
on the CPU through Triton's interpreter, on CUDA compiled and bit for bit; the key is refused where
it cannot act (on the CPU)."""

import pytest
import torch
from conftest import requires_cuda
from engine_models import in_interpreter, run_interpreted

from harness.config.engine import EngineConfig
from harness.engine import build as engine
from harness.errors import ConfigError

# rows x cols with cols a multiple of the block (as every model dimension here); the last shape
# spans several programs of the kernel and ends in a partial one
SHAPES = [(64, 128), (130, 192), (8, 6208), (3, 4096 * 3 + 64)]
CASES = [(qt, nested, wd) for qt in ("nf4", "fp4") for nested in (True, False)
         for wd in (torch.bfloat16, torch.float16, torch.float32)]  # fmt: skip
DEVICES = [
    pytest.param("cpu", id="interpreter", marks=in_interpreter),
    pytest.param("cuda", id="cuda", marks=[requires_cuda, pytest.mark.gpu]),
]


def _reference(q, st):
    """bitsandbytes' algorithm in torch ops, fp32 until the final cast."""
    absmax = st.absmax
    if st.nested:
        s2 = st.state2
        scale2 = s2.absmax.repeat_interleave(s2.blocksize)[: absmax.numel()]
        absmax = s2.code[absmax.long()] * scale2 + st.offset
    b = q.reshape(-1).long()
    nib = torch.stack([b >> 4, b & 15], dim=1).reshape(-1)
    vals = st.code[nib] * absmax.float().repeat_interleave(st.blocksize)[: nib.numel()]
    return vals.reshape(st.shape).to(st.dtype)


@pytest.mark.parametrize("qt,nested,wd", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("device", DEVICES)
def test_triton_dequant_writes_bitsandbytes_values(device, shape, qt, nested, wd):
    import bitsandbytes.functional as F

    from harness.engine.dequant_triton import Dequantizer, dequantize_4bit

    torch.manual_seed(0)
    w = (torch.randn(shape, device=device) * 0.05).to(wd)
    q, st = F.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type=qt,
                            quant_storage=torch.uint8)  # fmt: skip
    # on CUDA bitsandbytes itself; on the CPU its algorithm (its CPU kernels differ from its CUDA
    # ones by CPU instruction set)
    ref = F.dequantize_4bit(q, st) if device == "cuda" else _reference(q, st)
    if device == "cuda":
        assert torch.equal(ref, _reference(q, st))
    got = dequantize_4bit(q, st)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    if device == "cpu" and wd == torch.bfloat16:
        # the interpreter's numpy has no bf16 and rounds its own way: within one bf16 step of
        # bitsandbytes (compiled on CUDA: bit for bit)
        step = ref.float().abs() * 2.0**-7 + 1e-30
        assert ((got.float() - ref.float()).abs() <= step).all()
    else:
        assert torch.equal(got, ref), (got != ref).sum().item()
    dequant = Dequantizer()  # what a fused layer owns: the launch arguments kept across calls
    assert torch.equal(dequant(q, st, torch.float32), got.float())
    assert dequant.key is not None and torch.equal(dequant(q, st, torch.float32), got.float())


def test_triton_dequant_runs_in_the_interpreter():
    """The interpreter cases above, in a process started with Triton's interpreter on."""
    run_interpreted(__file__, expected=len(SHAPES) * len(CASES))


def test_dequant_kernel_is_refused_where_it_cannot_act():
    with pytest.raises(ConfigError, match="engine.dequant_kernel"):
        EngineConfig(dequant_kernel="fast")
    with pytest.raises(ConfigError, match="engine.dequant_kernel.*CUDA"):
        engine.check(EngineConfig(dequant_kernel="triton", lora_kernel="fused"), "cpu")


@requires_cuda
@pytest.mark.gpu
def test_fused_op_with_triton_dequant_matches_bitsandbytes_dequant_exactly():
    """The same adapted 4-bit layer, fused op, dequantized by bitsandbytes or by the kernel:
    identical outputs and gradients."""
    import bitsandbytes as bnb

    from harness.engine import lora_op
    from harness.engine.dequant_triton import Dequantizer

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(256, 512, bias=False, compute_dtype=torch.bfloat16,
                              quant_type="nf4", compress_statistics=True).cuda()  # fmt: skip
    a = torch.randn(16, 256, device="cuda", requires_grad=True)
    b = torch.randn(512, 16, device="cuda", requires_grad=True)
    x = torch.randn(4, 64, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert lora_op.triton_dequant_ok(layer)
    outs = []
    for dequant in (None, Dequantizer()):
        y = lora_op.LoraLinear.apply(x, a, b, layer, 2.0, 0.1, 1234, torch.bfloat16,
                                     torch.bfloat16, None, False, None, dequant)  # fmt: skip
        ga, gb, gx = torch.autograd.grad(y.float().square().sum(), (a, b, x))
        outs.append((y, ga, gb, gx))
    for ref, got in zip(*outs, strict=True):
        assert torch.equal(ref, got)
