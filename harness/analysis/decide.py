"""Which setting for a GPU budget: measured where we measured, predicted (with its error) elsewhere.

A measured trial fits when its train-phase peak reserved VRAM times (1 + margin) is within the
budget; the margin covers the CUDA context (~0.5 GiB, outside torch's reserved figure) and
run-to-run variation. Where nothing measured fits, the memory model predicts each successful
setting (and variants with smaller batches or full checkpointing) and those are marked predicted.
"""

from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from harness.analysis.frame import metric
from harness.memory.fit import Calibration
from harness.memory.model import predict_peak_gib, setting_from_record, shape_from_record
from harness.memory.terms import Setting, Shape

OBJECTIVES = {  # objective: (column, higher is better, tie-break column)
    "score": ("score", True, "loss_tokens_per_s"),
    "throughput": ("loss_tokens_per_s", True, "score"),
    "memory": ("peak_vram_reserved_gib", False, "score"),
}


@dataclass
class Choice:
    """One answer: a record (and any changes to it) with what it needs."""

    kind: str  # "measured" | "predicted"
    record: dict[str, Any]
    peak_gib: float  # measured or predicted train-phase peak reserved VRAM
    need_gib: float  # peak * (1 + margin)
    error_pct: float | None = None  # predicted: the memory model's held-out mean abs error
    changes: dict[str, Any] = field(default_factory=dict)  # dotted keys changed from the record
    model: str | None = None  # predicted for another model than the record's


@dataclass(frozen=True)
class Predictor:
    """What a predicted answer needs from the memory model."""

    calib: Calibration | None = None  # None: the built-in prior
    error_pct: float | None = None  # its held-out mean abs error, shown beside a prediction
    shape: Shape | None = None  # predict for a model the sweep never ran (None: each record's own)
    model: str | None = None  # that model's name


def need_gib(peak: float, margin: float) -> float:
    """Peak plus the safety margin."""
    return peak * (1.0 + margin)


def measured_fits(frame: pd.DataFrame, budget_gib: float, margin: float) -> pd.DataFrame:
    """Successful trials with a CUDA peak that fits the budget with the margin (frame order)."""
    ok = frame[(frame["status"] == "success") & frame["peak_vram_reserved_gib"].notna()]
    return ok[need_gib(ok["peak_vram_reserved_gib"], margin) <= budget_gib]


def rank(frame: pd.DataFrame, objective: str) -> pd.DataFrame:
    """Sort rows best first by the objective; missing values last, then the tie-break column."""
    col, higher, tie = OBJECTIVES[objective]
    return frame.sort_values([col, tie], ascending=[not higher, False], na_position="last")


def pick_measured(
    frame: pd.DataFrame, budget_gib: float, *, objective: str = "score", margin: float = 0.10
) -> pd.Series | None:
    """The best measured row that fits, or None.

    Args:
        frame: ``load_records_frame`` output.
        budget_gib: GPU memory to fit in (GiB).
        objective: score | throughput | memory.
        margin: safety margin on the measured peak (0.10 = +10%).
    """
    fits = measured_fits(frame, budget_gib, margin)
    return None if fits.empty else rank(fits, objective).iloc[0]


def closest_measured(frame: pd.DataFrame) -> pd.Series | None:
    """The successful CUDA trial with the smallest peak (what comes nearest to any budget)."""
    ok = frame[(frame["status"] == "success") & frame["peak_vram_reserved_gib"].notna()]
    return None if ok.empty else ok.sort_values("peak_vram_reserved_gib").iloc[0]


FREE = {"engine.kept_layers"}  # changes that keep the math and the speed: preferred to any other


def variants(setting: Setting) -> list[dict[str, Any]]:
    """Cheaper variants of a setting: its kept layers at the top (the same math and speed, never
    a higher peak), full checkpointing, then each with the batch halved down to 1."""
    layouts: list[dict[str, Any]] = [{}]
    if setting.kept_layers != "top" and setting.checkpointing in ("selective", "offload"):
        layouts.append({"engine.kept_layers": "top"})
    if setting.checkpointing != "full":
        layouts.append({"engine.checkpointing": "full"})
    batches, b = [setting.batch_size], setting.batch_size
    while b > 1:
        b //= 2
        batches.append(max(b, 1))
    out = []
    for layout in layouts:
        for batch in batches:
            change = dict(layout)
            if batch != setting.batch_size:
                change["train.batch_size"] = batch
            out.append(change)
    return out


def _apply(setting: Setting, change: dict[str, Any]) -> Setting:
    return replace(
        setting,
        checkpointing=change.get("engine.checkpointing", setting.checkpointing),
        kept_layers=change.get("engine.kept_layers", setting.kept_layers),
        batch_size=change.get("train.batch_size", setting.batch_size),
    )


def pick_predicted(
    records: list[dict[str, Any]],
    budget_gib: float,
    *,
    objective: str = "score",
    margin: float = 0.10,
    predictor: Predictor | None = None,
) -> Choice | None:
    """The best predicted fit among successful settings and their cheaper variants.

    Ranked by the source trial's measured objective (for ``memory``: the predicted peak), then by
    the fewest changes that cost speed or change the math (FREE ones cost nothing), the fewest
    changes.
    """
    p = predictor or Predictor()
    col, higher, tie = OBJECTIVES[objective]
    best: tuple | None = None
    for rec in records:
        own = shape_from_record(rec.get("model") or {})
        if rec.get("status") != "success" or (p.shape or own) is None:
            continue
        setting = setting_from_record(rec)
        for change in variants(setting):
            pred = predict_peak_gib(p.shape or own, _apply(setting, change), p.calib)
            peak = pred["total"]
            if need_gib(peak, margin) > budget_gib or pred.get("exceeds_cap"):
                continue  # too big, or an OOM under the record's engine.memory_cap_gib
            value = peak if objective == "memory" else metric(rec, col)
            key = (*_desc(value, higher and objective != "memory"), *_desc(metric(rec, tie), True),
                   len(change.keys() - FREE), len(change), peak)  # fmt: skip
            if best is None or key < best[0]:
                best = (key, Choice("predicted", rec, peak, need_gib(peak, margin), p.error_pct,
                                    change, p.model))  # fmt: skip
    return None if best is None else best[1]


def decide(
    records: list[dict[str, Any]],
    frame: pd.DataFrame,
    budget_gib: float,
    *,
    objective: str = "score",
    margin: float = 0.10,
    predictor: Predictor | None = None,
) -> Choice | None:
    """Measured if anything measured fits (and no other model was asked for), else predicted.

    ``frame`` must be ``records_frame(records)`` unchanged: its index maps rows to records.
    """
    if predictor is None or predictor.shape is None:
        row = pick_measured(frame, budget_gib, objective=objective, margin=margin)
        if row is not None:
            peak = float(row["peak_vram_reserved_gib"])
            return Choice("measured", records[row.name], peak, need_gib(peak, margin))
    return pick_predicted(records, budget_gib, objective=objective, margin=margin,
                          predictor=predictor)  # fmt: skip


def _desc(value: float | None, higher: bool) -> tuple[bool, float]:
    """Sort key part: missing values last, then best first."""
    return value is None, -(value or 0.0) if higher else (value or 0.0)
