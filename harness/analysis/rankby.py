"""Which metric ranks a sweep's trials, and why; every ranking (report, pick) says which.

* ``score``: the lm-eval headline score (higher is better), with its stderr and per-item results.
* ``loss``: the held-out loss (nats per loss token, lower is better), with its stderr over
  held-out examples and per-example losses.
* ``throughput`` / ``memory``: costs, ranked as measured.
* ``auto`` (the default): a study ranks by its own first objective that is not a memory figure
  (the budget is the memory); a grid ranks by the score when the user named the lm-eval tasks
  (``eval.tasks`` in its overrides, or tasks other than the default ``qh_embedded``), else by the
  held-out loss: the default exact match scores 32 items of the held-out prompts (one item is
  0.031), while the loss scores every held-out example, token by token.

A metric that no candidate has is an error (ConfigError), never a silent tie.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from harness.analysis.frame import METRICS, override_items
from harness.analysis.items import loss_items, score_items
from harness.errors import ConfigError

DEFAULT_TASKS = ["qh_embedded"]
MEMORY = ("peak_vram_reserved_gib", "peak_vram_allocated_gib", "peak_rss_gib")


@dataclass(frozen=True)
class RankBy:
    """A ranking metric: its frame column, direction, stderr column and per-item reader."""

    name: str
    column: str
    higher: bool
    title: str
    stderr: str | None = None
    items: Callable[[dict], Any] | None = None
    why: str = ""

    @property
    def quality(self) -> bool:
        """A quality metric (ties judged by noise, broken by cost), not a cost."""
        return self.column not in ("loss_tokens_per_s", *MEMORY)

    def describe(self) -> str:
        """'held-out loss (nats/token, lower is better): why'."""
        better = "higher" if self.higher else "lower"
        return f"{self.title} ({better} is better; {self.why})"


SCORE = RankBy("score", "score", True, "score", "score_stderr", score_items)
LOSS = RankBy("loss", "loss_eval", False, "held-out loss", "loss_eval_stderr", loss_items)
FIXED = {
    "score": SCORE,
    "loss": LOSS,
    "throughput": RankBy("throughput", "loss_tokens_per_s", True, "loss tokens/s"),
    "memory": RankBy("memory", "peak_vram_reserved_gib", False, "peak reserved VRAM"),
}
CHOICES = ("auto", *FIXED)
_COLUMN_OF_PATH = {path: col for col, path in METRICS}


def rank_by(records: list[dict[str, Any]], frame: pd.DataFrame, objective: str = "auto") -> RankBy:
    """The metric that ranks these trials (``frame`` is ``records_frame(records)``).

    Raises:
        ConfigError: an unknown objective, or a metric that no successful trial has.
    """
    if objective not in CHOICES:
        raise ConfigError("--objective", objective, f"one of {', '.join(CHOICES)}")
    if objective != "auto":
        chosen = _with_why(FIXED[objective], "asked for")
    else:
        chosen = _study_objective(records) or _grid_default(records, frame)
    if chosen.name == "score" and (source := score_source(records)):
        chosen = replace(chosen, why=f"{chosen.why}; score = {source}")
    ok = frame[frame["status"] == "success"]
    if not ok.empty and ok[chosen.column].isna().all():
        other = "loss" if chosen.name == "score" else "score"
        raise ConfigError("--objective", chosen.name,
                          f"no successful trial has a {chosen.title}; rank by another metric "
                          f"(e.g. --objective {other})")  # fmt: skip
    return chosen


def score_source(records: list[dict[str, Any]]) -> str | None:
    """Which tasks, metrics and scored form the records' headline scores came from, e.g.
    'mean of qh_arc_easy acc_norm, qh_lambada acc; 4bit form' (None where none was scored)."""
    tasks: dict[str, set[str]] = {}
    forms: set[str] = set()
    for rec in records:
        detail = rec.get("score_detail") or {}
        for task, row in (detail.get("tasks") or {}).items():
            if row.get("in_score"):
                tasks.setdefault(task, set()).add(row["metric"])
                forms.add(detail.get("scored_form") or "4bit")
    if not tasks:
        return None
    used = ", ".join(f"{t} {'/'.join(sorted(m))}" for t, m in sorted(tasks.items()))
    return f"mean of {used}; {'/'.join(sorted(forms))} form"


def _study_objective(records: list[dict[str, Any]]) -> RankBy | None:
    objectives = next((r["_objectives"] for r in records if r.get("_objectives")), None)
    if not objectives:
        return None
    quality = [o for o in objectives if _COLUMN_OF_PATH.get(o["metric"]) not in MEMORY]
    obj = (quality or objectives)[0]
    why = f"the study's objective: {obj.get('direction', 'maximize')} {obj['metric']}"
    if obj["metric"] == "score":
        return _with_why(SCORE, why)
    if obj["metric"] == "loss.eval":
        return _with_why(LOSS, why)
    column = _COLUMN_OF_PATH.get(obj["metric"])
    if column is None:
        raise ConfigError("objectives.metric", obj["metric"], f"one of {sorted(_COLUMN_OF_PATH)}")
    return RankBy(obj["metric"], column, obj.get("direction", "maximize") == "maximize",
                  obj["metric"], why=why)  # fmt: skip


def _grid_default(records: list[dict[str, Any]], frame: pd.DataFrame) -> RankBy:
    named = False
    for rec in records:
        tasks = ((rec.get("config") or {}).get("eval") or {}).get("tasks") or []
        given = "eval.tasks" in override_items(rec.get("overrides") or [])
        named |= bool(tasks) and (given or list(tasks) != DEFAULT_TASKS)
    scored = frame.loc[frame["status"] == "success", "score"].notna().any()
    if named and scored:
        return _with_why(SCORE, "the lm-eval tasks the sweep named")
    if named:
        return _with_why(LOSS, "no successful trial has an lm-eval score")
    return _with_why(LOSS, "no lm-eval task named; the default exact match is too coarse to rank")


def _with_why(metric: RankBy, why: str) -> RankBy:
    return RankBy(metric.name, metric.column, metric.higher, metric.title, metric.stderr,
                  metric.items, why)  # fmt: skip
