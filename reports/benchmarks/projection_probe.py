"""What tests/test_residual.py's small-update test sees on CUDA with the fast kernels: the norm of
the update a sub-resolution adapter change on q, k, v, gate and up makes in the stream after layer
one (plain stack), and the relative error of the fp32 stream alone and of the stream plus
train.projection_dtype=fp32 against it, over a few seeds.
    python3 reports/benchmarks/projection_probe.py --out $OUT/projection_probe.json
"""

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import tiny_4bit  # noqa: E402
from test_residual import _apply, _update  # noqa: E402

from harness import residual  # noqa: E402

FAST = {"lora_kernel": "fused", "kernels": "liger", "dequant_kernel": "triton"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for seed in range(4):
        torch.manual_seed(seed)
        model = tiny_4bit(device="cuda")
        ids = torch.randint(0, 1000, (2, 16), device="cuda")
        plain = _update(model, ids, on=residual.PROJECTIONS)
        _apply(model, frozen_dtype="bf16", residual_dtype="fp32", **FAST)
        stream = _update(model, ids, on=residual.PROJECTIONS)
        _apply(model, frozen_dtype="bf16", residual_dtype="fp32", projection_dtype="fp32", **FAST)
        wide = _update(model, ids, on=residual.PROJECTIONS)
        norm = float(plain.norm())
        rows.append({"seed": seed, "plain_norm": norm,
                     "stream_only_rel_err": float((stream - plain).norm()) / norm,
                     "projections_rel_err": float((wide - plain).norm()) / norm})  # fmt: skip
        print(rows[-1])
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
