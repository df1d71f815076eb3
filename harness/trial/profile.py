"""Where a training step's time goes: torch.profiler over a few steps, summarized for the record.

`train.profile_steps=N` profiles the N steps right after the timing warm-up (left out of
tokens/s) into the record's `profile` and the chrome trace `profile_trace.json.gz` beside it.
Figures are per profiled step, averaged over the window: the first profiled step's start to the
last one's end, the trainer's work between steps included. A GPU far from busy while the host
issues thousands of launches a step is bound by the host's launch rate, not by the GPU. On a CPU
trial the CUDA fields are None (not measured, never 0) and `top_kernels` lists CPU ops by self
time.
"""

import gzip
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import TrainerCallback

from harness.trial.measure import sync

TRACE_NAME = "profile_trace.json.gz"
DEVICE_WORK = ("kernel", "gpu_memcpy", "gpu_memset")  # trace categories that occupy the GPU
LAUNCH_PREFIXES = ("cudaLaunch", "cuLaunch")  # cudaLaunchKernel(ExC), cuLaunchKernel(Ex), ...
GRAPH_LAUNCHES = ("cudaGraphLaunch", "cuGraphLaunch")
TOP, NAME_CHARS = 8, 80  # top_kernels: how many, and their names cut to this length
CUDA_FIELDS = ("gpu_busy_ms_per_step", "gpu_busy_fraction", "kernel_launches_per_step",
               "cuda_runtime_launch_calls_per_step", "graph_launches_per_step")  # fmt: skip


class ProfileWindow(TrainerCallback):
    """torch.profiler over training steps `first` .. `first + steps - 1` (0-based); inert with
    steps=0. As a context manager around `trainer.train()` it stops a window that training left
    open (an early stop, an exception), so no profiler outlives its trial."""

    def __init__(self, device: str, *, first: int, steps: int) -> None:
        self.device, self.first, self.steps = device, first, steps
        self.done, self.wall_s = 0, 0.0  # steps profiled, and their wall time
        self._step, self._prof, self._open, self._t0 = 0, None, False, 0.0

    def on_step_begin(self, args, state, control, **kw):
        if self.steps and self._step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.startswith("cuda"):
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._prof = torch.profiler.profile(activities=activities)
            self._prof.start()
            self._open, self._t0 = True, time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self._step += 1
        if self._open:
            self.done += 1
            if self.done == self.steps:
                self._stop()

    def _stop(self, *, failed: bool = False) -> None:
        if not failed:  # after a CUDA error a sync would only raise it again
            sync(self.device)  # the window's queued GPU work belongs to it
        self.wall_s = time.perf_counter() - self._t0
        self._prof.stop()
        self._open = False

    def __enter__(self) -> "ProfileWindow":
        return self

    def __exit__(self, kind, *exc) -> None:
        if self._open:
            self._stop(failed=kind is not None)

    def summary(self, out_dir: Path) -> dict | None:
        """Write the trace into `out_dir` and return the record's `profile`; None when no step
        was profiled."""
        if not self.done:
            return None
        out_dir.mkdir(parents=True, exist_ok=True)
        self._prof.export_chrome_trace(str(out_dir / TRACE_NAME))  # gzipped: the name ends .gz
        self._prof = None  # the events can be large: free them once written
        with gzip.open(out_dir / TRACE_NAME, "rt") as f:
            events = json.load(f)["traceEvents"]
        cuda = self.device.startswith("cuda")
        found = summarize(events, steps=self.done, wall_s=self.wall_s, cuda=cuda)
        return {"first_step": self.first + 1, "steps": self.done, **found, "trace": TRACE_NAME}


def summarize(events: list[dict], *, steps: int, wall_s: float, cuda: bool) -> dict:
    """Per-step figures of a chrome trace's events (times in microseconds, as torch writes them)."""
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    top_level, cpu_self = cpu_ops(e for e in spans if e.get("cat") == "cpu_op")
    wall_ms, per = 1e3 * wall_s / steps, lambda n: round(n / steps, 1)
    out = {"wall_ms_per_step": round(wall_ms, 3), **dict.fromkeys(CUDA_FIELDS),
           "cpu_ops_per_step": per(top_level)}  # fmt: skip
    if not cuda:
        return {**out, "top_kernels": _top(cpu_self, steps)}
    kernels = defaultdict(lambda: [0, 0.0])
    for e in (e for e in spans if e.get("cat") == "kernel"):
        kernels[e["name"]][0] += 1
        kernels[e["name"]][1] += e["dur"]
    work = [(e["ts"], e["ts"] + e["dur"]) for e in spans if e.get("cat") in DEVICE_WORK]
    busy_ms = busy_us(work) / 1e3 / steps
    calls = [e["name"] for e in spans if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    out.update(
        gpu_busy_ms_per_step=round(busy_ms, 3),
        gpu_busy_fraction=round(busy_ms / wall_ms, 4),
        kernel_launches_per_step=per(sum(n for n, _ in kernels.values())),
        cuda_runtime_launch_calls_per_step=per(sum(c.startswith(LAUNCH_PREFIXES) for c in calls)),
        graph_launches_per_step=per(sum(c in GRAPH_LAUNCHES for c in calls)),
    )
    return {**out, "top_kernels": _top(kernels, steps)}


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: overlapping work counts once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def cpu_ops(ops) -> tuple[int, dict[str, list]]:
    """(aten ops not nested in another aten op, {name: [calls, self µs]}) of `cpu_op` spans,
    nested per thread by time: a span inside an open one is its child, and a parent's self time
    is its duration less its children's."""
    threads = defaultdict(list)
    for e in ops:
        threads[(e.get("pid"), e.get("tid"))].append(e)
    top_level, table = 0, defaultdict(lambda: [0, 0.0])
    for spans in threads.values():
        stack: list[tuple[float, str]] = []  # open spans: (end, name)
        for e in sorted(spans, key=lambda e: (e["ts"], -e["dur"])):
            while stack and stack[-1][0] <= e["ts"]:
                stack.pop()
            name = e["name"]
            aten = name.startswith("aten::")
            top_level += aten and not any(n.startswith("aten::") for _, n in stack)
            table[name][0] += 1
            table[name][1] += e["dur"]
            if stack:
                table[stack[-1][1]][1] -= e["dur"]
            stack.append((e["ts"] + e["dur"], name))
    return top_level, table


def _top(table: dict[str, list], steps: int) -> list[dict]:
    """The TOP names by time: {name (cut to NAME_CHARS), calls_per_step, ms_per_step}."""
    ranked = sorted(table.items(), key=lambda kv: -kv[1][1])[:TOP]
    return [
        {"name": name[:NAME_CHARS], "calls_per_step": round(n / steps, 1),
         "ms_per_step": round(us / 1e3 / steps, 3)}
        for name, (n, us) in ranked
    ]  # fmt: skip
