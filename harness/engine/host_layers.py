"""train.host_layers=N: N of the decoder layers that train.checkpoint_fraction would recompute are
neither recomputed nor kept on the GPU: what autograd saves in their forward (norm inputs and
outputs, q, k, v, the attention output, gate, up, the SwiGLU product: llama3-8b b4 seq 2048 about
1.1 GiB a layer) is copied to pinned host memory on a side stream while the next layers run, and
copied back ahead of their backward. A recompute costs a layer's forward again (GPU time and, in
backward, host launch time); a host layer costs PCIe bandwidth (~50 GB/s each way, measured),
which otherwise sits idle. Same math: the backward reads the very values the forward saved.

How: the layer's forward runs under autograd's saved-tensor hooks (`_Group.pack` / `unpack`).
A tensor worth moving (CUDA, >= 1 MiB, not a parameter) is copied once per layer forward however
many ops save it, in its own memory layout (a transposed q stays transposed), and the GPU original
is released as soon as the forward lets it go (the allocator waits for the copy before it hands
the block out again). Every decoder layer's output carries a gradient hook: when backward reaches
layer j, the host layers j, j-1 and j-2 start their copy back on the side stream, so the copy
overlaps the backward of the layers between. Where nothing fetched a layer ahead, its first
unpack does.

Placement (levers._checkpointing): the host layers are spread over the layers that would be
recomputed, so each copy has other layers' compute to hide behind. Not with slim activations in
the same layer (a slim recipe keeps references the hooks never see); a host layer is never slim.
"""

import functools

import torch

from harness.engine import offload

AHEAD = 2  # backward of layer j starts the copy back of host layers j .. j - AHEAD
MIN_BYTES = 1 << 20  # smaller saved tensors stay on the GPU (rotary tables, LoRA's [N, r], stats)
_MARK = "_harness_host"  # on a decoder layer: {"pos", "cls", "host", "params", "device"}
_PARKED: dict[int, "_Group"] = {}  # layer position -> the group its last forward parked
_D2H: dict[int, torch.cuda.Stream] = {}
_CLASSES: dict[type, type] = {}


def _d2h_stream(device: torch.device) -> torch.cuda.Stream:
    """The parking copies' own stream: they run beside the copies back (offload's side stream)."""
    if device.index not in _D2H:
        _D2H[device.index] = torch.cuda.Stream(device)
    return _D2H[device.index]


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

    def __init__(self, device: torch.device, params: set[int]):
        self.device, self.params = device, params
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
        main, side = torch.cuda.current_stream(self.device), _d2h_stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            host = offload._pinned(dense.shape, dense.dtype)
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
        """Start the copies back on offload's side stream (after the parking copies: the side
        stream waits for this one's work first, then for main's, whose freed blocks it reuses)."""
        if self.gpu is not None:
            return
        if self.device.type != "cuda":
            self.gpu, self.host = self.host, []
            return
        main, side = torch.cuda.current_stream(self.device), offload._side_stream(self.device)
        self.gpu = [torch.empty(h.shape, dtype=h.dtype, device=self.device) for h in self.host]
        side.wait_stream(_d2h_stream(self.device))
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for gpu, host in zip(self.gpu, self.host, strict=True):
                gpu.copy_(host, non_blocking=True)
        for gpu in self.gpu:
            gpu.record_stream(side)
        self.ready = side.record_event()
        offload._IN_FLIGHT.extend((self.ready, host) for host in self.host)  # pooled once read
        self.host = []


def _on_backward(pos: int, grad: torch.Tensor) -> None:
    for p in range(pos, pos - AHEAD - 1, -1):
        group = _PARKED.pop(p, None)
        if group is not None:
            group.fetch()


def _call(self, *args, **kwargs):
    """A decoder layer's __call__ (class swapped in by `apply`): a host layer parks what its
    forward saves; every layer's output starts the fetch of the host layers below it."""
    state = vars(self)[_MARK]
    cls = state["cls"]
    if not torch.is_grad_enabled():
        return cls.__call__(self, *args, **kwargs)
    if state["host"]:
        group = _Group(state["device"], state["params"])
        with torch.autograd.graph.saved_tensors_hooks(group.pack, group.unpack):
            out = cls.__call__(self, *args, **kwargs)
        group.seen.clear()
        if group.host:
            _PARKED[state["pos"]] = group
    else:
        out = cls.__call__(self, *args, **kwargs)
    hidden = out[0] if isinstance(out, tuple) else out
    if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
        hidden.register_hook(functools.partial(_on_backward, state["pos"]))
    return out


def _class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(cls.__name__, (cls,), {"__call__": _call})
    return _CLASSES[cls]


def apply(layers: list, host: set[int]) -> int:
    """Make the layers at positions `host` host layers (empty: undo on every layer). Returns
    how many are."""
    reset()
    for pos, layer in enumerate(layers):
        state = vars(layer).pop(_MARK, None)
        if state is not None:
            layer.__class__ = state["cls"]
        if not host:
            continue
        params = {t.data_ptr() for t in [*layer.parameters(), *layer.buffers()]}
        device = next(layer.parameters()).device
        vars(layer)[_MARK] = {"pos": pos, "cls": type(layer), "host": pos in host,
                              "params": params, "device": device}  # fmt: skip
        layer.__class__ = _class(type(layer))
    return len(host)


def is_host(layer) -> bool:
    state = vars(layer).get(_MARK)
    return bool(state and state["host"])


def reset() -> None:
    """Forget the groups of passes whose backward never ran (an aborted step or trial)."""
    _PARKED.clear()
