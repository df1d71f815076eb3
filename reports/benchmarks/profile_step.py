"""Where a training step's GPU time goes, per engine setting: runs the harness's own trial
(`run_trial`, one sweep pool) for each variant and profiles two steps with torch.profiler,
grouping kernel time into GEMM / attention / 4-bit dequant / LoRA dropout (ours) / Liger /
elementwise / reduction / copy / other. Also times pinned host<->device copies (what offloading
would pay). Used to choose levers; the benchmark itself is sweeps/speed.yaml.

    python reports/benchmarks/profile_step.py --out $OUT/profile.json \
        "engine=plain" "engine=max train.lora_kernel=peft" ...
"""

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
COMMON = ["eval.tasks=[]", "data.max_seq_len=2048", "data.packing=true",
          "data.packing_strategy=wrapped", "data.num_train=10000", "train.save_adapter=false",
          "train.device=cuda", "model=llama3-8b", "train.batch_size=4", "train.max_steps=8",
          "train.timing_warmup_steps=3"]  # fmt: skip
GROUPS = [
    ("gemm", r"gemm|sm90_|cutlass|cublas|ampere_|xmma|nvjet|splitK"),
    ("attention", r"flash|fmha|attention|efficient"),
    ("dequant", r"kDequantize|dequantize|kgetItemsPerThread"),
    ("lora_triton", r"_lora_"),
    ("liger", r"liger|_rms_norm|_swiglu|_rope|_triton_rope|silu"),
    ("elementwise", r"elementwise|vectorized|unrolled|CatArrayBatched|where|bernoulli|fill"),
    ("reduce", r"reduce|norm|softmax|cross_entropy|nll|log_softmax"),
    ("copy", r"copy|memcpy|Memcpy|transpose"),
]


def group(name: str) -> str:
    for label, pattern in GROUPS:
        if re.search(pattern, name, re.IGNORECASE):
            return label
    return "other"


class Profile(TrainerCallback):
    def __init__(self, start: int, steps: int, stacks: str | None = None):
        self.start, self.steps, self.prof, self.t0, self.wall = start, steps, None, 0.0, 0.0
        self.stacks = stacks

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.start:
            torch.cuda.synchronize()
            acts = [torch.profiler.ProfilerActivity.CUDA]
            if self.stacks:  # CPU ops (+ Python frames for "stacks"): where the GPU waits
                acts.append(torch.profiler.ProfilerActivity.CPU)
            self.prof = torch.profiler.profile(activities=acts, with_stack=self.stacks == "stacks")
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self.prof is not None and state.global_step == self.start + self.steps:
            torch.cuda.synchronize()
            self.wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)

    def summary(self) -> dict:
        by_group, by_kernel = defaultdict(float), defaultdict(lambda: [0.0, 0])
        for evt in self.prof.key_averages():
            t = evt.self_device_time_total / 1e3  # ms
            if t <= 0:
                continue
            by_group[group(evt.key)] += t / self.steps
            by_kernel[evt.key][0] += t / self.steps
            by_kernel[evt.key][1] += evt.count // self.steps
        busy = sum(by_group.values())
        top = sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:25]
        out = {
            "wall_ms_per_step": 1e3 * self.wall / self.steps,
            "kernel_ms_per_step": busy,
            "groups_ms_per_step": dict(sorted(by_group.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": k[:140], "ms": v[0], "calls": v[1]} for k, v in top],
        }
        if self.stacks:
            out["idle"] = idle_attribution(self.prof, self.steps)
        return out


def _short(name: str) -> str:
    return re.sub(r"<.*", "", name.replace("void ", ""))[:60]


def gap_neighbours(events: list, gaps: list, steps: int, top: int = 30) -> list[dict]:
    """Idle gaps (> 50 us) grouped by the kernel that ended before and the one that started after,
    with the CPU op or runtime call that was running when the gap began (a sync shows up as
    cudaStreamSynchronize / aten::_local_scalar_dense): which phase of a step the GPU waits in."""
    import bisect

    kern = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                  if e.get("cat") == "kernel" and "dur" in e)  # fmt: skip
    ends = sorted((b, n) for _, b, n in kern)
    end_ts = [b for b, _ in ends]
    starts = [a for a, _, _ in kern]
    cpu = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                 if e.get("cat") in ("cpu_op", "cuda_runtime") and "dur" in e)  # fmt: skip
    rows: dict = defaultdict(lambda: [0.0, 0])
    for a, b in gaps:
        if b - a < 50:
            continue
        i, j = bisect.bisect_right(end_ts, a + 1e-3) - 1, bisect.bisect_left(starts, b - 1e-3)
        before = _short(ends[i][1]) if i >= 0 else "-"
        after = _short(kern[j][2]) if j < len(kern) else "-"
        running = [n for s, e, n in cpu if s <= a <= e]  # outermost first (sorted by start)
        key = (before, after, " > ".join(running[:1] + running[-1:]) if running else "-")
        rows[key][0] += (b - a) / 1e3 / steps
        rows[key][1] += 1
    out = sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"before": k[0], "after": k[1], "cpu": k[2][:120], "ms_per_step": round(v[0], 3),
             "count": v[1]} for k, v in out]  # fmt: skip


