"""Triton kernels for LoRA dropout (engine.lora_kernel=fused on CUDA): the dropout mask is never
stored and never written as a tensor. It is a pure function of (seed, row, col), drawn inside
the three kernels that read the layer input:

    lora_a_forward   h  = c * (x ⊙ m) @ Aᵀ            [N, r]   one read of x
    lora_a_grad      gA = gHᵀ @ (x ⊙ m)               [r, K]   one read of x (split over N)
    lora_x_grad_add  gX += m ⊙ (gH @ A)               [N, K]   one read + one write of gX

where m[n, k] = u(seed, n, k) >= p, u uniform in [0, 1): one Philox4x32-10 draw (`tl.rand4x`) gives
the four columns 4j..4j+3 of a row (offset n*K/4 + j), so each kernel builds any tile's mask from
the same numbers, at a quarter of the Philox work per element (measured on an H200: one draw per
element made them compute-bound: 192 vs 80 ms a step, llama3-8b b4). peft's nn.Dropout path
writes the mask and x ⊙ m / (1-p) for each of the 7 adapted Linear layers of a llama block (6
passes over x per layer forward, more in backward); these kernels read x once per use. 1/(1-p)
and the LoRA scale go into `c` (forward) and into gH (backward): peft's math up to bf16 rounding.

Tested on the CPU through Triton's interpreter (TRITON_INTERPRET=1, tests/test_lora_op.py).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _seed(seed, SEED_PTR: tl.constexpr):
    """The Philox seed: the int itself, or the value at `seed`, a device int64 (engine.cuda_graphs:
    a graph replays its launch arguments, so a seed that changes per step is read, not passed)."""
    if SEED_PTR:
        s = tl.load(seed)
    else:
        s = seed
    return s


@triton.jit
def _keep(seed, rn, k0, K: tl.constexpr, p, BM: tl.constexpr, BK: tl.constexpr):
    """The keep-mask of the tile rows rn x columns k0..k0+BK (k0 % 4 == 0)."""
    q = k0 // 4 + tl.arange(0, BK // 4)
    r0, r1, r2, r3 = tl.rand4x(seed, rn[:, None] * (K // 4) + q[None, :])
    return tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), (BM, BK)) >= p


@triton.jit
def _lora_a_fwd(x_ptr, a_ptr, h_ptr, N, R, sxn, sar, seed, p, c, K: tl.constexpr,
                KS: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                BR: tl.constexpr, SEED_PTR: tl.constexpr):  # fmt: skip
    """Rows rn x the K-range [split*KS, split*KS + KS) of c * (x ⊙ m) @ Aᵀ, into h[split]."""
    seed = _seed(seed, SEED_PTR)
    rn = tl.program_id(0) * BM + tl.arange(0, BM)
    split = tl.program_id(1)
    rr = tl.arange(0, BR)
    acc = tl.zeros((BM, BR), dtype=tl.float32)
    for i in range(0, KS, BK):
        k0 = split * KS + i
        rk = k0 + tl.arange(0, BK)
        inside = (rn[:, None] < N) & (rk[None, :] < K)
        x = tl.load(x_ptr + rn[:, None] * sxn + rk[None, :], mask=inside, other=0.0)
        x = tl.where(_keep(seed, rn, k0, K, p, BM, BK), x, 0.0)
        a_mask = (rk[:, None] < K) & (rr[None, :] < R)
        at = tl.load(a_ptr + rr[None, :] * sar + rk[:, None], mask=a_mask, other=0.0)  # [BK, BR]
        acc += tl.dot(x, at)
    out_mask = (rn[:, None] < N) & (rr[None, :] < R)
    out = h_ptr + split * N * R + rn[:, None] * R + rr[None, :]
    tl.store(out, (acc * c).to(h_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _lora_a_grad(gh_ptr, x_ptr, ws_ptr, N, K: tl.constexpr, R, sxn, seed, p, ROWS: tl.constexpr,
                 BN: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr,
                 SEED_PTR: tl.constexpr):  # fmt: skip
    seed = _seed(seed, SEED_PTR)
    rk = tl.program_id(0) * BK + tl.arange(0, BK)
    split = tl.program_id(1)
    rr = tl.arange(0, BR)
    acc = tl.zeros((BR, BK), dtype=tl.float32)
    for n0 in range(0, ROWS, BN):
        rn = split * ROWS + n0 + tl.arange(0, BN)
        inside = (rn[:, None] < N) & (rk[None, :] < K)
        x = tl.load(x_ptr + rn[:, None] * sxn + rk[None, :], mask=inside, other=0.0)
        x = tl.where(_keep(seed, rn, tl.program_id(0) * BK, K, p, BN, BK), x, 0.0)
        g_mask = (rn[:, None] < N) & (rr[None, :] < R)
        gh = tl.load(gh_ptr + rn[:, None] * R + rr[None, :], mask=g_mask, other=0.0)  # [BN, BR]
        acc += tl.dot(tl.trans(gh), x)
    ws_mask = (rr[:, None] < R) & (rk[None, :] < K)
    tl.store(ws_ptr + split * R * K + rr[:, None] * K + rk[None, :], acc, mask=ws_mask)


@triton.jit
def _lora_x_grad_add(gx_ptr, gh_ptr, a_ptr, N, K: tl.constexpr, R, sgn, sar, seed, p,
                     BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr,
                     SEED_PTR: tl.constexpr):  # fmt: skip
    seed = _seed(seed, SEED_PTR)
    rn = tl.program_id(0) * BM + tl.arange(0, BM)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    rr = tl.arange(0, BR)
    gh = tl.load(gh_ptr + rn[:, None] * R + rr[None, :],
                 mask=(rn[:, None] < N) & (rr[None, :] < R), other=0.0)  # fmt: skip
    a = tl.load(a_ptr + rr[:, None] * sar + rk[None, :],
                mask=(rr[:, None] < R) & (rk[None, :] < K), other=0.0)  # fmt: skip
    t = tl.dot(gh, a)  # [BM, BK]
    keep = _keep(seed, rn, tl.program_id(1) * BK, K, p, BM, BK)
    inside = (rn[:, None] < N) & (rk[None, :] < K)
    ptrs = gx_ptr + rn[:, None] * sgn + rk[None, :]
    gx = tl.load(ptrs, mask=inside, other=0.0)
    out = gx.to(tl.float32) + tl.where(keep, t, 0.0)
    tl.store(ptrs, out.to(gx_ptr.dtype.element_ty), mask=inside)


def _is_ptr(seed) -> bool:
    """A seed given as a one-element device int64 tensor (read by the kernels), not an int."""
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise ValueError(f"a tensor seed is one int64 value (got {seed.dtype}, {seed.numel()})")
        return True
    return False


def _br(r: int) -> int:
    return max(16, triton.next_power_of_2(r))


def _check(x: torch.Tensor) -> None:
    if x.stride(-1) != 1:
        raise ValueError("lora kernels need a row-contiguous [N, K] input")
    if x.shape[1] % 4 or x.shape[0] * x.shape[1] // 4 >= 2**31:
        raise ValueError(f"lora dropout kernels need in_features % 4 == 0 and N*K/4 < 2^31 "
                         f"(got {tuple(x.shape)})")  # fmt: skip


def launch_config(kernel: str, n: int, k: int) -> dict:
    """Block sizes, splits and warps per kernel ('fwd', 'grad', 'xgrad') for x [n, k]: the
    fastest of a sweep of these settings on an H200 at n = 8192, k = 4096 and 14336 (1.05-1.3x
    over the first configs tried)."""
    wide = k > 8192
    if kernel == "fwd":  # split K: more programs in flight than one per 32-64 rows
        return {"BM": 64, "BK": 64 if wide else 128, "SPLIT": 8 if wide else 4, "num_warps": 4,
                "num_stages": 3}  # fmt: skip
    if kernel == "grad":
        return {"BN": 32 if wide else 64, "BK": 64, "ROWS": 256, "num_warps": 4, "num_stages": 3}
    return {"BM": 32 if wide else 64, "BK": 128, "num_warps": 4, "num_stages": 3}


def lora_a_forward(x: torch.Tensor, a: torch.Tensor, p: float, seed: int | torch.Tensor, c: float,
                   cfg: dict | None = None):  # fmt: skip
    """c * (x ⊙ m) @ aᵀ for x [N, K], a [r, K] (same dtype); returns [N, r] in x's dtype."""
    _check(x)
    n, k = x.shape
    r = a.shape[0]
    cfg = dict(cfg or launch_config("fwd", n, k))
    bm, bk, split = cfg.pop("BM"), cfg.pop("BK"), cfg.pop("SPLIT")
    ks = triton.cdiv(triton.cdiv(k, bk), split) * bk  # K-range per split, whole BK tiles
    split = triton.cdiv(k, ks)
    h = torch.empty(split, n, r, device=x.device, dtype=x.dtype if split == 1 else torch.float32)
    _lora_a_fwd[(triton.cdiv(n, bm), split)](
        x, a, h, n, r, x.stride(0), a.stride(0), seed, p, c, K=k, KS=ks, BM=bm, BK=bk,
        BR=_br(r), SEED_PTR=_is_ptr(seed), **cfg,
    )  # fmt: skip
    return h[0] if split == 1 else h.sum(0).to(x.dtype)


