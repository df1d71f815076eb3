"""Per-item results beside a trial's record, read for paired comparisons.

    <trial>/eval_items.jsonl      one line per lm-eval item: {"phase": "after" | "before",
                                  "task", "doc_id", "<metric>": value, ...}
    <trial>/heldout_items.jsonl   one line per held-out example: {"index", "loss", "tokens"}
                                  (harness/trial/heldout.py)

Trials of one sweep are scored on the same items, so two settings are compared item by item
(harness.analysis.stats.paired_delta) rather than by two independent means.
"""

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

EVAL_ITEMS = "eval_items.jsonl"
HELDOUT_ITEMS = "heldout_items.jsonl"

# {group: {item key: (value, weight)}}: a group is an lm-eval task, or "heldout".
Items = dict[str, dict[Any, tuple[float, float]]]


def trial_dir(rec: dict[str, Any]) -> Path | None:
    """Where a loaded record's files are: its record.json's folder, else its ``_dir``."""
    path = rec.get("_path")
    if path and str(path).endswith("record.json"):
        return Path(path).parent
    return Path(rec["_dir"]) if rec.get("_dir") else None


def score_items(rec: dict[str, Any]) -> Items | None:
    """Each task's primary metric per item after tuning, signed so that higher is better (as the
    headline score is); None where the trial kept no per-item file."""
    where = trial_dir(rec)
    rows = _read(str(where / EVAL_ITEMS)) if where else None
    if not rows:
        return None
    primary = {}  # task -> (metric, sign): the first metric of the task in the record
    for task, metrics in (rec.get("lm_eval") or {}).items():
        if metrics:
            name, m = next(iter(metrics.items()))
            primary[task] = (name, 1.0 if m.get("higher_is_better", True) else -1.0)
    out: Items = {}
    for row in rows:
        task = row.get("task")
        if row.get("phase") != "after" or task not in primary:
            continue
        name, sign = primary[task]
        value = row.get(name)
        if isinstance(value, int | float) and math.isfinite(value):
            out.setdefault(task, {})[row.get("doc_id")] = (sign * float(value), 1.0)
    return out or None


def loss_items(rec: dict[str, Any]) -> Items | None:
    """Held-out loss per example, weighted by its loss tokens; None without the file."""
    where = trial_dir(rec)
    rows = _read(str(where / HELDOUT_ITEMS)) if where else None
    if not rows:
        return None
    return {"heldout": {r["index"]: (float(r["loss"]), float(r["tokens"])) for r in rows}}


def paired(a: Items, b: Items) -> dict[str, list[tuple[float, float, float]]]:
    """(a, b, weight) for every item both scored, per group; a group whose items differ in
    weight (other tokens: not the same data) is not paired."""
    out = {}
    for group, items in a.items():
        other = b.get(group) or {}
        both = [(v, other[k][0], w) for k, (v, w) in items.items() if k in other]
        same = all(other[k][1] == w for k, (_, w) in items.items() if k in other)
        if len(both) >= 2 and same:
            out[group] = both
    return out if len(out) == len(a) == len(b) else {}


@lru_cache(maxsize=512)
def _read(path: str) -> tuple[dict[str, Any], ...] | None:
    """A JSON-lines file as rows (cached: per-item files are written once, never edited)."""
    p = Path(path)
    if not p.is_file():
        return None
    return tuple(json.loads(line) for line in p.read_text().splitlines() if line.strip())
