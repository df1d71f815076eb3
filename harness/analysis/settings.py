"""Settings and their replicates: trials that differ only in ``train.seed`` are one setting run
several times (``python -m harness -m lora.r=4,16 train.seed=0,1,2``, or a study's
``replicates:``). Tables and picks aggregate them: mean, spread (sd and a t interval), n.
"""

import hashlib
import json
from typing import Any

import pandas as pd

from harness.analysis.stats import interval, mean_interval

# Columns averaged over a setting's replicates (costs and their context).
MEAN_COLUMNS = ("loss_tokens_per_s", "step_time_median_s", "peak_vram_reserved_gib",
                "peak_rss_gib", "params_trainable")  # fmt: skip


def setting_id(rec: dict[str, Any]) -> str:
    """The setting a record ran, whatever its seed: replicates (``train.seed=0,1,2``) share it."""
    config = json.loads(json.dumps(rec.get("config") or {}, default=str))
    (config.get("train") or {}).pop("seed", None)
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def first_metric_stderr(rec: dict[str, Any]) -> float | None:
    """For a record without ``score_stderr`` (its score is the first task's first metric): that
    metric's stderr after tuning."""
    if rec.get("score") is None:
        return None
    for metrics in (rec.get("lm_eval") or {}).values():
        for m in metrics.values():
            return m.get("stderr_after")
    return None


def has_replicates(frame: pd.DataFrame) -> bool:
    """Whether some setting ran more than once (successfully)."""
    ok = frame[frame["status"] == "success"]
    return bool(len(ok)) and ok["setting_id"].duplicated().any()


def aggregate(frame: pd.DataFrame, column: str, stderr: str | None) -> pd.DataFrame:
    """One row per setting of the successful trials: ``setting``, ``n`` (replicates), the metric's
    ``mean``, ``sd``, ``lo``/``hi`` (95%: t over seeds with n >= 2, else value +- 1.96 stderr),
    the mean of each cost column, and ``rows`` (frame indices of its trials).

    Ordered as the settings first appear in ``frame``.
    """
    ok = frame[(frame["status"] == "success") & frame[column].notna()]
    out = []
    for sid, group in ok.groupby("setting_id", sort=False):
        values = group[column].astype(float).tolist()
        if len(values) >= 2:
            ci = mean_interval(values)
        else:
            se = group[stderr].iloc[0] if stderr and stderr in group else None
            ci = interval(values[0], None if pd.isna(se) else float(se))
        row = {"setting_id": sid, "setting": group["setting"].iloc[0], "n": len(values),
               "mean": ci.value, "sd": pd.Series(values).std() if len(values) > 1 else None,
               "se": ci.se, "lo": ci.lo, "hi": ci.hi, "rows": list(group.index)}  # fmt: skip
        for col in MEAN_COLUMNS:
            row[col] = group[col].mean() if col in group and group[col].notna().any() else None
        out.append(row)
    return pd.DataFrame(out)
