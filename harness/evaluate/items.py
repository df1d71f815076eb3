"""Per-item results: what lm-eval scored on each item, for paired comparisons between trials.

``<trial>/eval_items.jsonl`` holds one JSON line per scored item, task and phase:

    {"phase": "after" | "before", "task": str, "doc_id": int, "<metric>": float, ...}

with every per-item metric lm-eval gives that is one number (acc, acc_norm, exact_match, and for
perplexity tasks the item's log-likelihood under the metric's name, which lm-eval aggregates as
exp(-mean)). A metric under a filter other than lm-eval's default is named like the scores
(``exact_match_strict_match``). Per-item pairs such as wikitext's (log-likelihood, words) are left
out.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any

ITEMS_NAME = "eval_items.jsonl"


def metric_name(metric: str, filt: str = "none") -> str:
    """lm-eval's ``metric,filter`` as one name: ``exact_match,strict-match`` ->
    ``exact_match_strict_match``; the default filter ("none") is dropped."""
    return metric if filt == "none" else f"{metric}_{filt.replace('-', '_')}"


def items_from_samples(samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """lm-eval's logged samples (``simple_evaluate(log_samples=True)["samples"]``) as one row per
    task and item, ``{"task", "doc_id", <metric>: float}``, in lm-eval's item order."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for task, logged in samples.items():
        for sample in logged:
            key = (task, int(sample["doc_id"]))
            row = rows.setdefault(key, {"task": task, "doc_id": key[1]})
            for metric in sample.get("metrics", []):
                value = sample.get(metric)
                if isinstance(value, bool | int | float):
                    row[metric_name(metric, sample.get("filter", "none"))] = float(value)
    return sorted(rows.values(), key=lambda r: (r["task"], r["doc_id"]))


def write_items(path: Path, phases: dict[str, list[dict[str, Any]]]) -> Path:
    """Write ``{phase: rows}`` as ``eval_items.jsonl`` (phase first on each line), atomically."""
    lines = [
        json.dumps({"phase": phase, **row}) + "\n" for phase, rows in phases.items() for row in rows
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.writelines(lines)
    os.replace(tmp, path)
    return path


def read_items(path: Path) -> list[dict[str, Any]]:
    """The rows of an ``eval_items.jsonl``."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
