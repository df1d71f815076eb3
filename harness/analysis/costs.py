"""Costs with their spread and assumptions, in words: throughput with its step-time spread, the
ranking metric with its interval and replicates, and what a memory prediction assumes and how far
its error is known.
"""

from typing import Any

import pandas as pd

from harness.analysis.frame import get_path, metric
from harness.analysis.rankby import RankBy
from harness.analysis.stats import interval, mean_interval
from harness.memory.model import PRIOR_ANCHORS, all_points, shape_from_record
from harness.memory.terms import Shape

# Step-time IQR over median above which tokens/s is flagged: 25% means a quarter of the steps
# ran more than ~12% off the median (other load on the machine, GC, a data stall).
WIDE_SPREAD = 0.25
# Model sizes (decoder linear params) the memory model's error was measured on, stretched by
# this factor either way, are "calibrated"; beyond it the held-out error says nothing.
CALIBRATED_STRETCH = 2.0


def throughput_text(rec: dict[str, Any]) -> str:
    """'2,950 loss tokens/s (step time 0.41 s median, IQR 0.03 s = 7%)', with a warning when
    the spread is so wide that the number means little."""
    tps = metric(rec, "loss_tokens_per_s")
    if tps is None:
        return "n/a loss tokens/s"
    med, iqr = metric(rec, "step_time_median_s"), metric(rec, "step_time_iqr_s")
    text = f"{sig(tps)} loss tokens/s"
    if med and iqr is not None:
        rel = iqr / med
        text += f" (step time {med:.3g} s median, IQR {iqr:.2g} s = {rel:.0%})"
        if rel > WIDE_SPREAD:
            text += f" [WARNING: step times spread over {rel:.0%} of the median; tokens/s is rough]"
    return text


def sig(value: float) -> str:
    """Throughput with sensible significant digits: 2,950 / 9.3 / 0.412."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def metric_text(records: list[dict[str, Any]], m: RankBy) -> str:
    """The ranking metric of a setting: one trial's value with its 95% interval, or the mean
    over its replicate seeds with sd and n."""
    values = [v for v in (metric(r, m.column) for r in records) if v is not None]
    if not values:
        return f"{m.title} n/a"
    digits = 4 if abs(values[0]) >= 1 else 3
    if len(values) >= 2:
        ci = mean_interval(values)
        sd = pd.Series(values).std()
        return f"{m.title} {ci.text(digits)}, mean of {len(values)} seeds (sd {sd:.2g})"
    se = metric(records[0], m.stderr) if m.stderr else None
    ci = interval(values[0], se)
    tail = "" if ci.se is not None else " (no stderr recorded)"
    return f"{m.title} {ci.text(digits)}{tail}"


def prediction_assumptions(rec: dict[str, Any], changes: dict[str, Any]) -> str:
    """What a prediction for another model takes from the measured trial."""
    cfg = rec.get("config") or {}
    seq = get_path(cfg, "data.max_seq_len")
    batch = changes.get("train.batch_size", get_path(cfg, "train.batch_size"))
    data = get_path(cfg, "data.path") or get_path(cfg, "data.name") or "?"
    packing = "packed" if get_path(cfg, "data.packing") else "unpacked"
    return f"assumes sequence length {seq}, batch {batch}, {packing} {data} as in its trial"


def calibrated_range(records: list[dict[str, Any]]) -> tuple[float, float]:
    """(smallest, largest) decoder-linear parameter count the memory model was measured on."""
    sizes = [p[0].linear_params for p in (*PRIOR_ANCHORS, *all_points(records))]
    return min(sizes), max(sizes)


def outside_calibration(
    shape: Shape | None, rec: dict[str, Any], records: list[dict[str, Any]]
) -> str | None:
    """Why a prediction's error is unknown (its model far outside the calibrated sizes), or None."""
    shape = shape or shape_from_record(rec.get("model") or {})
    if shape is None:
        return None
    low, high = calibrated_range(records)
    size = shape.linear_params
    if size > high * CALIBRATED_STRETCH:
        return f"{size / high:.1f}x the largest calibrated model"
    if size < low / CALIBRATED_STRETCH:
        return f"{low / size:.1f}x smaller than the smallest calibrated model"
    return None
