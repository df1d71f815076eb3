"""Does `y = branch; y.addmm_(x, W.t())` round base + branch once on this GPU? For each shape, the
share of bf16 outputs equal to the exactly rounded sum (float64 reference), and the share equal to
the rounded base (the branch lost), with cuBLAS's bf16 reduced-precision reductions allowed (the
PyTorch default) and not. The branch is ~0.2 bf16 steps, as a fresh adapter's update.
    python3 reports/benchmarks/rounding_probe.py --out rounding.json
"""

import argparse
import json

import torch

SHAPES = [(64, 256, 512), (8192, 4096, 4096), (8192, 4096, 14336), (8192, 14336, 4096)]


def probe(n: int, k: int, m: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, k, device="cuda", generator=g).bfloat16()
    w = (torch.randn(m, k, device="cuda", generator=g) / k**0.5).bfloat16()
    exact_base = x.double() @ w.double().t()
    branch = (exact_base.abs() * 2**-8 * 0.2 * torch.randn_like(exact_base)).bfloat16()
    exact = (exact_base + branch.double()).bfloat16()
    out = {}
    for reduced in (True, False):
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = reduced
        y = branch.clone()
        y.addmm_(x, w.t())
        base = x @ w.t()
        out[f"reduced_{reduced}"] = {
            "once_equal_exact": float((y == exact).float().mean()),
            "once_equal_rounded_base": float((y == base).float().mean()),
            "twice_equal_exact": float(((base + branch) == exact).float().mean()),
            "base_equal_exact_base": float((base == exact_base.bfloat16()).float().mean()),
        }
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    return {"shape": [n, k, m], **out}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    rows = [probe(*s) for s in SHAPES]
    json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
              open(ap.parse_args().out, "w"), indent=1)  # fmt: skip
    print(json.dumps(rows, indent=1))
