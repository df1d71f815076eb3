"""engine.host_layers=N: N of the decoder layers that engine.checkpoint_fraction would recompute are
neither recomputed nor kept on the GPU: what autograd saves in their forward (norm inputs and
outputs, q, k, v, the attention output, gate, up, the SwiGLU product: llama3-8b b4 seq 2048 about
1.1 GiB a layer) is copied to pinned host memory on a side stream while the next layers run, and
copied back ahead of their backward. A recompute costs a layer's forward again (GPU time and, in
backward, host launch time); a host layer costs PCIe bandwidth (~50 GB/s each way, measured),
which otherwise sits idle. Same math: the backward reads the very values the forward saved.

How: a host layer's runner (`HostRun`, its `_gradient_checkpointing_func`) runs the forward under
autograd's saved-tensor hooks (`_Group.pack` / `unpack`). A tensor worth moving (CUDA, >= 1 MiB,
not a parameter) is copied once per layer forward however many ops save it, in its own memory
layout (a transposed q stays transposed), and the GPU original is released as soon as the forward
lets it go (the allocator waits for the copy before it hands the block out again). Every decoder
layer's output carries a gradient hook (Offloader.fetch_below): when backward reaches layer j,
the host layers j, j-1 and j-2 start their copy back on the side stream, so the copy overlaps the
backward of the layers between. Where nothing fetched a layer ahead, its first unpack does. The
streams, pinned buffers and parked groups are the model's Offloader's (offload.py).

Placement (layer_plan.host_positions): spread over the layers that would be recomputed, so each
copy has other layers' compute to hide behind. Never slim (a slim recipe keeps references the
hooks never see).
"""

import torch

MIN_BYTES = 1 << 20  # smaller saved tensors stay on the GPU (rotary tables, LoRA's [N, r], stats)


def _layout(t: torch.Tensor) -> list[int] | None:
    """The dimension order in which `t`'s memory is contiguous (None: not a dense layout)."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    return order if t.permute(order).is_contiguous() else None


class _Packet:
    __slots__ = ("index", "order")

    def __init__(self, index: int, order: list[int]):
        self.index, self.order = index, order


class _Group:
    """What one forward of one host layer parked: host copies, then (fetched) their GPU copies."""

    def __init__(self, offloader, device: torch.device, params: set[int]):
        self.offloader, self.device, self.params = offloader, device, params
        self.host: list[torch.Tensor] = []
        self.gpu: list[torch.Tensor] | None = None
        self.ready = None
        self.seen: dict[tuple, tuple[torch.Tensor, _Packet]] = {}  # alive while forward runs

    def pack(self, t: torch.Tensor):
        if (t.device != self.device or t.numel() * t.element_size() < MIN_BYTES
                or isinstance(t, torch.nn.Parameter) or t.data_ptr() in self.params):  # fmt: skip
            return t
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if key in self.seen:
            return self.seen[key][1]
        order = _layout(t)
        if order is None:
            return t
        dense = t.detach().permute(order)
        packet = _Packet(len(self.host), order)
        self.seen[key] = (t, packet)  # t stays alive while the layer's forward runs
        if not t.is_cuda:  # the CPU (tests): a copy, as the GPU path's round trip makes one
            self.host.append(dense.clone())
            return packet
        main = torch.cuda.current_stream(self.device)
        side = self.offloader.stream(self.device, "d2h")
        side.wait_stream(main)
        with torch.cuda.stream(side):
            host = self.offloader.pinned(dense.shape, dense.dtype)
            host.copy_(dense, non_blocking=True)
        t.record_stream(side)  # the block is not handed out again before the copy has run
        self.host.append(host)
        return packet

    def unpack(self, packet):
        if isinstance(packet, torch.Tensor):
            return packet
        if self.gpu is None:
            self.fetch()
        if self.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(self.ready)
        dense = self.gpu[packet.index]
        return dense.permute(sorted(range(dense.dim()), key=packet.order.__getitem__))

    def fetch(self) -> None:
        """Start the copies back on the side stream (after the parking copies: the side stream
        waits for the d2h stream's work first, then for main's, whose freed blocks it reuses)."""
        if self.gpu is not None:
            return
        if self.device.type != "cuda":
            self.gpu, self.host = self.host, []
            return
        main, side = torch.cuda.current_stream(self.device), self.offloader.stream(self.device)
        self.gpu = [torch.empty(h.shape, dtype=h.dtype, device=self.device) for h in self.host]
        side.wait_stream(self.offloader.stream(self.device, "d2h"))
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for gpu, host in zip(self.gpu, self.host, strict=True):
                gpu.copy_(host, non_blocking=True)
        for gpu in self.gpu:
            gpu.record_stream(side)
        self.ready = side.record_event()
        self.offloader.in_flight.extend(
            (self.ready, host) for host in self.host
        )  # pooled once read
        self.host = []


class HostRun:
    """A host layer's runner: its forward, with what autograd saves parked in host memory."""

    def __init__(self, offloader, pos: int, layer: torch.nn.Module):
        self.offloader, self.pos = offloader, pos
        self.device = next(layer.parameters()).device
        self.params = {t.data_ptr() for t in [*layer.parameters(), *layer.buffers()]}

    def __call__(self, run, *args):
        group = _Group(self.offloader, self.device, self.params)
        with torch.autograd.graph.saved_tensors_hooks(group.pack, group.unpack):
            out = run(*args)
        group.seen.clear()
        if group.host:
            self.offloader.parked[self.pos] = group
        return out
