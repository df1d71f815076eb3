"""Launch-config sweep for the LoRA dropout kernels (harness/lora_triton.py) on the GPU at hand:
each kernel at the llama3-8b batch-4 shapes (N = 4 x 2048 tokens, K = 4096 and 14336, r = 16,
p = 0.05, bf16), every config timed with CUDA events (median of 20 after warmup), its output
checked against the default config's, and the bytes it must move turned into GB/s. The picks
go into `launch_config`; the JSON is the evidence.

    python reports/benchmarks/tune_lora_kernels.py --out $OUT/tune.json
"""

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from harness import lora_triton as lt  # noqa: E402


def timed(fn, reps: int = 20, warm: int = 3) -> float:
    """Median ms of `fn` over `reps` calls (CUDA events, launch included), after `warm` calls."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def configs(kernel: str):
    warps_stages = [(4, 3), (8, 4)]  # each config is a Triton compile: keep the grid small
    if kernel == "fwd":
        for bm, bk, split, (w, s) in itertools.product([16, 32, 64], [64, 128], [1, 2, 4, 8],
                                                       warps_stages):  # fmt: skip
            yield {"BM": bm, "BK": bk, "SPLIT": split, "num_warps": w, "num_stages": s}
    elif kernel == "grad":
        for bn, bk, rows, (w, s) in itertools.product([32, 64], [64, 128], [256, 512, 1024],
                                                      warps_stages):  # fmt: skip
            yield {"BN": bn, "BK": bk, "ROWS": rows, "num_warps": w, "num_stages": s}
    else:
        for bm, bk, (w, s) in itertools.product([32, 64, 128], [64, 128], warps_stages):
            yield {"BM": bm, "BK": bk, "num_warps": w, "num_stages": s}


def tune_shape(n: int, k: int, r: int = 16, p: float = 0.05, seed: int = 1234) -> dict:
    c = 2.0 / (1 - p)
    x = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    a = torch.randn(r, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    gh = torch.randn(n, r, device="cuda", dtype=torch.bfloat16)
    gx0 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    gx = gx0.clone()

    def xgrad(cfg):
        gx.copy_(gx0)  # in place: one application from gx0 each time (the copy is timed too)
        return lt.lora_x_grad_add(gx, gh, a, p, seed, cfg)

    runs = {
        "fwd": (lambda cfg: lt.lora_a_forward(x, a, p, seed, c, cfg), 2 * n * k),
        "grad": (lambda cfg: lt.lora_a_grad(gh, x, p, seed, cfg), 2 * n * k),
        "xgrad": (xgrad, 4 * n * k + 4 * n * k),  # + the timed restore copy
    }
    shape = {}
    for kernel, (fn, nbytes) in runs.items():
        default = lt.launch_config(kernel, n, k)
        ref = fn(default).float().clone()
        rows = []
        for cfg in configs(kernel):
            try:
                err = (fn(cfg).float() - ref).abs().max().item()
                ms = timed(lambda cfg=cfg, fn=fn: fn(cfg))
            except Exception as exc:  # a config the compiler rejects (shared memory, ...)
                rows.append({"cfg": cfg, "error": str(exc)[:120]})
                continue
            rows.append({"cfg": cfg, "ms": ms, "gb_per_s": nbytes / ms / 1e6,
                         "max_abs_diff": err})  # fmt: skip
        if not any(row["cfg"] == default for row in rows):
            ms = timed(lambda fn=fn, default=default: fn(default))
            rows.append({"cfg": default, "ms": ms, "gb_per_s": nbytes / ms / 1e6,
                         "max_abs_diff": 0.0})  # fmt: skip
        ok = sorted((row for row in rows if "ms" in row), key=lambda row: row["ms"])
        d_ms = next(row["ms"] for row in rows if row["cfg"] == default)
        shape[kernel] = {"default": default, "default_ms": d_ms, "best": ok[:5],
                         "n_configs": len(rows)}  # fmt: skip
        print(f"K={k} {kernel}: default {d_ms:.3f} ms, best {ok[0]['ms']:.3f} ms "
              f"({ok[0]['gb_per_s']:.0f} GB/s) {ok[0]['cfg']} diff {ok[0]['max_abs_diff']:.2e}",
              flush=True)  # fmt: skip
    return shape


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--ks", default="4096,14336")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = {"device": torch.cuda.get_device_name(), "n": args.n, "r": 16, "p": 0.05, "shapes": {}}
    for k in map(int, args.ks.split(",")):
        out["shapes"][str(k)] = tune_shape(args.n, k)
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
