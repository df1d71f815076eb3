"""Trial records -> one pandas row per trial, from a sweep dir, records or an Optuna study.

Loaded records get two in-memory keys the files never hold: ``_path`` (the record.json, or the
Optuna trial it came from) and ``_label`` (a short name built from the settings that vary).
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.trial.record import find_records, read_record

# Metric columns every frame has, in display order.
METRICS = (
    "score",
    "train_tokens_per_s",
    "peak_vram_reserved_gib",
    "peak_vram_allocated_gib",
    "peak_rss_gib",
    "params_trainable",
    "params_total",
    "final_train_loss",
    "eval_loss",
    "step_time_median_s",
    "train_s",
)
# Short labels for sweep keys that vary; anything else is shown as "<last part>=<value>".
SHORT = {
    "quant.type": "{}",
    "quant.double_quant": lambda v: "dq" if v else "no-dq",
    "lora.r": "r{}",
    "lora.variant": "{}",
    "train.batch_size": "b{}",
    "train.checkpointing": "ckpt:{}",
    "train.kernels": lambda v: "liger" if v == "liger" else "no-liger",
    "train.compile": lambda v: "compile" if v else "eager",
    "optim.name": "{}",
    "model.name": "{}",
}
# Optuna trial state -> record status, for trials whose record.json is missing.
OPTUNA_STATES = {"COMPLETE": "success", "FAIL": "failed", "PRUNED": "pruned"}


@dataclass(frozen=True)
class StudySource:
    """An Optuna study in RDB storage, e.g. ``StudySource("sqlite:///sweep.db", "qlora")``."""

    storage: str
    study: str

    def __str__(self) -> str:
        return f"study {self.study!r} in {self.storage}"


Source = Path | str | StudySource | Iterable[dict[str, Any]]  # or an optuna.Study


def load_records(source: Source) -> list[dict[str, Any]]:
    """Records from a sweep dir (recursive), a record.json, a study, or records already loaded."""
    if isinstance(source, StudySource):
        import optuna

        recs = _study_records(optuna.load_study(study_name=source.study, storage=source.storage))
    elif hasattr(source, "get_trials"):  # an optuna.Study already in hand
        recs = _study_records(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such sweep dir or record")
        paths = [path] if path.is_file() else find_records(path)
        recs = [{**read_record(p), "_path": str(p)} for p in paths]
    else:
        recs = [dict(r) for r in source]
    _add_labels(recs)
    return recs


def load_records_frame(source: Source) -> pd.DataFrame:
    """One row per trial: dotted config columns (``lora.r``, ``quant.type``) plus metrics.

    Args:
        source: a sweep dir, a record.json, a ``StudySource`` or an iterable of record dicts.

    Returns:
        Columns ``trial``, ``label``, ``status``, ``error``, the ``METRICS``, ``device``,
        ``model``, ``choice.<group>`` and every config key; failed and OOM trials included.
    """
    return records_frame(load_records(source))


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The frame of already loaded records (see ``load_records_frame``)."""
    rows = [_row(r) for r in records]
    frame = pd.DataFrame(rows)
    for col in METRICS:
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


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    tp, params = rec.get("throughput") or {}, rec.get("params") or {}
    loss, device = rec.get("loss") or {}, rec.get("device") or {}
    train_mem = ((rec.get("memory") or {}).get("phases") or {}).get("train") or {}
    row = {
        "trial": trial_name(rec),
        "label": rec.get("_label", ""),
        "status": rec.get("status"),
        "error": rec.get("error"),
        "score": rec.get("score"),
        "train_tokens_per_s": tp.get("loss_tokens_per_s"),
        "peak_vram_reserved_gib": rec.get("peak_vram_reserved_gib"),
        "peak_vram_allocated_gib": rec.get("peak_vram_allocated_gib"),
        "peak_rss_gib": train_mem.get("peak_rss_gib"),
        "params_trainable": params.get("trainable"),
        "params_total": params.get("total"),
        "final_train_loss": loss.get("final_train"),
        "eval_loss": loss.get("eval"),
        "step_time_median_s": tp.get("step_time_median_s"),
        "train_s": (rec.get("timings_s") or {}).get("train"),
        "device": device.get("type"),
        "device_name": device.get("name"),
        "model": (rec.get("model") or {}).get("name"),
        "record_path": rec.get("_path"),
    }
    row.update({f"choice.{k}": v for k, v in (rec.get("choices") or {}).items()})
    for key, val in flatten(rec.get("config") or {}).items():
        # Lists (eval.tasks, lora.targets) become strings so the frame stays parquet-friendly.
        row[key] = json.dumps(val) if isinstance(val, list | dict) else val
    return row


