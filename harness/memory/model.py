"""Predict peak reserved VRAM of a fine-tuning setting, calibrated on measured CUDA records.

    total = weights + quant constants + adapters + optimizer states   (counted: terms.py)
          + CUDA graphs' buffers                                      (counted: terms.py)
          + a*activations + b*logits + overhead                      (allocated: activations.py)
          + the allocator's slack over allocated                     (allocator.py)
          capped at engine.memory_cap_gib

The factors are a ridge least-squares fit (fit.py) on the repo's committed CUDA records, the
built-in H100 probe anchors and the records a command is given. Its error is leave-one-out: each
record predicted by a fit without it. The CUDA context (~0.3-0.6 GiB) is outside torch's
reserved figure; pick's safety margin covers it.

Every successful CUDA record counts, read as what it ran (records.py): a harness trial by its
engine and levers; the reference loop (``runner: loop``) as bf16 frozen weights, full recompute
and HF's loss on materialised logits. Left out (``records.describes``): Unsloth trials
(``engine.backend=unsloth``), a peer that is measured but never picked, whose qwen2.5-1.5b
record the count misses by 12.7%; and TRL's activation offloading in records that predate the
harness's own.

    python -m harness.memory.model      # the leave-one-out table over the repo's records
"""

import sys
from dataclasses import replace
from typing import Any

from harness.memory.activations import activation_bytes, logits_bytes
from harness.memory.allocator import apply_cap, slack_terms
from harness.memory.anchors import LLAMA3_8B, PRIOR_ANCHORS
from harness.memory.fit import TERMS, Calibration, Row, error_line, fit_terms, summarise_errors
from harness.memory.records import (
    Point,
    measured_points,
    repo_records,
    setting_from_config,
    setting_from_record,
    shape_from_record,
)
from harness.memory.terms import GIB, Setting, Shape, off_peak_bytes, static_bytes

__all__ = [
    "LLAMA3_8B",
    "PRIOR_ANCHORS",
    "Calibration",
    "Setting",
    "Shape",
    "calibrate",
    "error_report",
    "measured_points",
    "predict_peak_gib",
    "setting_from_config",
    "setting_from_record",
    "shape_from_record",
]


def predict_peak_gib(
    shape: Shape, setting: Setting, calib: Calibration | None = None
) -> dict[str, float]:
    """Predicted train-phase peak reserved VRAM, broken down by component (GiB).

    Args:
        shape: model shape.
        setting: what moves memory (quant, r, targets, batch, seq, checkpointing, levers...).
        calib: fitted factors; None: the built-in calibration (``prior_calibration``).

    Returns:
        {weights, quant_constants, lora_params, grads, optimizer_states, graph_buffers (engine.
        cuda_graphs), activations, logits, overhead, total, tensors_gib, not_counted}:
        activations and logits with their factors; overhead is the fitted constant, the
        allocator's slack and any memory carried over from an earlier trial; tensors_gib is the
        allocated peak; ``not_counted`` (LoRA grads, paged optimizer states) is shown but outside
        ``total``. Under a cap that binds, ``total`` is the cap and ``uncapped_total`` and
        ``exceeds_cap`` (an OOM) come with it.
    """
    calib = calib or prior_calibration()
    c = dict(zip(TERMS, calib.coef, strict=True))
    out = {k: v / GIB for k, v in static_bytes(shape, setting).items()}
    out["activations"] = c["activations"] * activation_bytes(shape, setting) / GIB
    out["logits"] = c["logits"] * logits_bytes(shape, setting) / GIB
    slack = sum(c[k] * v for k, v in slack_terms(shape, setting).items())
    out["overhead"] = c["overhead"] + setting.carried_gib + slack
    out["total"] = sum(out.values())
    out["tensors_gib"] = out["total"] - slack
    out = apply_cap(out, setting.memory_cap_gib)
    out["not_counted"] = off_peak_bytes(shape, setting) / GIB  # informational, not in total
    return out


def fit_row(shape: Shape, setting: Setting, measured: float) -> Row:
    """(counted fixed GiB, the ``TERMS`` quantities in GiB, measured): one row of the fit."""
    fixed = sum(static_bytes(shape, setting).values()) / GIB + setting.carried_gib
    slack = slack_terms(shape, setting)
    terms = {"activations": activation_bytes(shape, setting) / GIB,
             "logits": logits_bytes(shape, setting) / GIB, "overhead": 1.0, **slack}  # fmt: skip
    return fixed, tuple(terms[t] for t in TERMS), measured


def builtin_points() -> list[Point]:
    """The repo's committed CUDA records as points (``records.REPO_RECORDS``)."""
    return measured_points(repo_records())


