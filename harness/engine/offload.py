"""Memory levers that park frozen or saved tensors in host memory (CUDA only).

    train.checkpointing=offload   every decoder layer (or train.checkpoint_fraction of them, the
                                  others kept) recomputed in backward, and its input (the one
                                  tensor full recompute keeps per layer: [tokens, hidden]) copied to
                                  pinned host memory on a side stream during forward, back in
                                  backward. llama3-8b, seq 2048, batch 4: 32 x 64 MiB = 2 GiB off
                                  the GPU, 2 GB each way over PCIe per step (~55 GB/s measured).
    train.expandable_segments, train.memory_cap_gib: the allocator's settings
The frozen embedding table and LM head in host memory: harness/host_frozen.py.

Same math: the recomputed layer sees the same input (copied exactly), the same CPU and CUDA RNG
states (the fused LoRA kernel draws its dropout seed from the CPU generator) and the same autocast
state: backward runs on autograd's device thread, where autocast is off unless re-entered.
"""

import contextlib

import torch

from harness.engine import trim

_STREAMS: dict[int, torch.cuda.Stream] = {}
_PINNED: dict[tuple, list[torch.Tensor]] = {}
_IN_FLIGHT: list[tuple[torch.cuda.Event, torch.Tensor]] = []  # buffers whose copy back may run


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    if device.index not in _STREAMS:
        _STREAMS[device.index] = torch.cuda.Stream(device)
    return _STREAMS[device.index]


def _pinned(shape, dtype) -> torch.Tensor:
    """A pinned host buffer: one whose copy back to the GPU has finished, else a new one (the
    check is a query, never a wait: the host keeps queueing kernels ahead of the GPU; buffers
    that share a copy's event are checked once)."""
    free = _PINNED.setdefault((tuple(shape), dtype), [])
    if not free and _IN_FLIGHT:
        done: dict[int, bool] = {}
        still = []
        for event, host in _IN_FLIGHT:
            if done.setdefault(id(event), event.query()):
                _PINNED.setdefault((tuple(host.shape), host.dtype), []).append(host)
            else:
                still.append((event, host))
        _IN_FLIGHT[:] = still
    return free.pop() if free else torch.empty(shape, dtype=dtype, pin_memory=True)


_OFFLOADED: list = []  # contexts whose backward has not run yet, in forward order (a stack)


