"""Measurements with honest boundaries: per-phase peak memory, synchronized step times, environment.

CUDA: peaks are reset at each phase start and read at its end (allocated = tensors, reserved =
the caching allocator's footprint, what decides an OOM). CPU: there is no VRAM; we sample the
process RSS and report it as `peak_rss_gib`, never as VRAM.
"""

import contextlib
import gc
import platform
import socket
import statistics
import subprocess
import threading
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import psutil
import torch

GIB = 1024**3


class PhaseMemory:
    """Peak memory of named phases (load, train, eval) on one device."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.kind = "cuda" if device.startswith("cuda") else "cpu_rss"
        self.phases: dict[str, dict[str, float]] = {}
        self.failed_phase: str | None = None
        self._rss_peak = 0
        self._stop = threading.Event()

    @contextmanager
    def phase(self, name: str):
        """Measure the peak of everything inside the block; the value is kept even if it raises."""
        sampler = self._start()
        try:
            yield
        except BaseException:
            self.failed_phase = name  # the phase an OOM (or any error) escaped from
            raise
        finally:
            self.phases[name] = self._read(sampler)

    def _start(self) -> threading.Thread | None:
        if self.kind == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start_mem = (torch.cuda.memory_allocated(), torch.cuda.memory_reserved())
            return None
        proc, self._rss_peak = psutil.Process(), psutil.Process().memory_info().rss
        self._stop.clear()

        def sample() -> None:  # 20 ms: well under one CPU training step (~1 s)
            while not self._stop.wait(0.02):
                self._rss_peak = max(self._rss_peak, proc.memory_info().rss)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        return thread

    def _read(self, sampler: threading.Thread | None) -> dict[str, float]:
        if self.kind == "cuda":
            torch.cuda.synchronize()
            return {
                "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
                "start_allocated_gib": self._start_mem[0] / GIB,  # held when the phase began
                "start_reserved_gib": self._start_mem[1] / GIB,
            }
        self._stop.set()
        sampler.join()
        rss = max(self._rss_peak, psutil.Process().memory_info().rss)
        return {"peak_rss_gib": rss / GIB}


class GcPauses:
    """Seconds Python's cyclic garbage collector held the process (gc.callbacks), and how many
    full (generation 2) collections ran, while installed (a `with` block)."""

    def __init__(self) -> None:
        self.pause_s, self.full_collections, self._t = 0.0, 0, 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
            return
        self.pause_s += time.perf_counter() - self._t
        self.full_collections += info["generation"] == 2

    def __enter__(self) -> "GcPauses":
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)


@contextlib.contextmanager
def frozen_heap(on: bool):
    """engine.gc_freeze: collect once, then move every live object to the collector's permanent
    generation for the block (gc.freeze), and back after it (gc.unfreeze). Python's full
    collections in training then skip the model's modules, the data and the libraries' objects,
    which no step frees. The fast preset's full collections held 0.42-0.50 s of its timed steps
    on the H200 (BENCHMARKS.md). Training itself is untouched."""
    if not on:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def sync(device: str) -> None:
    """Wait for queued GPU work before reading a clock."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(
    step_times_s: list[float], loss_tokens: list[int], padded_tokens: list[int], samples: list[int],
    *, warmup: int, gc_pause_s: list[float] | None = None, profiled: int = 0,
) -> dict[str, float | int | None]:  # fmt: skip
    """Rates over the timed steps (after `warmup` and then `profiled` steps), from per-step times
    and counts. At least the last step is timed, even where it was a warm-up or profiled one.

    loss_tokens counts only tokens that carry loss (response tokens); padded_tokens is the whole
    padded batch, so the two together show what padding costs.
    """
    skip = min(warmup + profiled, max(len(step_times_s) - 1, 0))
    timed = slice(skip, None)
    times = step_times_s[timed]
    if not times:
        return {"timed_steps": 0, "warmup_steps": warmup}
    total = sum(times)
    quartiles = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    excluded = {"profiled_steps": skip - min(warmup, skip)} if profiled else {}
    return {
        "loss_tokens_per_s": sum(loss_tokens[timed]) / total,
        "padded_tokens_per_s": sum(padded_tokens[timed]) / total,
        "samples_per_s": sum(samples[timed]) / total,
        "step_time_median_s": statistics.median(times),
        "step_time_iqr_s": quartiles[2] - quartiles[0],
        "timed_steps": len(times),
        "warmup_steps": min(warmup, skip),
        **excluded,  # profiled steps left out of the rates (train.profile_steps)
        "step_times_s": [round(t, 4) for t in step_times_s],  # every step, warm-up included
        # the garbage collector's pauses inside the timed steps (part of their time)
        "gc_pause_s": sum(gc_pause_s[timed]) if gc_pause_s else 0.0,
    }


def device_info(device: str) -> dict:
    """Device type, name and memory."""
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "total_memory_gib": props.total_memory / GIB}
    return {
        "type": "cpu",
        "name": platform.processor() or platform.machine(),
        "cores": psutil.cpu_count(logical=True),
        "total_memory_gib": psutil.virtual_memory().total / GIB,
    }


def package_version(pkg: str) -> str | None:
    """The installed version of `pkg`, or None where it is not installed."""
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Versions, git commit and dirty flag of the harness checkout, host."""
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> subprocess.CompletedProcess:
        cmd = ["git", "-C", str(repo), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "HEAD").stdout.strip() or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    pkgs = ("torch", "transformers", "peft", "bitsandbytes", "trl", "lm_eval", "accelerate")
    return {
        "python": platform.python_version(),
        **{p: package_version(p) for p in pkgs},
        "cuda": torch.version.cuda,
        "git_commit": commit,
        "git_dirty": dirty,
        "hostname": socket.gethostname(),
    }


class Stopwatch:
    """Wall-clock seconds of named phases."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.s: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.s[name] = time.perf_counter() - start

    def total(self) -> dict[str, float]:
        return {**self.s, "total": time.perf_counter() - self.t0}