def lora_a_grad(gh: torch.Tensor, x: torch.Tensor, p: float, seed: int | torch.Tensor,
                cfg: dict | None = None) -> torch.Tensor:  # fmt: skip
    """ghᵀ @ (x ⊙ m) for gh [N, r] (x's dtype, contiguous), x [N, K]; returns [r, K] in fp32."""
    _check(x)
    n, k = x.shape
    r = gh.shape[1]
    cfg = dict(cfg or launch_config("grad", n, k))
    bn, bk, rows = cfg.pop("BN"), cfg.pop("BK"), cfg.pop("ROWS")  # rows per program (constexpr)
    splits = triton.cdiv(n, rows)
    ws = torch.empty(splits, r, k, device=x.device, dtype=torch.float32)
    _lora_a_grad[(triton.cdiv(k, bk), splits)](
        gh, x, ws, n, k, r, x.stride(0), seed, p, ROWS=rows, BN=bn, BK=bk, BR=_br(r),
        SEED_PTR=_is_ptr(seed), **cfg,
    )  # fmt: skip
    return ws[0] if splits == 1 else ws.sum(0)


def lora_x_grad_add(gx: torch.Tensor, gh: torch.Tensor, a: torch.Tensor, p: float,
                    seed: int | torch.Tensor, cfg: dict | None = None):  # fmt: skip
    """gx += m ⊙ (gh @ a), in place, for gx [N, K], gh [N, r] (contiguous), a [r, K]."""
    _check(gx)
    n, k = gx.shape
    r = gh.shape[1]
    cfg = dict(cfg or launch_config("xgrad", n, k))
    bm, bk = cfg.pop("BM"), cfg.pop("BK")
    grid = (triton.cdiv(n, bm), triton.cdiv(k, bk))
    _lora_x_grad_add[grid](
        gx, gh, a, n, k, r, gx.stride(0), a.stride(0), seed, p, BM=bm, BK=bk, BR=_br(r),
        SEED_PTR=_is_ptr(seed), **cfg,
    )  # fmt: skip
    return gx
