"""The owned input embedding and LM head: frozen weights in host memory (CUDA only), and the input
embedding's output widened for an fp32 residual stream.

engine.embeddings_on_cpu=true  the frozen input embedding table lives in host memory; the lookup
                              runs there and only the looked-up rows go to the GPU (llama3-8b:
                              1.05 GB off the GPU). Not for tied embeddings (the LM head is the
                              same matrix).
engine.head_on_cpu=true        the frozen, untied LM head in pinned host memory, streamed to the
                              GPU for each forward (`HostHead`).
engine.residual_dtype=fp32     the embedding's output in fp32: the values peft's fp32 table gives
                              (residual.py)
"""

import torch
from torch import nn
from torch.nn import functional as F


class Embedding(nn.Module):
    """nn.Embedding's lookup of the same weight Parameter, its table in host memory (`host`) and
    its output cast to `out_dtype` (None: the table's dtype)."""

    def __init__(self, emb: nn.Embedding, *, host: bool, out_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.weight = emb.weight
        for key in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                    "scale_grad_by_freq", "sparse"):  # fmt: skip
            setattr(self, key, getattr(emb, key))
        self.home = emb.weight.device  # where the looked-up rows go
        self.host, self.out_dtype = host, out_dtype
        if host:
            self.weight.data = self.weight.data.to("cpu")

    def settings(self) -> dict:
        return {"host": self.host, "out_dtype": self.out_dtype}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.host:
            out = self._host_lookup(input_ids)
        else:
            out = F.embedding(input_ids, self.weight, self.padding_idx, self.max_norm,
                              self.norm_type, self.scale_grad_by_freq, self.sparse)  # fmt: skip
        return out if self.out_dtype is None else out.to(self.out_dtype)

    def _host_lookup(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The rows gathered into a pinned buffer from PyTorch's host cache (reused once its last
        copy has run: no page faults on a fresh 64 MiB each step) and copied without blocking the
        host; a plain gather (what F.embedding's forward is: padding_idx only masks gradients)."""
        ids, weight = input_ids.to("cpu").reshape(-1), self.weight
        rows = torch.empty((ids.numel(), weight.shape[1]), dtype=weight.dtype, pin_memory=True)
        torch.index_select(weight, 0, ids, out=rows)
        out = rows.view(*input_ids.shape, weight.shape[1])
        return out.to(self.home, non_blocking=True)

    def _apply(self, fn, recurse=True):
        if self.host:
            return self  # model.to(device) (a trainer's placement) leaves the table where it is
        return super()._apply(fn, recurse)


class HostHead(nn.Module):
    """The frozen LM head's weight in pinned host memory. It is no Parameter (model.to() and the
    optimizer never see it): each forward of the decoder stack starts one copy to the GPU on this
    module's side stream (`prefetch`, a pre-hook on the decoder), which overlaps the stack's
    forward; the head (its forward, or TRL's chunked loss, which reads `lm_head.weight`) waits for
    it. Nothing but autograd keeps that copy once the head's backward has run, so it is not
    resident while the decoder layers backpropagate, where the peak of recomputing configurations
    sits (llama3-8b b4: 6.27 -> 5.40 GiB allocated, ~2% slower)."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        weight = head.weight.data
        if not weight.is_cuda:
            raise RuntimeError("engine.head_on_cpu needs the LM head on a CUDA device")
        self.in_features, self.out_features = head.in_features, head.out_features
        self.gpu_device, self.host = weight.device, weight.to("cpu").pin_memory()
        self.live: tuple[torch.Tensor, torch.cuda.Event] | None = None
        self.stream: torch.cuda.Stream | None = None
        self.bias = None  # an LM head has none; TRL's chunked loss reads the attribute

    def settings(self) -> dict:
        return {"host": True}

    @property
    def weight(self) -> torch.Tensor:
        """The copy prefetched for this forward, else one made now (eval outside a forward)."""
        if self.live is None:
            return self.host.to(self.gpu_device, non_blocking=True)
        gpu, ready = self.live
        torch.cuda.current_stream(gpu.device).wait_event(ready)
        return gpu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def prefetch(self, module, args) -> None:
        """The decoder's forward pre-hook: start this forward's copy of the weight."""
        device = self.gpu_device
        if self.stream is None:
            self.stream = torch.cuda.Stream(device)
        main, side = torch.cuda.current_stream(device), self.stream
        gpu = torch.empty(self.host.shape, dtype=self.host.dtype, device=device)
        side.wait_stream(main)  # the block may have been freed by work still queued on main
        with torch.cuda.stream(side):
            gpu.copy_(self.host, non_blocking=True)
        gpu.record_stream(side)  # freed unread (a forward that stops early): reused after the copy
        self.live = (gpu, side.record_event())

    def drop_after_backward(self, module, args, out) -> None:
        """The decoder's forward hook: once the head's backward has run, forget the copy."""
        hidden = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(self._forget)
        # without grad (eval) the copy stays until the next forward replaces it

    def _forget(self, grad: torch.Tensor) -> None:
        self.live = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, host memory"
