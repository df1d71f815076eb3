"""engine.checkpointing=offload (CUDA only): every decoder layer (or engine.checkpoint_fraction of
them, the others kept) recomputed in backward, and its input (the one tensor full recompute keeps
per layer: [tokens, hidden]) copied to pinned host memory on a side stream during forward, back in
backward. llama3-8b, seq 2048, batch 4: 32 x 64 MiB = 2 GiB off the GPU, 2 GB each way over PCIe
per step (~55 GB/s measured).

The built model owns one `Offloader` (held by its layers' runners, harness/engine/layers.py): its
side streams, its pool of pinned buffers, the copies in flight and the inputs parked by passes
whose backward has not run. A trial builds its own; nothing is shared with the next.

Same math: the recomputed layer sees the same input (copied exactly), the same CPU and CUDA RNG
states (the fused LoRA kernel draws its dropout seed from the CPU generator) and the same autocast
state: backward runs on autograd's device thread, where autocast is off unless re-entered.
"""

import contextlib

import torch

AHEAD = 2  # backward of layer j starts the copy back of host layers j .. j - AHEAD (host_layers)


class Offloader:
    """The per-trial state of the levers that park tensors in host memory."""

    def __init__(self, recompute=None) -> None:
        self.recompute = recompute  # trim.Recompute, raised around each offloaded recompute
        self.streams: dict[tuple[str, int | None], torch.cuda.Stream] = {}
        self.free: dict[tuple, list[torch.Tensor]] = {}  # pinned buffers ready for reuse
        self.in_flight: list[tuple[torch.cuda.Event, torch.Tensor]] = []  # copies back queued
        self.stack: list = []  # offloaded contexts whose backward has not run, in forward order
        self.parked: dict[int, object] = {}  # host layer position -> its last forward's group

    def stream(self, device: torch.device, kind: str = "side") -> torch.cuda.Stream:
        """ "side": the copies back (and the offloaded inputs' parking); "d2h": host layers'
        parking copies, which then run beside the copies back."""
        key = (kind, device.index)
        if key not in self.streams:
            self.streams[key] = torch.cuda.Stream(device)
        return self.streams[key]

    def pinned(self, shape, dtype) -> torch.Tensor:
        """A pinned host buffer: one whose copy back to the GPU has finished, else a new one (the
        check is a query, never a wait: the host keeps queueing kernels ahead of the GPU; buffers
        that share a copy's event are checked once)."""
        free = self.free.setdefault((tuple(shape), dtype), [])
        if not free and self.in_flight:
            done: dict[int, bool] = {}
            still = []
            for event, host in self.in_flight:
                if done.setdefault(id(event), event.query()):
                    self.free.setdefault((tuple(host.shape), host.dtype), []).append(host)
                else:
                    still.append((event, host))
            self.in_flight[:] = still
        return free.pop() if free else torch.empty(shape, dtype=dtype, pin_memory=True)

    def checkpoint(self, run, hidden, *rest, **kwargs):
        """A decoder layer's `_gradient_checkpointing_func(run, *args)`: recompute in backward,
        the layer's input parked in host memory meanwhile."""
        if kwargs:
            raise TypeError(
                f"offloaded checkpoint takes no keyword arguments, got {sorted(kwargs)}"
            )
        if not hidden.is_cuda:
            raise RuntimeError("engine.checkpointing=offload needs CUDA tensors")
        if not torch.is_grad_enabled():  # no backward will come: nothing to park
            return run(hidden, *rest)
        return _OffloadedCheckpoint.apply(self, run, hidden, *rest)

    def fetch(self, ctx) -> None:
        """Start the copy of a layer's parked input back to the GPU on the side stream (once). Its
        buffer comes from the main stream's pool: the side stream first waits for the work queued
        on main so far, which may still read a block the allocator hands out again."""
        if ctx.fetched is not None:
            return
        main, side = torch.cuda.current_stream(ctx.device), self.stream(ctx.device)
        gpu = torch.empty(ctx.host.shape, dtype=ctx.host.dtype, device=ctx.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            gpu.copy_(ctx.host, non_blocking=True)  # after the parking copy: same stream, in order
        gpu.record_stream(side)  # freed unread (a backward that never ran): reused after the copy
        ctx.fetched = (gpu, side.record_event())

    def pop(self, ctx):
        """Take `ctx` off the stack; return the context parked just before it in the same pass
        (the next backward's), if any. Entries above it (a pass whose backward never ran) go."""
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is ctx:
                del self.stack[i:]
                return self.stack[-1] if self.stack else None
        return None

    def fetch_below(self, pos: int, grad: torch.Tensor) -> None:
        """A decoder layer's output-gradient hook: backward has reached layer `pos`; start the
        copy back of the host layers pos .. pos - AHEAD, so it overlaps the layers between."""
        for p in range(pos, pos - AHEAD - 1, -1):
            group = self.parked.pop(p, None)
            if group is not None:
                group.fetch()


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
    def forward(ctx, offloader, run, hidden, *rest):
        ctx.offloader, ctx.run, ctx.rest, ctx.device = offloader, run, rest, hidden.device
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(hidden.device)
        ctx.autocast = autocast_state(hidden.device.type)
        with torch.no_grad():
            out = run(hidden, *rest)
        stream = offloader.stream(hidden.device)
        stream.wait_stream(torch.cuda.current_stream(hidden.device))
        with torch.cuda.stream(stream):
            host = offloader.pinned(hidden.shape, hidden.dtype)
            host.copy_(hidden, non_blocking=True)
        hidden.record_stream(stream)  # the allocator keeps it until the copy is done
        ctx.host, ctx.fetched = host, None
        offloader.stack.append(ctx)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        offloader = ctx.offloader
        offloader.fetch(ctx)  # the top layer's input: nothing above fetched it ahead
        below = offloader.pop(ctx)
        if below is not None:
            offloader.fetch(below)
        gpu, ready = ctx.fetched
        torch.cuda.current_stream(ctx.device).wait_event(ready)
        hidden = gpu.detach().requires_grad_(True)
        ctx.fetched = None
        cpu_now, cuda_now = torch.get_rng_state(), torch.cuda.get_rng_state(ctx.device)
        torch.set_rng_state(ctx.cpu_rng)
        torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
        trimmed = offloader.recompute.running() if offloader.recompute else contextlib.nullcontext()
        try:
            with torch.enable_grad(), autocast_as(ctx.autocast), trimmed:
                out = ctx.run(hidden, *ctx.rest)
            torch.autograd.backward(out, grad_out)
        finally:
            torch.set_rng_state(cpu_now)
            torch.cuda.set_rng_state(cuda_now, ctx.device)
        offloader.in_flight.append((ready, ctx.host))  # reusable once that copy has run
        return None, None, hidden.grad, *([None] * len(ctx.rest))