def trial_name(rec: dict[str, Any]) -> str:
    """The trial's dir name (sweep job number), else the start of its id."""
    path = rec.get("_path")
    if path and path.endswith("record.json"):
        return Path(path).parent.name
    return str(rec.get("trial_id", "?"))[:12]


def _add_labels(recs: list[dict[str, Any]]) -> None:
    """Label each record by its grid values; with several models, the grid of each model's own."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in recs:
        groups.setdefault(str((rec.get("model") or {}).get("name")), []).append(rec)
    seen: dict[str, int] = {}
    for model, group in groups.items():
        keys = [k for k in label_keys(group) if k not in ("model", "model.name")]
        for rec in group:
            parts = [model] if len(groups) > 1 else []
            parts += [short(k, value_of(rec, k)) for k in keys]
            label = " ".join(parts) or trial_name(rec)
            seen[label] = seen.get(label, 0) + 1
            rec["_label"] = label if seen[label] == 1 else f"{label} #{seen[label]}"


def label_keys(recs: list[dict[str, Any]]) -> list[str]:
    """The sweep's grid: keys of the trials' overrides (in order) whose values differ.

    Falls back to every varying config key when records carry no overrides.
    """
    keys: list[str] = []
    for rec in recs:
        for item in rec.get("overrides") or []:
            key = item.split("=", 1)[0].lstrip("+~")
            if key not in keys:
                keys.append(key)
    keys = keys or varying_keys(recs)
    return [k for k in keys if len({json.dumps(value_of(r, k), default=str) for r in recs}) > 1]


def value_of(rec: dict[str, Any], key: str) -> Any:
    """A dotted config value, or a group's choice for a bare group name (``quant=nf4``)."""
    if "." not in key:
        return (rec.get("choices") or {}).get(key)
    return flatten(rec.get("config") or {}).get(key)


def short(key: str, val: Any) -> str:
    """A grid value as a label part: ``r16``, ``dq``, ``ckpt:full``, else ``key=value``."""
    fmt = SHORT.get(key)
    if fmt is None:
        bare = "." not in key and key in ("model", "quant", "optim")
        return str(val) if bare else f"{key.rsplit('.', 1)[-1]}={val}"
    return fmt(val) if callable(fmt) else fmt.format(val)


def _study_records(study: Any) -> list[dict[str, Any]]:
    """Records of an Optuna study: ``record_dir`` user attr, else rebuilt from the trial."""
    recs = []
    for trial in study.get_trials(deepcopy=False):
        rec_dir = trial.user_attrs.get("record_dir")
        path = Path(rec_dir) / "record.json" if rec_dir else None
        if path is not None and path.is_file():
            recs.append({**read_record(path), "_path": str(path)})
        else:
            recs.append(_record_from_trial(trial, rec_dir))
    return recs


def _record_from_trial(trial: Any, rec_dir: str | None) -> dict[str, Any]:
    """A partial record from Optuna's view of a trial whose record.json is missing."""
    attrs = dict(trial.user_attrs)
    state = trial.state.name
    status = attrs.get("status") or OPTUNA_STATES.get(state, state.lower())
    config: dict[str, Any] = {}
    for key, val in trial.params.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = val
    why = f"record.json missing ({rec_dir or 'no record_dir user attr'}); row from Optuna"
    return {
        "trial_id": f"optuna-{trial.number}",
        "status": status,
        "error": attrs.get("error") or why,
        "config": config,
        "score": attrs.get("score", trial.values[0] if trial.values else None),
        "throughput": {"loss_tokens_per_s": attrs.get("train_tokens_per_s")},
        "peak_vram_reserved_gib": attrs.get("peak_vram_reserved_gib"),
        "peak_vram_allocated_gib": attrs.get("peak_vram_allocated_gib"),
        "params": {"trainable": attrs.get("params_trainable")},
        "_path": f"optuna trial {trial.number}",
    }
