"""What one optimizer step costs at the llama3-8b LoRA shapes (r=16, all linear layers: 448
fp32 tensors, 42M parameters), the per-step work outside forward and backward: bitsandbytes'
paged AdamW 8-bit over the 448 tensors as HF's Trainer builds it, the same over one flat tensor
holding them all (train.flat_optimizer), and grad-norm clipping. Synchronized wall time per
step, median of 20 after 5 warmup steps; the GPU is otherwise idle: the time a step blocks it.

    python reports/benchmarks/optim_step.py --out $OUT/optim_step.json
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HIDDEN, KV, INTER, LAYERS, R = 4096, 1024, 14336, 32, 16


def lora_shapes() -> list[tuple[int, int]]:
    layer = [(HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, KV), (HIDDEN, HIDDEN), (HIDDEN, INTER),
             (HIDDEN, INTER), (INTER, HIDDEN)]  # (in, out): q k v o gate up down  # fmt: skip
    return [s for i, o in layer * LAYERS for s in ((R, i), (o, R))]


def per_step(step, reps: int = 20) -> float:
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    import bitsandbytes as bnb

    from harness.flat_optim import flatten_optimizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, device="cuda") * 0.01) for s in lora_shapes()]
    for q in params:
        q.grad = torch.randn_like(q) * 1e-3
    out = {"device": torch.cuda.get_device_name(), "tensors": len(params),
           "parameters": sum(q.numel() for q in params), "ms_per_step": {}}  # fmt: skip
    res = out["ms_per_step"]
    for name, cls in [("paged_adamw_8bit", bnb.optim.PagedAdamW8bit),
                      ("adamw_8bit", bnb.optim.AdamW8bit)]:  # fmt: skip
        opt = cls(params, lr=1e-4, weight_decay=0.0)
        res[name] = per_step(opt.step)
        flat_params = [torch.nn.Parameter(q.detach().clone()) for q in params]
        for q, f in zip(params, flat_params, strict=True):
            f.grad = q.grad.clone()
        flat = cls(flat_params, lr=1e-4, weight_decay=0.0)
        flatten_optimizer(flat)  # the grads stay set: every step concatenates them again
        res[name + "+flat"] = per_step(flat.step)
    fused = torch.optim.AdamW(params, lr=1e-4, fused=True)
    res["adamw_torch_fused"] = per_step(fused.step)
    res["clip_grad_norm"] = per_step(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0))
    res["zero_grad+regrad"] = per_step(lambda: [q.grad.zero_() for q in params])
    print(json.dumps(out, indent=1))
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
