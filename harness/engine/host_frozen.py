"""Frozen weights in host memory (CUDA only): the input embedding table and the LM head.

train.embeddings_on_cpu=true  the frozen input embedding table lives in host memory; the lookup
                              runs there and only the looked-up rows go to the GPU (llama3-8b:
                              1.05 GB off the GPU). Not for tied embeddings (the LM head is the
                              same matrix).
train.head_on_cpu=true        the frozen, untied LM head in pinned host memory, streamed to the
                              GPU for each forward (below).
"""

import functools

import torch

from harness.engine.offload import _side_stream


def _cpu_embedding_forward(self, input_ids):
    """The rows gathered into a pinned buffer from PyTorch's host cache (reused once its last copy
    has run: no page faults on a fresh 64 MiB each step) and copied without blocking the host; a
    plain gather (what F.embedding's forward is: padding_idx only masks gradients)."""
    ids, weight = input_ids.to("cpu").reshape(-1), self.weight
    rows = torch.empty((ids.numel(), weight.shape[1]), dtype=weight.dtype, pin_memory=True)
    torch.index_select(weight, 0, ids, out=rows)
    out = rows.view(*input_ids.shape, weight.shape[1])
    return out.to(self._harness_embed_device, non_blocking=True)


def _keep_in_host_memory(self, fn, recurse=True):
    return self  # model.to(device) (a trainer's placement) leaves the table where it is


def embeddings_on_cpu(model, on: bool) -> int:
    """Move the frozen input embedding to host memory (on) or back (off). Returns the parameters
    now in host memory (0 where the table is tied to the LM head or trainable)."""
    emb = model.get_input_embeddings()
    home = vars(emb).get("_harness_embed_device")
    if home is not None and not on:  # undo a previous trial's lever on a pooled base
        del emb.forward, emb._apply, emb._harness_embed_device
        emb.weight.data = emb.weight.data.to(home)
        return 0
    if home is not None:
        return emb.weight.numel()
    if not on or _tied(model) or emb.weight.requires_grad:
        return 0
    emb._harness_embed_device = emb.weight.device
    emb.weight.data = emb.weight.data.to("cpu")
    emb.forward = _cpu_embedding_forward.__get__(emb)
    emb._apply = _keep_in_host_memory.__get__(emb)
    return emb.weight.numel()


def _tied(model) -> bool:
    """Whether the LM head and the input embedding share one matrix (neither can move alone)."""
    out = model.get_output_embeddings()
    if out is None or _HEAD in vars(out):  # a streamed head is an untied one (no copy to compare)
        return False
    return out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


# train.head_on_cpu: the frozen LM head's weight in pinned host memory. Its module's class is
# swapped for a subclass whose `weight` is a property (the weight leaves `_parameters`, so
# model.to() and the optimizer never see it): each forward of the decoder stack starts one copy
# to the GPU on a side stream, which overlaps the stack's forward; the head (HF's module call or
# TRL's chunked loss, which reads `lm_head.weight`) waits for it. Nothing but autograd keeps that
# copy once the head's backward has run, so it is not resident while the decoder layers
# backpropagate, where the peak of recomputing configurations sits.
_HEAD = "_harness_head"  # on the head module: {"host", "device", "live", "hooks", "cls"}
_HEAD_CLASSES: dict[type, type] = {}


def _streamed_weight(self) -> torch.Tensor:
    """The copy prefetched for this forward, else one made now (eval outside a forward, probes)."""
    state = vars(self)[_HEAD]
    if state["live"] is None:
        return state["host"].to(state["device"], non_blocking=True)
    gpu, ready = state["live"]
    torch.cuda.current_stream(gpu.device).wait_event(ready)
    return gpu


def _host_head_class(cls: type) -> type:
    if cls not in _HEAD_CLASSES:
        _HEAD_CLASSES[cls] = type(cls.__name__, (cls,), {"weight": property(_streamed_weight)})
    return _HEAD_CLASSES[cls]


def _prefetch_head(state: dict, module, args) -> None:
    device, host = state["device"], state["host"]
    main, side = torch.cuda.current_stream(device), _side_stream(device)
    gpu = torch.empty(host.shape, dtype=host.dtype, device=device)
    side.wait_stream(main)  # the block may have been freed by work still queued on main
    with torch.cuda.stream(side):
        gpu.copy_(host, non_blocking=True)
    gpu.record_stream(side)  # freed unread (a forward that stops early): reused after the copy
    state["live"] = (gpu, side.record_event())


def _drop_head_after_backward(state: dict, module, args, out) -> None:
    hidden = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
    if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
        hidden.register_hook(lambda grad: state.update(live=None))  # the head's backward is done
    # without grad (eval) the copy stays until the next forward replaces it


def _decoder(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder() if hasattr(base, "get_decoder") else base.model


def head_on_cpu(model, on: bool) -> int:
    """Keep the frozen, untied LM head's weight in pinned host memory, streamed to the GPU for
    each forward (on), or put it back (off). Returns the weights now in host memory (0 where the
    head is tied to the input embedding, trainable or not a plain Linear)."""
    head = model.get_output_embeddings()
    state = vars(head).get(_HEAD) if head is not None else None
    if state is not None:
        if on:
            return state["host"].numel()
        for handle in state["hooks"]:
            handle.remove()
        head.__class__ = state["cls"]
        del vars(head)[_HEAD]
        head.weight = torch.nn.Parameter(state["host"].to(state["device"]), requires_grad=False)
        return 0
    if not on or not isinstance(head, torch.nn.Linear) or head.weight.requires_grad or _tied(model):
        return 0
    weight = head.weight.data
    if not weight.is_cuda:
        raise RuntimeError("train.head_on_cpu needs the LM head on a CUDA device")
    state = {"device": weight.device, "host": weight.to("cpu").pin_memory(), "live": None,
             "cls": type(head)}  # fmt: skip
    del head._parameters["weight"]
    head.__class__ = _host_head_class(state["cls"])
    decoder = _decoder(model)
    state["hooks"] = [
        decoder.register_forward_pre_hook(functools.partial(_prefetch_head, state)),
        decoder.register_forward_hook(functools.partial(_drop_head_after_backward, state)),
    ]
    vars(head)[_HEAD] = state
    return state["host"].numel()
