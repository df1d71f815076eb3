"""The quantized base a sweep process hands from one trial to the next.

Loading and quantizing a base costs more than a short trial (llama3-8b: ~40 s). Trials of one
process with the same model, quant, device and engine swap adapters on one base instead. The
engine is part of the key because its levers are modules put in place when the model is built: a
base built for one engine is reused only by a trial of the same engine, so nothing is ever undone.
"""

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch


def release_cached_memory(*, collect: bool = True) -> None:
    """Hand the CUDA caching allocator's free blocks back to the driver; with `collect`, first
    free what only reference cycles still hold (a finished trial's trainer and optimizer). A full
    collection walks every Python object (its cost grows with the model's), so only where a trial
    leaves cycles behind (its start); setup's casts and moves free their tensors at once."""
    if torch.cuda.is_available():
        if collect:
            gc.collect()
        torch.cuda.empty_cache()


def forget_optimizer_overrides() -> int:
    """Drop the modules HF's Trainer registered with bitsandbytes' process-wide GlobalOptimManager
    (every nn.Embedding, for 32-bit states under an 8-bit optimizer, read at the optimizer's first
    step). The manager holds them for the life of the process: each trial that loaded its own base
    would leave its embedding table on the GPU (llama3-8b: the plain trial's fp32 table, 1.96 GiB,
    at the peak of every later trial in the process). Returns how many were dropped."""
    optim = sys.modules.get("bitsandbytes.optim")
    if optim is None:
        return 0
    manager = optim.GlobalOptimManager.get_instance()
    n = len(manager.module_weight_config_triple)
    manager.module_weight_config_triple.clear()
    return n


@dataclass
class Lease:
    """What the pool hands one trial: a built base (or None: load one) and the shared memo."""

    base: Any
    memo: dict
    kept: Any = None  # the trial's peft model, to detach and keep for the next trial

    def keep(self, peft_model) -> None:
        self.kept = peft_model


class BasePool:
    """One base per process, keyed by (model, quant, device, engine)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.entry: tuple[str, Any] | None = None
        self.hits = 0
        self.memo: dict[Any, Any] = {}  # work trials share (prepared datasets), last 4 keys

    @staticmethod
    def key(*subconfigs: Any) -> str:
        return repr([sorted(asdict(c).items()) if hasattr(c, "__dataclass_fields__") else c
                     for c in subconfigs])  # fmt: skip

    @contextmanager
    def lease(self, key: str) -> Iterator[Lease]:
        """Hand out the base for `key` (None if there is none), take back what the trial kept."""
        base = None
        if self.enabled and self.entry is not None and self.entry[0] == key:
            base, self.hits = self.entry[1], self.hits + 1
        self.entry = None  # a different base: freed before the trial loads its own
        release_cached_memory()  # every trial starts from an unfragmented cache
        lease = Lease(base=base, memo=self.memo if self.enabled else {})
        try:
            yield lease
        finally:
            forget_optimizer_overrides()  # the optimizer has read them; the modules may go
            if self.enabled and lease.kept is not None:
                from harness.trial.model import detach_adapter

                self.entry = (key, detach_adapter(lease.kept))
            while len(self.memo) > 4:
                self.memo.pop(next(iter(self.memo)))


_PROCESS_POOL: BasePool | None = None


def process_pool() -> BasePool:
    """The sweep process's pool (one per process, created on first use)."""
    global _PROCESS_POOL
    if _PROCESS_POOL is None:
        _PROCESS_POOL = BasePool()
    return _PROCESS_POOL


def needs_own_process(ecfg) -> bool:
    """Whether a trial with this engine must run in a fresh process: this one has library patches
    installed (harness/engine/build.py process_patches) that differ from what the engine needs."""
    from harness.engine.build import installed_patches, process_patches

    installed = installed_patches()
    return bool(installed) and installed != process_patches(ecfg)
