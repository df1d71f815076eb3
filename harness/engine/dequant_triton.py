"""engine.dequant_kernel=triton: bitsandbytes' 4-bit dequantization (NF4 / FP4, with or without
double quantization) as one Triton kernel, for the fused LoRA op's base matmul
(harness/engine/lora_op.py).

bitsandbytes dequantizes a double-quantized weight in three launches: the 8-bit absmax codes to
fp32 (code2[q] * absmax2[block // 256]), `+ offset`, then the 4-bit values (code[nibble] *
absmax[block]) to the compute dtype. Its 4-bit kernel moved ~1.9 TB/s on an H200 (26.8 ms a step
for 672 calls, llama3-8b b4, full recompute, profiled). This kernel
does all three in one pass that reads each packed byte once and writes two values, with the same
fp32 operations in the same order (no fused multiply-add: `enable_fp_fusion=False`), so its output
is bitsandbytes' bit for bit; tests/test_dequant.py checks that against bitsandbytes on the CPU
(Triton's interpreter) and on CUDA.
"""

import math
import os

import torch
import triton
import triton.language as tl

_BYTES_PER_PROGRAM = 2048  # 4096 values out per program


@triton.jit
def _dequant4(q_ptr, absmax_ptr, code_ptr, code2_ptr, absmax2_ptr, offset_ptr, out_ptr, n_bytes,
              BLOCK: tl.constexpr, BLOCK2: tl.constexpr, NESTED: tl.constexpr,
              BB: tl.constexpr):  # fmt: skip
    """Packed bytes [pid*BB, pid*BB + BB): byte i holds values 2i (high nibble) and 2i+1."""
    i = tl.program_id(0).to(tl.int64) * BB + tl.arange(0, BB)
    live = i < n_bytes
    byte = tl.load(q_ptr + i, mask=live, other=0).to(tl.int32)
    blk = (2 * i) // BLOCK  # both values of a byte share a block: BLOCK is even
    if NESTED:
        q2 = tl.load(absmax_ptr + blk, mask=live, other=0).to(tl.int32)
        scale = tl.load(code2_ptr + q2) * tl.load(absmax2_ptr + blk // BLOCK2, mask=live, other=0)
        scale = scale + tl.load(offset_ptr)  # a device scalar: reading it here keeps the host async
    else:
        scale = tl.load(absmax_ptr + blk, mask=live, other=0)
    hi = tl.load(code_ptr + (byte >> 4)) * scale
    lo = tl.load(code_ptr + (byte & 15)) * scale
    vals = tl.reshape(tl.join(hi, lo), (2 * BB,))  # interleave: hi0, lo0, hi1, lo1, ...
    j = tl.program_id(0).to(tl.int64) * (2 * BB) + tl.arange(0, 2 * BB)
    tl.store(out_ptr + j, vals.to(out_ptr.dtype.element_ty), mask=j < 2 * n_bytes)


def supported(packed: torch.Tensor, state) -> str | None:
    """None if this kernel reproduces bitsandbytes for the weight, else why not."""
    n = math.prod(int(d) for d in state.shape)
    if packed.dtype != torch.uint8:
        return f"quant_storage {packed.dtype} (the kernel reads uint8)"
    if n % 2 or packed.numel() * 2 != n:
        return f"{n} values in {packed.numel()} bytes (needs two per byte)"
    if state.quant_type not in ("nf4", "fp4") or state.blocksize % 2:
        return f"quant_type {state.quant_type}, blocksize {state.blocksize}"
    nested_ok = not state.nested or (
        state.absmax.dtype == torch.uint8 and state.state2.absmax.dtype == torch.float32
    )
    if not nested_ok:
        return "nested absmax not uint8 codes with fp32 scales"
    return None


def _launch_args(packed: torch.Tensor, state) -> tuple:
    why = supported(packed, state)
    if why is not None:
        raise ValueError(f"dequant_triton: unsupported weight: {why}")
    code = state.code.to(device=packed.device, dtype=torch.float32)
    if code.numel() != 16:
        raise ValueError(f"dequant_triton: a 4-bit code table has 16 values, not {code.numel()}")
    nested = bool(state.nested)
    s2 = state.state2 if nested else None
    absmax = state.absmax if nested else state.absmax.float()
    ptrs = (code, s2.code if nested else code, s2.absmax if nested else absmax)
    offset = state.offset if nested else absmax
    meta = {"BLOCK": int(state.blocksize), "BLOCK2": int(s2.blocksize) if nested else 1,
            "NESTED": nested, "BB": _BYTES_PER_PROGRAM, "num_warps": 8}  # fmt: skip
    if os.environ.get("TRITON_INTERPRET") != "1":
        meta["enable_fp_fusion"] = False
    grid = (triton.cdiv(packed.numel(), _BYTES_PER_PROGRAM),)
    return absmax, ptrs, offset, tuple(state.shape), state.dtype, grid, meta


class Dequantizer:
    """One 4-bit weight's dequantization, owned by its fused LoRA layer (lora_layer.py). Keeps the
    kernel's launch arguments: working them out again per call cost host time that counts, 672
    calls a step on llama3-8b."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.args: tuple | None = None

    def __call__(self, packed: torch.Tensor, state, dtype: torch.dtype | None = None):
        """bitsandbytes.functional.dequantize_4bit(packed, state), then .to(dtype), in one
        kernel."""
        key = (packed.data_ptr(), packed.device)  # weight.data is a new tensor object per access
        if self.key != key:
            self.key, self.args = key, _launch_args(packed, state)
        absmax, (code, code2, absmax2), offset, shape, wdtype, grid, meta = self.args
        # bitsandbytes writes state.dtype (the weight's dtype before quantizing); .to(dtype) after
        out = torch.empty(shape, dtype=wdtype, device=packed.device)
        _dequant4[grid](packed, absmax, code, code2, absmax2, offset, out, packed.numel(), **meta)
        return out if dtype is None else out.to(dtype)


def dequantize_4bit(packed: torch.Tensor, state, dtype: torch.dtype | None = None) -> torch.Tensor:
    """bitsandbytes.functional.dequantize_4bit(packed, state), then .to(dtype), in one kernel."""
    return Dequantizer()(packed, state, dtype)
