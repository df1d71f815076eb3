"""Time TRL's chunked LM-head loss (the fused head both the plain stack and the fast presets
train through) per number of loss tokens N, forward + backward, on llama3-8b's head shape.
Twelfth round: the sweeps' slow steps are the batches with fewer loss tokens (N < ~1024 after
the shift); this isolates the head's share of that.

    python3 reports/benchmarks/loss_head_probe.py --out $OUT/loss_head_probe.json
"""

import argparse
import json
import statistics
import time

import torch
from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE, _ChunkedLogProbFunction

NS = (800, 825, 867, 924, 1009, 1016, 1021, 1024, 1025, 1032, 1068, 1089, 1536, 2048)


def time_n(n: int, weight: torch.Tensor, reps: int = 7) -> dict:
    hidden = torch.randn(n, weight.shape[1], device="cuda", dtype=torch.bfloat16)
    hidden.requires_grad_(True)
    targets = torch.randint(0, weight.shape[0], (n,), device="cuda")
    times = {"fwd_ms": [], "fwd_bwd_ms": []}
    for rep in range(reps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = _ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0,
                                                _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                                                ("log_probs", "entropy", "is_top1"))  # fmt: skip
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        (-out[0].sum() / n).backward()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        hidden.grad = None
        if rep >= 2:  # the first two: compile and warm-up
            times["fwd_ms"].append(1e3 * (t1 - t0))
            times["fwd_bwd_ms"].append(1e3 * (t2 - t0))
    return {"n": n, **{k: round(statistics.median(v), 3) for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    weight = torch.randn(128256, 4096, device="cuda", dtype=torch.bfloat16) * 0.02  # frozen head
    rows = []
    for n in NS:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        row = time_n(n, weight)
        row["all_reps_ms"] = round(1e3 * (time.perf_counter() - t0), 1)  # the first two too
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "chunk_size": _CHUNKED_LOGPROB_CHUNK_SIZE, "rows": rows}  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
