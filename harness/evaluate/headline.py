"""The headline score of a trial: each task's primary metric, averaged over the tasks.

Primary metric: the task YAML's ``metadata.primary_metric`` (every shipped task declares one:
acc_norm for ARC, HellaSwag and PIQA, as lm-eval reports them; acc for WinoGrande and LAMBADA;
strict exact match for GSM8K; word perplexity for WikiText), else the first of acc_norm, acc,
exact_match the task has, else its first metric.

Aggregation: the unweighted mean over tasks of the primary metric after tuning. Perplexities
(lower is better) are not averaged with accuracies: they are left out of the mean when any task's
primary metric is higher-is-better; a trial of perplexity tasks only scores -mean(perplexity), so
that higher is better everywhere. The stderr of that mean of independent task means is
sqrt(sum(stderr_i^2)) / n_tasks; None when a task has no stderr.
"""

import math
from typing import Any

from harness.evaluate.items import metric_name

FALLBACK = ("acc_norm", "acc", "exact_match")
AGGREGATION = "mean over tasks of each task's primary metric after tuning"


def primary_metric(task: str, metrics: dict[str, Any], declared: str | None = None) -> str | None:
    """The headline metric of ``task`` among ``metrics``: ``declared`` (``acc_norm`` or lm-eval's
    ``exact_match,strict-match``) when the task has it, else the fallback order, else None."""
    if declared:
        name = metric_name(*declared.split(",", 1)) if "," in declared else declared
        if name in metrics:
            return name
    for name in FALLBACK:
        if name in metrics:
            return name
    return next(iter(metrics), None)


def headline(lm_eval: dict[str, dict[str, Any]], declared: dict[str, str | None]) -> dict:
    """``{"score", "score_stderr", "score_detail"}`` from a record's ``lm_eval`` block.

    Args:
        lm_eval: ``{task: {metric: {before, after, stderr_after, higher_is_better, ...}}}``.
        declared: Each task's ``metadata.primary_metric`` (None where undeclared).

    Returns:
        The score (None when nothing was scored), its stderr, and per task the metric, values
        and whether it is in the mean.
    """
    rows = {}
    for task, metrics in lm_eval.items():
        name = primary_metric(task, metrics, declared.get(task))
        if name is None or metrics[name].get("after") is None:
            continue
        m = metrics[name]
        rows[task] = {
            "metric": name,
            "after": m["after"],
            "stderr_after": m.get("stderr_after"),
            "before": m.get("before"),
            "higher_is_better": m.get("higher_is_better", True),
        }
    higher = [t for t, r in rows.items() if r["higher_is_better"]]
    used = higher or list(rows)
    for task, row in rows.items():
        row["in_score"] = task in used
    if not used:
        return {"score": None, "score_stderr": None, "score_detail": None}
    sign = 1.0 if higher else -1.0
    score = sign * sum(rows[t]["after"] for t in used) / len(used)
    errors = [rows[t]["stderr_after"] for t in used]
    stderr = None if None in errors else math.sqrt(sum(e * e for e in errors)) / len(used)
    before = [rows[t]["before"] for t in used]
    detail = {
        "aggregation": AGGREGATION + ("" if higher else ", sign-flipped (lower is better)"),
        "before": None if None in before else sign * sum(before) / len(before),
        "tasks": rows,
    }
    return {"score": score, "score_stderr": stderr, "score_detail": detail}
