"""Built-in calibration points of the memory model: H100 measurements, not records of a sweep.

Two are published (the QLoRA recipe on Llama-3-8B, nf4 + double quant, r=16 all-linear, seq
2048, full checkpointing, paged AdamW 8-bit, fp32 adapters: 24.2 GiB peak reserved at batch 4
(19.4 allocated), 10.2 at batch 1), from a stack that leaves frozen params in bf16. The rest were
measured here by ``tests/fixtures/gpu_probe_h100.py`` (output: ``gpu_probe_h100.json`` beside it),
which loads and adapts the model the way harness/trial/model.py does (bitsandbytes 4-bit
``from_pretrained``, ``prepare_model_for_kbit_training``, peft LoRA with fp32 adapters) and runs 3
bf16-autocast steps on random tokens: H100 80GB, torch 2.11, transformers 5.17, peft 0.21,
bitsandbytes 0.50.2, random weights in each model's published shape.
"""

from harness.memory.records import Point
from harness.memory.terms import Setting, Shape

LLAMA3_8B = Shape.named("llama3-8b")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")

_PUBLISHED = (
    ("llama3-8b", {"batch_size": 4}, 24.2),
    ("llama3-8b", {"batch_size": 1}, 10.2),
)
# Probe rows: (shape, setting changes from the QLoRA recipe, measured peak reserved GiB).
_PROBE = (
    ("llama3-8b", {"batch_size": 1}, 10.00),
    ("llama3-8b", {"batch_size": 1, "upcast_frozen": True}, 13.26),
    ("llama3-8b", {"batch_size": 2, "upcast_frozen": True}, 18.97),
    ("llama3-8b", {"batch_size": 4, "upcast_frozen": True}, 28.78),
    ("llama3-8b", {"r": 64, "upcast_frozen": True}, 14.00),
    ("llama3-8b", {"batch_size": 2, "seq_len": 1024, "upcast_frozen": True}, 13.26),
    ("llama3-8b", {"checkpointing": "none", "upcast_frozen": True}, 33.85),
    ("llama3-8b", {"targets": ATTENTION, "upcast_frozen": True}, 13.02),
    ("llama3-8b", {"quant": "fp4", "double_quant": False, "upcast_frozen": True}, 13.92),
    ("llama3.2-1b", {"upcast_frozen": True}, 6.42),
    ("llama3.2-1b", {"batch_size": 4, "upcast_frozen": True}, 17.19),
    ("llama3.2-1b", {"r": 64, "batch_size": 2, "upcast_frozen": True}, 11.38),
    ("llama3.2-1b", {"batch_size": 2, "optimizer": "adamw_torch", "upcast_frozen": True}, 11.43),
    ("llama3.2-1b", {"batch_size": 2, "variant": "dora", "upcast_frozen": True}, 11.32),
    ("llama3.2-1b", {"batch_size": 2, "checkpointing": "none", "upcast_frozen": True}, 22.87),
)


def _point(name: str, changes: dict, peak: float, source: str) -> Point:
    parts = " ".join(f"{k}={'attention' if v == ATTENTION else v}" for k, v in changes.items())
    label = f"{source}: H100 {name} {parts}".strip()
    # random tokens (the probe) and the published recipe's full rows: no padding mask
    return Shape.named(name), Setting(**changes, causal_padding=True), peak, label


PRIOR_ANCHORS: tuple[Point, ...] = tuple(_point(*row, "published") for row in _PUBLISHED) + tuple(
    _point(*row, "probe") for row in _PROBE
)