def _fetch(ctx) -> None:
    """Start the copy of a layer's parked input back to the GPU on the side stream (once). Its
    buffer comes from the main stream's pool: the side stream first waits for the work queued on
    main so far, which may still read a block the allocator hands out again."""
    if ctx.fetched is not None:
        return
    main, side = torch.cuda.current_stream(ctx.device), _side_stream(ctx.device)
    gpu = torch.empty(ctx.host.shape, dtype=ctx.host.dtype, device=ctx.device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        gpu.copy_(ctx.host, non_blocking=True)  # after the parking copy: same stream, in order
    gpu.record_stream(side)  # freed unread (a backward that never ran): reused after the copy
    ctx.fetched = (gpu, side.record_event())


def autocast_state(device_type: str) -> dict[str, dict]:
    """The autocast settings in force now, for `device_type` and the CPU (thread-local)."""
    cache = torch.is_autocast_cache_enabled()
    return {
        kind: {"enabled": torch.is_autocast_enabled(kind), "dtype": torch.get_autocast_dtype(kind),
               "cache_enabled": cache}
        for kind in dict.fromkeys((device_type, "cpu"))
    }  # fmt: skip


@contextlib.contextmanager
def autocast_as(state: dict[str, dict]):
    """Run the block under the autocast settings `autocast_state` took (on another thread, e.g.
    in backward)."""
    with contextlib.ExitStack() as stack:
        for kind, kwargs in state.items():
            stack.enter_context(torch.autocast(kind, **kwargs))
        yield


class _OffloadedCheckpoint(torch.autograd.Function):
    """Run `run(hidden, *rest)` without keeping activations; keep `hidden` in host memory and
    recompute in backward (the reentrant scheme: backward runs the layer again under grad and
    backpropagates through it, accumulating the adapter's gradients). Each layer's backward first
    starts the copy back of the layer below's input, so that copy overlaps this layer's recompute
    and backward instead of stalling the main stream (fetch-ahead)."""

    @staticmethod
    def forward(ctx, run, hidden, *rest):
        ctx.run, ctx.rest, ctx.device = run, rest, hidden.device
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(hidden.device)
        ctx.autocast = autocast_state(hidden.device.type)
        with torch.no_grad():
            out = run(hidden, *rest)
        stream = _side_stream(hidden.device)
        stream.wait_stream(torch.cuda.current_stream(hidden.device))
        with torch.cuda.stream(stream):
            host = _pinned(hidden.shape, hidden.dtype)
            host.copy_(hidden, non_blocking=True)
        hidden.record_stream(stream)  # the allocator keeps it until the copy is done
        ctx.host, ctx.fetched = host, None
        _OFFLOADED.append(ctx)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        _fetch(ctx)  # the top layer's input: nothing above fetched it ahead
        below = _pop(ctx)
        if below is not None:
            _fetch(below)
        gpu, ready = ctx.fetched
        torch.cuda.current_stream(ctx.device).wait_event(ready)
        hidden = gpu.detach().requires_grad_(True)
        ctx.fetched = None
        cpu_now, cuda_now = torch.get_rng_state(), torch.cuda.get_rng_state(ctx.device)
        torch.set_rng_state(ctx.cpu_rng)
        torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
        try:
            with torch.enable_grad(), autocast_as(ctx.autocast), trim.recomputing():
                out = ctx.run(hidden, *ctx.rest)
            torch.autograd.backward(out, grad_out)
        finally:
            torch.set_rng_state(cpu_now)
            torch.cuda.set_rng_state(cuda_now, ctx.device)
        _IN_FLIGHT.append((ready, ctx.host))  # reusable once that copy has run
        return None, hidden.grad, *([None] * len(ctx.rest))


def _pop(ctx):
    """Take `ctx` off the stack; return the context parked just before it in the same pass (the
    next backward's), if any. Entries above it (a pass whose backward never ran) are dropped."""
    for i in range(len(_OFFLOADED) - 1, -1, -1):
        if _OFFLOADED[i] is ctx:
            del _OFFLOADED[i:]
            return _OFFLOADED[-1] if _OFFLOADED else None
    return None


def reset() -> None:
    """Forget parked inputs of passes whose backward never ran (an aborted step or trial)."""
    _OFFLOADED.clear()


def offloaded_checkpoint(run, hidden, *rest, **kwargs):
    """Drop-in for a decoder layer's `_gradient_checkpointing_func(run, *args)`."""
    if kwargs:
        raise TypeError(f"offloaded_checkpoint takes no keyword arguments, got {sorted(kwargs)}")
    if not hidden.is_cuda:
        raise RuntimeError("train.checkpointing=offload needs CUDA tensors")
    if not torch.is_grad_enabled():  # no backward will come: nothing to park
        return run(hidden, *rest)
    return _OffloadedCheckpoint.apply(run, hidden, *rest)


def expandable_segments(on: bool) -> bool:
    """PyTorch's caching allocator grows segments instead of reserving fixed blocks: reserved
    memory tracks allocated memory (less fragmentation). Process-wide; set per trial."""
    if not torch.cuda.is_available():
        return False
    setting = getattr(torch._C, "_accelerator_setAllocatorSettings", None)  # torch >= 2.9
    (setting or torch.cuda.memory._set_allocator_settings)(f"expandable_segments:{on}")
    return on


def memory_cap(gib: float | None) -> float | None:
    """Cap the caching allocator's reserved memory on the current device (None: lift the cap).
    An allocation that would pass it first makes the allocator free its cached, unused blocks
    (with expandable segments: unmap their pages) and retry; only then is it an OOM. Process-wide;
    set per trial. Returns the cap."""
    if not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    fraction = 1.0 if gib is None else min(1.0, gib * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return gib
