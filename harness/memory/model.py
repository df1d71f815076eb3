"""Predict peak reserved VRAM of a fine-tuning setting, calibrated on measured records.

The byte counts come from ``memory_terms`` (weights, quantization constants, adapter, grads,
optimizer states, activations, logits). Calibration scales the two uncertain terms and adds a
constant overhead (allocator slack, cuBLAS workspace, dequantization buffers):
``total = static + a*activations + b*logits + c``, a ridge least-squares fit towards the
first-principles priors (see ``memory_fit``). The CUDA context (~0.3-0.6 GiB) is outside torch's
reserved figure; pick's safety margin covers it.
"""

from dataclasses import replace
from typing import Any

from harness.config.migrate import effective_engine, migrate_record
from harness.memory.anchors import LLAMA3_8B, PRIOR_ANCHORS, Point
from harness.memory.fit import Calibration, fit_terms, split_holdout, summarise_errors
from harness.memory.terms import (
    GIB,
    Setting,
    Shape,
    activation_bytes,
    logits_bytes,
    off_peak_bytes,
    static_bytes,
)

__all__ = [
    "LLAMA3_8B",
    "PRIOR_ANCHORS",
    "Calibration",
    "Setting",
    "Shape",
    "calibrate",
    "error_report",
    "predict_peak_gib",
]


def predict_peak_gib(
    shape: Shape, setting: Setting, calib: Calibration | None = None
) -> dict[str, float]:
    """Predicted train-phase peak reserved VRAM, broken down by component (GiB).

    Args:
        shape: model shape.
        setting: what moves memory (quant, r, targets, batch, seq, checkpointing, optimizer...).
        calib: fitted factors; None: the built-in prior (H100 anchors, harness/memory_anchors.py).

    Returns:
        {weights, quant_constants, lora_params, grads, optimizer_states, activations, logits,
        overhead, total, not_counted}; activations and logits include the calibration factors;
        ``not_counted`` (LoRA grads, paged optimizer states) is shown but outside ``total``.
    """
    calib = calib or prior_calibration()
    out = {k: v / GIB for k, v in static_bytes(shape, setting).items()}
    out["activations"] = calib.act_factor * activation_bytes(shape, setting) / GIB
    out["logits"] = calib.logits_factor * logits_bytes(shape, setting) / GIB
    out["overhead"] = calib.overhead_gib
    out["total"] = sum(out.values())
    cap = setting.memory_cap_gib
    if cap is not None and out["total"] > cap:
        # engine.memory_cap_gib: the allocator frees its cache rather than pass the cap, so the
        # overhead (slack) gives way; tensors do not: past the cap they are an OOM
        tensors = out["total"] - max(out["overhead"], 0.0)
        out["uncapped_total"] = out["total"]
        out["total"] = max(cap, tensors)
        out["exceeds_cap"] = tensors > cap
    out["not_counted"] = off_peak_bytes(shape, setting) / GIB  # informational, not in total
    return out


def terms_gib(shape: Shape, setting: Setting) -> tuple[float, float, float]:
    """(static, activations, logits) in GiB before calibration: the regressors of the fit."""
    static = sum(static_bytes(shape, setting).values()) / GIB
    return static, activation_bytes(shape, setting) / GIB, logits_bytes(shape, setting) / GIB


def shape_from_record(model: dict[str, Any]) -> Shape | None:
    """Shape from a record's ``model`` block (None if a field is missing)."""
    keys = ("hidden_size", "num_layers", "intermediate_size", "vocab_size", "num_heads")
    if any(model.get(k) is None for k in keys):
        return None
    return Shape(
        **{k: int(model[k]) for k in keys},
        num_kv_heads=int(model.get("num_kv_heads") or model["num_heads"]),
        tie_embeddings=bool(model.get("tie_word_embeddings", False)),
    )


def setting_from_record(rec: dict[str, Any]) -> Setting:
    """Setting of a trial record: its config, and whether it trained through a chunked LM head
    (``levers.chunked_loss``, recorded since the harness detects TRL's fused LM head)."""
    chunked = bool((rec.get("levers") or {}).get("chunked_loss", False))
    config = {**migrate_record(rec)["config"], "engine": effective_engine(rec)}
    return setting_from_config(config, chunked_loss=chunked)