def idle_attribution(prof, steps: int, top: int = 40) -> dict:
    """GPU idle time (no kernel, copy or memset on any stream) inside the profiled window, and
    the CPU frames (Python functions, ops) that were running while the GPU sat idle: each frame
    is charged the idle time that overlaps it (inclusive; nested frames each get it)."""
    import bisect
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name))["traceEvents"]
    busy = ("kernel", "gpu_memcpy", "gpu_memset")
    gpu = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                 if e.get("cat") in busy and "dur" in e)  # fmt: skip
    merged: list[list[float]] = []
    for a, b in gpu:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    gaps = [(merged[i][1], merged[i + 1][0]) for i in range(len(merged) - 1)]
    starts, cum = [g[0] for g in gaps], [0.0]
    for a, b in gaps:
        cum.append(cum[-1] + b - a)

    def idle_before(t: float) -> float:  # idle time in (first kernel, t]
        i = bisect.bisect_right(starts, t)
        if i == 0:
            return 0.0
        a, b = gaps[i - 1]
        return cum[i - 1] + min(t, b) - a

    charged: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for e in events:
        if e.get("cat") not in ("python_function", "cpu_op", "cuda_runtime") or "dur" not in e:
            continue
        idle = idle_before(e["ts"] + e["dur"]) - idle_before(e["ts"])
        row = charged[e["name"][:160]]
        row[0] += idle / 1e3 / steps
        row[1] += e["dur"] / 1e3 / steps
        row[2] += 1
    big = sorted(((b - a) for a, b in gaps), reverse=True)
    neighbours = gap_neighbours(events, gaps, steps)
    rows = sorted(charged.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "idle_ms_per_step": cum[-1] / 1e3 / steps,
        "gaps_over_1ms_per_step": sum(g > 1e3 for g in big) / steps,
        "largest_gaps_ms": [round(g / 1e3, 2) for g in big[:12]],
        "gaps_by_neighbours": neighbours,
        "frames": [
            {"name": k, "idle_ms": round(v[0], 2), "cpu_ms": round(v[1], 2), "calls": v[2] // steps}
            for k, v in rows
        ],  # fmt: skip
    }


def host_copy_gbps() -> dict:
    n = 1 << 30
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    out = {}
    for name, (dst, src) in {"h2d": (dev, host), "d2h": (host, dev)}.items():
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        out[f"{name}_gb_per_s"] = 5 * n / (time.perf_counter() - t0) / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+", help="override strings, one per variant")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--common", default=" ".join(COMMON))
    ap.add_argument("--profile-step", type=int, default=5)
    ap.add_argument("--profile-steps", type=int, default=2, help="steps profiled from there")
    ap.add_argument(
        "--stacks",
        action="store_const",
        const="stacks",
        help="CPU frames (Python tracer) behind GPU idle time",
    )
    ap.add_argument(
        "--gaps",
        dest="stacks",
        action="store_const",
        const="gaps",
        help="GPU idle gaps by neighbouring kernels and CPU op (no Python tracer)",
    )
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    from harness import trial
    from harness.config import register_configs, to_trial_config
    from harness.models import BasePool

    register_configs()
    result = {"host_copy": host_copy_gbps(), "device": torch.cuda.get_device_name(), "runs": []}
    print(json.dumps(result["host_copy"]), flush=True)
    pool, build = BasePool(), trial.build_trainer
    for i, variant in enumerate(args.variants):
        overrides = args.common.split() + variant.split()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = to_trial_config(compose(config_name="config", overrides=overrides))
        prof = Profile(args.profile_step, args.profile_steps, args.stacks)

        def build_with_profile(*a, **kw):
            trainer, meter = build(*a, **kw)
            trainer.add_callback(prof)  # noqa: B023
            return trainer, meter

        trial.build_trainer = build_with_profile
        rec = trial.run_trial(cfg, Path(f"/tmp/prof/{i}"), overrides=overrides, pool=pool)
        trial.build_trainer = build
        tp = rec.get("throughput") or {}
        run = {
            "variant": variant, "status": rec["status"], "error": rec.get("error"),
            "tokens_per_s": tp.get("padded_tokens_per_s"), "step_s": tp.get("step_time_median_s"),
            "peak_reserved_gib": rec.get("peak_vram_reserved_gib"),
            "peak_allocated_gib": rec.get("peak_vram_allocated_gib"),
            "loss": [round(p["loss"], 4) for p in (rec.get("loss") or {}).get("curve", [])],
            "levers": rec.get("levers"),
            "memory": rec.get("memory"),
            "profile": prof.summary() if prof.prof is not None and prof.wall else None,
        }  # fmt: skip
        result["runs"].append(run)
        args.out.write_text(json.dumps(result, indent=1))
        p = run["profile"] or {}
        print(f"{variant:60s} {run['status']} {run['tokens_per_s'] or 0:8.0f} tok/s "
              f"{run['peak_reserved_gib'] or 0:6.2f} GiB  wall {p.get('wall_ms_per_step', 0):.0f} "
              f"ms, kernels {p.get('kernel_ms_per_step', 0):.0f} ms  "
              + " ".join(f"{k}={v:.0f}" for k, v in (p.get("groups_ms_per_step") or {}).items()),
              flush=True)  # fmt: skip
        idle = p.get("idle")
        if idle:
            print(f"  GPU idle {idle['idle_ms_per_step']:.0f} ms/step, largest gaps "
                  f"{idle['largest_gaps_ms']}", flush=True)  # fmt: skip
            for g in idle["gaps_by_neighbours"][:20]:
                print(f"    gap {g['ms_per_step']:7.2f} ms/step {g['count']:4d}x  {g['before']} -> "
                      f"{g['after']}  [{g['cpu']}]", flush=True)  # fmt: skip
            for fr in idle["frames"][: 25 if args.stacks == "stacks" else 0]:
                print(f"    {fr['idle_ms']:7.1f} idle {fr['cpu_ms']:8.1f} cpu {fr['calls']:6d}x "
                      f"{fr['name'][:110]}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
