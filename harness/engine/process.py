"""What an engine changes for the whole process, which no module of the model can own.

    engine.memory_cap_gib=G   the caching allocator reserves at most G GiB on the current device:
                              an allocation that would pass it first makes the allocator free its
                              cached, unused blocks and retry; only then is it an OOM (engine=lean:
                              6.4 GiB holds llama3-8b b4 at 1.99x plain's tokens/s)

Installed once and never undone: a sweep runs a trial whose engine needs other process settings
than the current process has installed in a process of its own (harness/sweep/pool.py). The set
installed here is the only state this package keeps outside a model, one per process.
"""

import torch

from harness.config.engine import EngineConfig

_INSTALLED: set[str] = set()  # this process's; never cleared


def process_patches(ecfg: EngineConfig) -> frozenset[str]:
    """The process-wide settings `ecfg` needs, named (e.g. {"memory_cap_gib=6.4"}). Unsloth
    patches transformers' model classes for the whole process: a trial after it needs its own."""
    want = set()
    if ecfg.memory_cap_gib is not None:
        want.add(f"memory_cap_gib={ecfg.memory_cap_gib:g}")
    if ecfg.backend != "harness":
        want.add(f"backend={ecfg.backend}")
    return frozenset(want)


def installed_patches() -> frozenset[str]:
    """What this process has installed so far."""
    return frozenset(_INSTALLED)


def install_process_patches(ecfg: EngineConfig) -> None:
    """Install what `ecfg` needs in this process (a no-op where it is installed already). Raises
    RuntimeError where the process has other settings installed: that trial needs its own."""
    want = process_patches(ecfg)
    if want == installed_patches():
        return
    if _INSTALLED:
        raise RuntimeError(
            f"this process has {sorted(_INSTALLED)} installed and an engine that needs "
            f"{sorted(want)} must run in a process of its own (harness/sweep/pool.py)"
        )
    if ecfg.memory_cap_gib is not None and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, ecfg.memory_cap_gib * 2**30 / total))
    if torch.cuda.is_available():  # on a CPU, no cap was installed (and no CUDA backend runs)
        _INSTALLED.update(want)
