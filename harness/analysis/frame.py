"""Trial records -> one table row per trial, from a sweep dir, records or an Optuna study.

`record_row` is the one map from a record to a row: the grid summary, the study summary and the
report all take their metric columns from it, under the names in `METRICS`.

Loaded records get in-memory keys the files never hold: ``_path`` (the record.json, or the
Optuna trial it came from), ``_dir`` (the trial's dir, where known), ``_label`` (a short name
built from the settings that vary) and ``_setting`` (that name without the replicate seed).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.settings import first_metric_stderr, setting_id
from harness.config.migrate import migrate_overrides, migrate_record

# The metric columns of every table of trials, in display order: (column, dotted path into the
# record). Units in the names; tokens/s counts only the tokens that carry loss.
METRICS: tuple[tuple[str, str], ...] = (
    ("score", "score"),
    ("score_stderr", "score_stderr"),
    ("loss_eval", "loss.eval"),
    ("loss_eval_stderr", "loss.eval_stderr"),
    ("loss_final_train", "loss.final_train"),
    ("loss_tokens_per_s", "throughput.loss_tokens_per_s"),
    ("step_time_median_s", "throughput.step_time_median_s"),
    ("step_time_iqr_s", "throughput.step_time_iqr_s"),
    ("peak_vram_reserved_gib", "peak_vram_reserved_gib"),
    ("peak_vram_allocated_gib", "peak_vram_allocated_gib"),
    ("peak_rss_gib", "peak_rss_gib"),
    ("params_trainable", "params.trainable"),
    ("params_total", "params.total"),
    ("time_load_s", "timings_s.load"),
    ("time_train_s", "timings_s.train"),
    ("time_total_s", "timings_s.total"),
)
METRIC_COLUMNS = tuple(col for col, _ in METRICS)
_METRIC_PATHS = dict(METRICS)
# What every summary (grid, study) shows of a record after its config keys.
SUMMARY_COLUMNS = ("status", *METRIC_COLUMNS, "error")
# Short labels for sweep keys that vary; anything else is shown as "<last part>=<value>".
SHORT = {
    "quant.type": "{}",
    "quant.double_quant": lambda v: "dq" if v else "no-dq",
    "lora.r": "r{}",
    "lora.variant": "{}",
    "train.batch_size": "b{}",
    "engine.checkpointing": "ckpt:{}",
    "engine.kernels": lambda v: "liger" if v == "liger" else "no-liger",
    "optim.name": "{}",
    "model.name": "{}",
}


@dataclass(frozen=True)
class StudySource:
    """An Optuna study in RDB storage, e.g. ``StudySource("sqlite:///sweep.db", "qlora")``."""

    storage: str
    study: str

    def __str__(self) -> str:
        from harness.sweep.storage import mask_url

        return f"study {self.study!r} in {mask_url(self.storage)}"


def in_todays_keys(rec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a record whose config and overrides use today's keys (harness.config.migrate):
    the one place analysis reads an older record's keys, so labels and columns name each setting
    one way whatever code wrote the record."""
    rec = migrate_record(rec)
    return {**rec, "overrides": migrate_overrides(rec.get("overrides") or [])}


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The frame of already loaded records (see ``harness.analysis.sources.load_records_frame``)."""
    frame = pd.DataFrame([record_row(r) for r in records])
    for col in METRIC_COLUMNS:
        # All-null columns (no CUDA, no RSS) come out as object; metrics are always numbers.
        frame[col] = pd.to_numeric(frame[col], errors="coerce") if col in frame else float("nan")
    return frame


def status_counts(frame: pd.DataFrame) -> str:
    """'13 success, 1 oom, 1 failed'."""
    return ", ".join(f"{n} {s}" for s, n in frame["status"].value_counts().items())


def varying_keys(records: list[dict[str, Any]]) -> list[str]:
    """Dotted config keys whose value differs between records (the sweep's grid)."""
    flat = [flatten(r.get("config") or {}) for r in records]
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys; lists stay values."""
    out: dict[str, Any] = {}
    for key, val in tree.items():
        name = f"{prefix}{key}"
        if isinstance(val, dict):
            out.update(flatten(val, f"{name}."))
        else:
            out[name] = val
    return out


def record_row(rec: dict[str, Any]) -> dict[str, Any]:
    """The one map from a record to a table row.

    Returns:
        ``trial``, ``label``, then `SUMMARY_COLUMNS` (``status``, every `METRICS` column,
        ``error``), ``device``, ``device_name``, ``model``, ``record_path``, a
        ``choice.<group>`` per Hydra group choice and every dotted config key.
    """
    row = {"trial": trial_name(rec), "label": rec.get("_label", ""), "status": rec.get("status")}
    row.update({col: metric(rec, col) for col, _ in METRICS})
    row.update({
        "error": rec.get("error"),
        "device": get_path(rec, "device.type"),
        "device_name": get_path(rec, "device.name"),
        "model": get_path(rec, "model.name"),
        "record_path": rec.get("_path"),
        "setting": rec.get("_setting") or rec.get("_label", ""),
        "setting_id": setting_id(rec),
        "seed": get_path(rec, "config.train.seed"),
    })  # fmt: skip
    row.update({f"choice.{k}": v for k, v in (rec.get("choices") or {}).items()})
    for key, val in flatten(rec.get("config") or {}).items():
        # Lists (eval.tasks, lora.targets) become strings so the frame stays parquet-friendly.
        row[key] = json.dumps(val) if isinstance(val, list | dict) else val
    return row


def metric(rec: dict[str, Any], col: str) -> Any:
    """One `METRICS` column of a record, e.g. ``metric(rec, "loss_tokens_per_s")``."""
    value = get_path(rec, _METRIC_PATHS[col])
    if value is None and col == "score_stderr":
        return first_metric_stderr(rec)
    if value is None and col == "peak_rss_gib":  # records that kept RSS per phase only
        phases = (get_path(rec, "memory.phases") or {}).values()
        return max((p["peak_rss_gib"] for p in phases if p.get("peak_rss_gib")), default=None)
    return value


def summary_row(rec: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """A summary's row, from `record_row`: `keys` as resolved (a bare group name as its choice;
    the override's text where the config has no such key), then `SUMMARY_COLUMNS`."""
    row = record_row(rec)
    given = override_items(rec.get("overrides") or [])
    out = {}
    for key in keys:
        value = row.get(key if "." in key else f"choice.{key}")
        out[key] = given.get(key) if value is None else value
    out.update({col: row[col] for col in SUMMARY_COLUMNS})
    return out


def get_path(rec: dict[str, Any], path: str) -> Any:
    """``get_path(rec, "loss.eval")`` -> rec["loss"]["eval"], or None where any part is missing."""
    node: Any = rec
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """``set_path(tree, "lora.r", 16)``: tree["lora"]["r"] = 16, making the dicts on the way."""
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def override_items(overrides: list[str]) -> dict[str, str]:
    """``["lora.r=16", "+x=1", "quant=fp4"]`` -> {"lora.r": "16", "x": "1", "quant": "fp4"}; a
    trial's own ``out_dir`` is not a setting."""
    items = {}
    for item in overrides:
        key, sep, val = item.partition("=")
        if sep and key != "out_dir":
            items[key.lstrip("+~")] = val
    return items


def trial_name(rec: dict[str, Any]) -> str:
    """The trial's dir name (sweep job number), else the start of its id."""
    path = rec.get("_path")
    if path and path.endswith("record.json"):
        return Path(path).parent.name
    return str(rec.get("trial_id", "?"))[:12]


def add_labels(recs: list[dict[str, Any]]) -> None:
    """Label each record by its grid values; with several models, the grid of each model's own."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in recs:
        groups.setdefault(str((rec.get("model") or {}).get("name")), []).append(rec)
    seen: dict[str, int] = {}
    for model, group in groups.items():
        keys = [k for k in label_keys(group) if k not in ("model", "model.name")]
        seeded = "train.seed" in keys  # the replicate axis: named apart from the setting
        keys = [k for k in keys if k != "train.seed"]
        for rec in group:
            parts = [model] if len(groups) > 1 else []
            parts += [short(k, value_of(rec, k)) for k in keys]
            setting = " ".join(parts) or ("" if seeded else trial_name(rec))
            rec["_setting"] = setting or "default"
            seed = f"seed={value_of(rec, 'train.seed')}" if seeded else ""
            label = " ".join(p for p in (setting, seed) if p)
            seen[label] = seen.get(label, 0) + 1
            rec["_label"] = label if seen[label] == 1 else f"{label} #{seen[label]}"


def label_keys(recs: list[dict[str, Any]]) -> list[str]:
    """The sweep's grid: keys of the trials' overrides (in order) whose values differ.

    Falls back to every varying config key when records carry no overrides.
    """
    keys: list[str] = []
    for rec in recs:
        keys += [k for k in override_items(rec.get("overrides") or []) if k not in keys]
    keys = keys or varying_keys(recs)
    return [k for k in keys if len({json.dumps(value_of(r, k), default=str) for r in recs}) > 1]


def value_of(rec: dict[str, Any], key: str) -> Any:
    """A dotted config value, or a group's choice for a bare group name (``quant=nf4``)."""
    if "." not in key:
        return (rec.get("choices") or {}).get(key)
    return flatten(rec.get("config") or {}).get(key)


def short(key: str, val: Any) -> str:
    """A grid value as a label part: ``r16``, ``dq``, ``ckpt:full``, else ``key=value``."""
    if isinstance(val, float):
        val = float(f"{val:.3g}")  # a sampled lr: 0.00016183718005855847 -> 0.000162
    fmt = SHORT.get(key)
    if fmt is None:
        bare = "." not in key and key in ("model", "quant", "optim")
        return str(val) if bare else f"{key.rsplit('.', 1)[-1]}={val}"
    return fmt(val) if callable(fmt) else fmt.format(val)


def read_error(e: Exception) -> str | None:
    """The one line a reader of records (report, pick) prints for input it cannot read: a missing
    file, a refused setting, a study storage it cannot open; None for any other error."""
    from sqlalchemy.exc import SQLAlchemyError

    from harness.errors import ConfigError

    if isinstance(e, FileNotFoundError | ConfigError):
        return str(e)
    if isinstance(e, SQLAlchemyError):  # an unreachable server, a file that is no study database
        return f"cannot read the study storage: {type(e).__name__}"
    return None
