"""Where records come from: a sweep dir, a record.json, an Optuna study, or records in hand.

Kept apart from ``frame`` (the record-to-row map), which the study reader itself builds on.
"""

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.frame import StudySource, add_labels, in_todays_keys, records_frame
from harness.trial.record import find_records, read_record

Source = Path | str | StudySource | Iterable[dict[str, Any]]  # or an optuna.Study


def load_records(source: Source) -> list[dict[str, Any]]:
    """Records from a sweep dir (recursive), a record.json, a study, or records already loaded."""
    if isinstance(source, StudySource) or hasattr(source, "get_trials"):  # or an optuna.Study
        from harness.analysis.optuna_records import study_records

        recs = study_records(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such sweep dir or record")
        paths = [path] if path.is_file() else find_records(path)
        recs = [{**read_record(p), "_path": str(p)} for p in paths]
    else:
        recs = list(source)
    recs = [in_todays_keys(r) for r in recs]
    add_labels(recs)
    return recs


def load_records_frame(source: Source) -> pd.DataFrame:
    """One row per trial: dotted config columns (``lora.r``, ``quant.type``) plus metrics.

    Args:
        source: a sweep dir, a record.json, a ``StudySource`` or an iterable of record dicts.

    Returns:
        The columns of `record_row`; failed and OOM trials included.
    """
    return records_frame(load_records(source))
