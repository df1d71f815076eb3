"""Model-size presets and the seeds' table: what fits on common GPU sizes, by method.

python -m harness.pick --table
"""

from dataclasses import replace

from harness.memory.activations import logits_bytes
from harness.memory.fit import Calibration
from harness.memory.model import predict_peak_gib, prior_calibration
from harness.memory.terms import GIB, Setting, Shape

# One representative model per size class, its shape from the registry (harness/assets/shapes.py).
SIZE_CLASSES = {
    "llama3.2-1b": "1B",
    "llama3.2-3b": "3B",
    "llama3-8b": "7-8B",
    "llama2-13b": "13B",
    "llama1-33b": "33B",
    "llama3-70b": "70B",
}
PRESETS: dict[str, tuple[str, Shape]] = {
    name: (size, Shape.named(name)) for name, size in SIZE_CLASSES.items()
}
BUDGETS_GB = (8, 12, 16, 24, 40, 48, 80)
# One recipe per method at seq 2048, batch 1, full checkpointing: the smallest sane footprint.
METHODS: dict[str, Setting] = {
    "full FT": Setting(full_finetune=True, quant="none", optimizer="adamw_torch"),
    "LoRA": Setting(quant="none", lora_dtype="bf16"),
    # As this harness loads 4-bit models: prepare_model_for_kbit_training upcasts frozen params.
    "QLoRA": Setting(quant="nf4", double_quant=True, upcast_frozen=True),
}


def seeds_rows(
    calib: Calibration | None = None, *, margin: float = 0.10, seq_len: int = 2048
) -> list[dict[str, object]]:
    """One row per preset: predicted GiB per method and, per budget, the methods that fit.

    Args:
        calib: memory-model calibration (None: built-in prior).
        margin: safety margin on the predicted peak (0.10 = +10%).
        seq_len: tokens per sequence (batch 1).
    """
    rows = []
    for name, (size, shape) in PRESETS.items():
        need = {
            m: predict_peak_gib(shape, replace(s, seq_len=seq_len), calib)["total"]
            for m, s in METHODS.items()
        }
        fits = {b: {m: g * (1 + margin) <= b for m, g in need.items()} for b in BUDGETS_GB}
        rows.append(
            {
                "size": size,
                "model": name,
                "params_b": shape.params_total / 1e9,
                "need_gib": need,
                "fits": fits,
            }
        )
    return rows


def format_seeds_table(
    rows: list[dict[str, object]], *, margin: float = 0.10, calib: Calibration | None = None
) -> str:
    """Markdown: one line per model size, one column per GPU size; cell = full FT / LoRA / QLoRA."""
    head = "| model | params | needs GiB (full / LoRA / QLoRA) | " + " | ".join(
        f"{b} GB" for b in BUDGETS_GB
    )
    lines = [
        "Predicted (memory model, not measured): seq 2048, batch 1, full checkpointing, "
        f"+{margin:.0%} margin. Cell = full FT / LoRA / QLoRA, ✓ fits, ✗ does not. "
        f"Vocabulary matters at batch 1: logits take {_logits_gib(128256, calib):.1f} GiB per "
        "sequence "
        f"with Llama-3's 128k vocab, {_logits_gib(32000, calib):.1f} with Llama-2's 32k.",
        "",
        head + " |",
        "|" + "---|" * (3 + len(BUDGETS_GB)),
    ]
    for row in rows:
        need = row["need_gib"]
        needs = " / ".join(f"{need[m]:.1f}" for m in METHODS)
        cells = [" ".join("✓" if row["fits"][b][m] else "✗" for m in METHODS) for b in BUDGETS_GB]
        lines.append(
            f"| {row['size']} ({row['model']}) | {row['params_b']:.1f}B | {needs} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def _logits_gib(vocab: int, calib: Calibration | None) -> float:
    shape = Shape(4096, 1, 4096, vocab, 32, 8)  # logits depend on vocab (and batch x seq) only
    factor = (calib or prior_calibration()).logits_factor
    return factor * logits_bytes(shape, METHODS["QLoRA"]) / GIB