def all_points(records: list[dict[str, Any]]) -> list[Point]:
    """The built-in points and those of ``records`` that are not among them (by trial id)."""
    known = {r.get("trial_id") for r in repo_records()}
    return builtin_points() + measured_points(
        [r for r in records if r.get("trial_id") not in known]
    )


def calibrate(records: list[dict[str, Any]], *, use_priors: bool = True) -> Calibration:
    """Fit the factors on the repo's CUDA records, the given ones and the built-in anchors.

    Args:
        records: trial records; only successful ones with a CUDA peak and a model shape count.
        use_priors: also fit the built-in H100 anchors (published + probe, anchors.py).

    Returns:
        The fitted factors, with how many records and anchors they rest on.
    """
    points = all_points(records)
    return replace(_fit(points, use_priors=use_priors), error=loo_report(points)["line"])


def _fit(points: list[Point], *, use_priors: bool = True) -> Calibration:
    """Records run under a memory cap do not calibrate: their peak is the cap's doing."""
    fitted = [p for p in points if p[1].memory_cap_gib is None]
    priors = list(PRIOR_ANCHORS) if use_priors else []
    rows = [fit_row(sh, st, peak) for sh, st, peak, _ in fitted + priors]
    return fit_terms(rows, n_records=len(fitted), n_priors=len(priors))


_PRIOR: list[Calibration] = []


def prior_calibration() -> Calibration:
    """Calibration on the built-in anchors and the repo's committed records (cached)."""
    if not _PRIOR:
        points = builtin_points()
        _PRIOR.append(replace(_fit(points), error=loo_report(points)["line"]))
    return _PRIOR[0]


def error_report(records: list[dict[str, Any]], *, by_setting: bool = False) -> dict[str, Any]:
    """Leave-one-out error of the predicted peak over every measured CUDA record.

    Each record (the repo's and the given ones) is predicted by a fit on all the others and the
    anchors; with ``by_setting``, on all records of other settings (repeats of the same shape and
    setting, capped or not, left out with it). With no CUDA record at all, the anchors are scored
    leave-one-out, and ``basis`` says so.

    Returns:
        {basis, n_fit, n_holdout, median_ape_pct, mape_pct, max_ape_pct, rows: [{label,
        measured_gib, predicted_gib, error_pct}]}
    """
    return loo_report(all_points(records), by_setting=by_setting)


def loo_report(points: list[Point], *, by_setting: bool = False) -> dict[str, Any]:
    """``error_report`` of these points."""
    if not points:
        rows = [point_error(a, _loo_anchor(k)) for k, a in enumerate(PRIOR_ANCHORS)]
        return summarise_errors(rows, "built-in anchors, leave-one-out (no CUDA record)", 0)
    key = [_setting_key(p) if by_setting else k for k, p in enumerate(points)]
    rows = [point_error(p, _fit([q for j, q in enumerate(points) if key[j] != key[k]]))
            for k, p in enumerate(points)]  # fmt: skip
    what = f"{len(set(key))} settings of " if by_setting else ""
    basis = f"leave-one-out over {what}{len(points)} CUDA records"
    return summarise_errors(rows, basis, len(points) - 1)


def _setting_key(point: Point) -> tuple[Shape, Setting]:
    return point[0], replace(point[1], carried_gib=0.0, memory_cap_gib=None)


def _loo_anchor(k: int) -> Calibration:
    others = PRIOR_ANCHORS[:k] + PRIOR_ANCHORS[k + 1 :]
    rows = [fit_row(sh, st, peak) for sh, st, peak, _ in others]
    return fit_terms(rows, n_records=0, n_priors=len(rows))


def point_error(point: Point, calib: Calibration) -> dict[str, Any]:
    """{label, measured_gib, predicted_gib, error_pct} of one measured point."""
    shape, setting, peak, label = point
    pred = predict_peak_gib(shape, setting, calib)["total"]
    return {
        "label": label,
        "measured_gib": peak,
        "predicted_gib": pred,
        "error_pct": 100.0 * (pred - peak) / peak,
    }


def error_table(err: dict[str, Any]) -> str:
    """Markdown: one row per record, worst first, under the summary line."""
    lines = [f"Memory model: {error_line(err)}; mean {err['mape_pct']:.1f}%.", "",
             "| record | measured GiB | predicted GiB | error |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for r in sorted(err["rows"], key=lambda r: -abs(r["error_pct"])):
        lines.append(f"| `{r['label']}` | {r['measured_gib']:.2f} | {r['predicted_gib']:.2f} | "
                     f"{r['error_pct']:+.1f}% |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    print(error_table(error_report([])))
    print(f"\nBy setting: {error_line(error_report([], by_setting=True))}.")
    print(f"Factors: {prior_calibration().describe()}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
