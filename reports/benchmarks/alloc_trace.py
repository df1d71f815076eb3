"""Where the caching allocator's reserved memory outgrows the allocated peak (lean + head on the
host, H200: 5.40 GiB allocated, 6.60-6.88 GiB reserved; BENCHMARKS.md, ninth round). Runs one
trial through the harness's own `run_trial` with a callback that records each training step's
peak allocated and reserved memory (peaks reset at each step's start), and from step
--history-from on the allocator's event history. At the end it writes the per-step peaks, the
segments as they stand after training, and the events that mapped new memory (segment_alloc /
segment_map: size, stream, Python frames), largest first. Needs CUDA. Written in the seventh
session, not yet run.

    python3 reports/benchmarks/alloc_trace.py --out $OUT/alloc.json engine=lean
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "reports" / "benchmarks")]
from profile_step import COMMON  # noqa: E402

GIB = 2**30


class StepPeaks(TrainerCallback):
    def __init__(self, history_from: int):
        self.history_from, self.steps, self.snapshot = history_from, [], None

    def on_step_begin(self, args, state, control, **kw):
        torch.cuda.reset_peak_memory_stats()
        if state.global_step == self.history_from:
            torch.cuda.memory._record_memory_history(max_entries=500_000, stacks="python")

    def on_step_end(self, args, state, control, **kw):
        self.steps.append({
            "step": state.global_step,
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
            "reserved_gib": torch.cuda.memory_reserved() / GIB,
        })  # fmt: skip

    def on_train_end(self, args, state, control, **kw):
        self.snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)


def _frames(event: dict, keep: int = 8) -> list[str]:
    return [f"{f['filename'].split('site-packages/')[-1]}:{f['line']} {f['name']}"
            for f in event.get("frames", []) if "torch/" not in f["filename"]][:keep]  # fmt: skip


def summarize(snapshot: dict) -> dict:
    segments = []
    for seg in snapshot["segments"]:
        free = [b["size"] for b in seg["blocks"] if b["state"] == "inactive"]
        segments.append({
            "stream": seg["stream"], "total_gib": seg["total_size"] / GIB,
            "allocated_gib": seg["allocated_size"] / GIB,
            "largest_free_gib": max(free, default=0) / GIB, "free_blocks": len(free),
        })  # fmt: skip
    growth = [e for trace in snapshot["device_traces"] for e in trace
              if e["action"] in ("segment_alloc", "segment_map")]  # fmt: skip
    growth.sort(key=lambda e: -e["size"])
    return {
        "segments": sorted(segments, key=lambda s: -s["total_gib"]),
        "growth_events": [
            {
                "action": e["action"],
                "gib": e["size"] / GIB,
                "stream": e["stream"],
                "frames": _frames(e),
            }
            for e in growth[:40]
        ],  # fmt: skip
        "growth_total_gib": sum(e["size"] for e in growth) / GIB,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variant", help="override string of the trial, e.g. 'engine=lean'")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--common", default=" ".join(COMMON))
    ap.add_argument("--history-from", type=int, default=3, help="first step with event history")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("alloc_trace.py needs CUDA")

    from hydra import compose, initialize_config_dir

    from harness import trial
    from harness.config import register_configs, to_trial_config

    register_configs()
    overrides = args.common.split() + args.variant.split()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = to_trial_config(compose(config_name="config", overrides=overrides))
    peaks, build = StepPeaks(args.history_from), trial.build_trainer

    def build_with_peaks(*a, **kw):
        trainer, meter = build(*a, **kw)
        trainer.add_callback(peaks)
        return trainer, meter

    trial.build_trainer = build_with_peaks
    out_dir = Path(tempfile.mkdtemp(prefix="alloc_trace_"))  # records are append-only
    rec = trial.run_trial(cfg, out_dir, overrides=overrides)
    out = {"variant": args.variant, "status": rec["status"], "error": rec.get("error"),
           "memory": rec.get("memory"), "steps": peaks.steps,
           **(summarize(peaks.snapshot) if peaks.snapshot else {})}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1))
    for s in peaks.steps:
        print(f"step {s['step']:3d} peak alloc {s['peak_allocated_gib']:.2f} "
              f"peak reserved {s['peak_reserved_gib']:.2f} GiB")  # fmt: skip
    for e in out.get("growth_events", [])[:10]:
        where = " <- ".join(e["frames"][:3])
        print(f"{e['action']} {e['gib']:.3f} GiB stream {e['stream']}: {where}")


if __name__ == "__main__":
    main()
