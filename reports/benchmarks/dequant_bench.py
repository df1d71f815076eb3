"""bitsandbytes' dequantize_4bit vs harness/dequant_triton.py on the GPU, at llama3-8b's Linear
shapes (the 7 adapted Linear layers of a block): bit-for-bit agreement and time per call
(CUDA events, median of 50 after 10 warm-up calls: tune_lora_kernels.timed), NF4 and FP4,
double quant on.

    python reports/benchmarks/dequant_bench.py --out $OUT/dequant.json
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHAPES = {"q/o": (4096, 4096), "k/v": (1024, 4096), "gate/up": (14336, 4096), "down": (4096, 14336)}
PER_BLOCK = {"q/o": 2, "k/v": 2, "gate/up": 2, "down": 1}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import bitsandbytes.functional as F
    from tune_lora_kernels import timed

    from harness.dequant_triton import dequantize_4bit

    rows = []
    for qt in ("nf4", "fp4"):
        block_ms = {"bnb": 0.0, "triton": 0.0}
        for name, shape in SHAPES.items():
            w = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 0.02
            q, st = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type=qt)
            ref, got = F.dequantize_4bit(q, st), dequantize_4bit(q, st)
            exact = bool(torch.equal(ref, got))
            t_bnb = timed(lambda q=q, st=st: F.dequantize_4bit(q, st), 50, 10)
            t_tri = timed(lambda q=q, st=st: dequantize_4bit(q, st), 50, 10)
            moved = q.numel() + 2 * w.numel() + st.absmax.numel()  # bytes read + written
            row = {
                "quant": qt, "layer": name, "shape": list(shape), "bit_exact": exact,
                "bnb_ms": round(t_bnb, 4), "triton_ms": round(t_tri, 4),
                "bnb_tb_per_s": round(moved / t_bnb / 1e9, 2),
                "triton_tb_per_s": round(moved / t_tri / 1e9, 2),
            }  # fmt: skip
            rows.append(row)
            block_ms["bnb"] += PER_BLOCK[name] * t_bnb
            block_ms["triton"] += PER_BLOCK[name] * t_tri
            print(json.dumps(row), flush=True)
        rows.append({"quant": qt, "layer": "one llama3-8b block (7 Linear)", **{
            f"{k}_ms": round(v, 4) for k, v in block_ms.items()}})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