def setting_from_config(cfg: dict[str, Any], *, chunked_loss: bool = False) -> Setting:
    """Setting from a record's resolved ``config`` (nested by group); missing keys keep defaults.

    4-bit records get ``upcast_frozen``: that is what the harness's loading path does.
    """
    q, lo = cfg.get("quant", {}), cfg.get("lora", {})
    o, d, t = cfg.get("optim", {}), cfg.get("data", {}), cfg.get("train", {})
    e = cfg.get("engine", {})
    targets = lo.get("targets", "all-linear")
    base = Setting()
    return replace(
        base,
        quant=q.get("type", base.quant),
        double_quant=bool(q.get("double_quant", base.double_quant)),
        r=int(lo.get("r", base.r)),
        targets=targets if isinstance(targets, str) else tuple(targets),
        variant=lo.get("variant", base.variant),
        lora_dtype=lo.get("dtype", base.lora_dtype),
        dropout=float(lo.get("dropout", base.dropout)),
        batch_size=int(t.get("batch_size", base.batch_size)),
        seq_len=int(d.get("max_seq_len", base.seq_len)),
        checkpointing=e.get("checkpointing", base.checkpointing),
        optimizer=o.get("name", base.optimizer),
        kernels=e.get("kernels", base.kernels),
        # harness/models.py runs prepare_model_for_kbit_training on every 4-bit model;
        # engine.frozen_dtype=bf16 casts its fp32 copies back.
        upcast_frozen=q.get("type", base.quant) in ("nf4", "fp4")
        and e.get("frozen_dtype", "fp32") == "fp32",
        residual_fp32=e.get("residual_dtype", "auto") == "fp32",
        projections_fp32=e.get("projection_dtype", "auto") == "fp32",
        lora_kernel=e.get("lora_kernel", base.lora_kernel),
        checkpoint_fraction=_fraction(e.get("checkpoint_fraction", base.checkpoint_fraction)),
        slim_activations=bool(e.get("slim_activations", base.slim_activations)),
        kept_layers=str(e.get("kept_layers", base.kept_layers)),
        host_layers=int(e.get("host_layers", base.host_layers) or 0),
        embeddings_on_cpu=bool(e.get("embeddings_on_cpu", base.embeddings_on_cpu)),
        head_on_cpu=bool(e.get("head_on_cpu", base.head_on_cpu)),
        chunked_loss=chunked_loss,
        memory_cap_gib=_fraction(e.get("memory_cap_gib")),
        causal_padding=bool(e.get("causal_padding", False)),
    )


def measured_points(records: list[dict[str, Any]]) -> list[Point]:
    """(shape, setting, measured peak reserved GiB, label) of successful CUDA records; not those
    run under engine.memory_cap_gib, whose peak is the cap's doing, not the setting's."""
    points = []
    for rec in records:
        peak = rec.get("peak_vram_reserved_gib")
        shape = shape_from_record(rec.get("model") or {})
        if rec.get("status") != "success" or peak is None or shape is None:
            continue
        setting = setting_from_record(rec)
        if setting.memory_cap_gib is not None:
            continue
        label = rec.get("_label") or rec.get("trial_id", "?")
        points.append((shape, setting, float(peak), label))
    return points


def calibrate(records: list[dict[str, Any]], *, use_priors: bool = True) -> Calibration:
    """Fit activation and logit factors and a constant overhead on measured CUDA records.

    Args:
        records: trial records; only successful ones with a CUDA peak and a model shape count.
        use_priors: also fit the built-in H100 anchors (published + probe, memory_anchors.py).

    Returns:
        The fitted factors, with how many records and priors they rest on.
    """
    return _fit(measured_points(records), use_priors=use_priors)


def _fit(points: list[Point], *, use_priors: bool = True) -> Calibration:
    priors = list(PRIOR_ANCHORS) if use_priors else []
    rows = [(*terms_gib(sh, st), peak) for sh, st, peak, _ in points + priors]
    return fit_terms(rows, n_records=len(points), n_priors=len(priors))


_PRIOR: list[Calibration] = []


def prior_calibration() -> Calibration:
    """Calibration on the built-in anchors only (cached)."""
    if not _PRIOR:
        _PRIOR.append(_fit([]))
    return _PRIOR[0]


def error_report(
    records: list[dict[str, Any]], holdout_frac: float = 0.3, seed: int = 0
) -> dict[str, Any]:
    """Mean absolute % error of predictions on held-out measured records.

    Calibrates on the rest (plus the priors) and predicts the held-out ones. With no measured CUDA
    record, the anchors are scored leave-one-out, and ``basis`` says so.

    Returns:
        {basis, n_fit, n_holdout, mape_pct, max_ape_pct, rows: [{label, measured_gib,
        predicted_gib, error_pct}]}
    """
    points = measured_points(records)
    if not points:
        rows = [point_error(a, _loo(k)) for k, a in enumerate(PRIOR_ANCHORS)]
        return summarise_errors(rows, "built-in anchors, leave-one-out (no local CUDA record)", 0)
    fit_idx, hold_idx = split_holdout(len(points), holdout_frac, seed)
    calib = _fit([points[i] for i in fit_idx])
    rows = [point_error(points[i], calib) for i in hold_idx]
    return summarise_errors(rows, f"{len(hold_idx)} held-out CUDA records", len(fit_idx))


def _loo(k: int) -> Calibration:
    others = PRIOR_ANCHORS[:k] + PRIOR_ANCHORS[k + 1 :]
    rows = [(*terms_gib(sh, st), peak) for sh, st, peak, _ in others]
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


def _fraction(value) -> float | None:
    return None if value is None else float(value)
