"""Built-in calibration points of the memory model: H100 measurements, not records of a sweep.

Two are published (the QLoRA recipe on Llama-3-8B, nf4 + double quant, r=16 all-linear, seq
2048, full checkpointing, paged AdamW 8-bit, fp32 adapters: 24.2 GiB peak reserved at batch 4
(19.4 allocated), 10.2 at batch 1), from a stack that leaves frozen params in bf16. The rest were
measured here by ``tests/fixtures/gpu_probe_h100.py`` (output: ``gpu_probe_h100.json`` beside it),
which loads and adapts the model the way harness/models.py does (bitsandbytes 4-bit
``from_pretrained``, ``prepare_model_for_kbit_training``, peft LoRA with fp32 adapters) and runs 3
bf16-autocast steps on random tokens: H100 80GB, torch 2.11, transformers 5.17, peft 0.21,
bitsandbytes 0.50.2, random weights in each model's published shape.
"""

from harness.memory.terms import Setting, Shape

Point = tuple[Shape, Setting, float, str]  # shape, setting, measured peak reserved GiB, label

LLAMA3_8B = Shape(4096, 32, 14336, 128256, 32, 8)
LLAMA32_1B = Shape(2048, 16, 8192, 128256, 32, 8, tie_embeddings=True)
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")

_PUBLISHED = (
    (LLAMA3_8B, {"batch_size": 4}, 24.2),
    (LLAMA3_8B, {"batch_size": 1}, 10.2),
)
# Probe rows: (shape, setting changes from the QLoRA recipe, measured peak reserved GiB).
_PROBE = (
    (LLAMA3_8B, {"batch_size": 1}, 10.00),
    (LLAMA3_8B, {"batch_size": 1, "upcast_frozen": True}, 13.26),
    (LLAMA3_8B, {"batch_size": 2, "upcast_frozen": True}, 18.97),
    (LLAMA3_8B, {"batch_size": 4, "upcast_frozen": True}, 28.78),
    (LLAMA3_8B, {"r": 64, "upcast_frozen": True}, 14.00),
    (LLAMA3_8B, {"batch_size": 2, "seq_len": 1024, "upcast_frozen": True}, 13.26),
    (LLAMA3_8B, {"checkpointing": "none", "upcast_frozen": True}, 33.85),
    (LLAMA3_8B, {"targets": ATTENTION, "upcast_frozen": True}, 13.02),
    (LLAMA3_8B, {"quant": "fp4", "double_quant": False, "upcast_frozen": True}, 13.92),
    (LLAMA32_1B, {"upcast_frozen": True}, 6.42),
    (LLAMA32_1B, {"batch_size": 4, "upcast_frozen": True}, 17.19),
    (LLAMA32_1B, {"r": 64, "batch_size": 2, "upcast_frozen": True}, 11.38),
    (LLAMA32_1B, {"batch_size": 2, "optimizer": "adamw_torch", "upcast_frozen": True}, 11.43),
    (LLAMA32_1B, {"batch_size": 2, "variant": "dora", "upcast_frozen": True}, 11.32),
    (LLAMA32_1B, {"batch_size": 2, "checkpointing": "none", "upcast_frozen": True}, 22.87),
)


def _label(shape: Shape, changes: dict, source: str) -> str:
    name = "llama3-8b" if shape == LLAMA3_8B else "llama3.2-1b"
    parts = " ".join(f"{k}={'attention' if v == ATTENTION else v}" for k, v in changes.items())
    return f"{source}: H100 {name} {parts}".strip()


PRIOR_ANCHORS: tuple[Point, ...] = tuple(
    (shape, Setting(**changes), peak, _label(shape, changes, "published"))
    for shape, changes, peak in _PUBLISHED
) + tuple(
    (shape, Setting(**changes), peak, _label(shape, changes, "probe"))
    for shape, changes, peak in _PROBE
)
