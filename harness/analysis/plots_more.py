"""The report's comparison figures: nf4 vs fp4 x double quant, lm-eval, the memory model."""

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from harness.analysis import style
from harness.analysis.stats import mean_interval
from harness.analysis.style import ReportInputs

QUANT_PANELS = {
    "score": style.SCORE,
    "loss_tokens_per_s": style.TPS,
    "peak_vram_reserved_gib": style.VRAM,
}
MEM_PARTS = ("weights", "quant_constants", "lora_params", "grads", "optimizer_states",
             "graph_buffers", "activations", "logits", "overhead")  # fmt: skip


def quant_subset(data: ReportInputs) -> tuple[pd.DataFrame, str]:
    """nf4/fp4 trials that differ only in quant type / double quant (see ``controlled``)."""
    if "quant.type" not in data.frame or "quant.double_quant" not in data.frame:
        return data.frame.iloc[0:0], ""
    frame = data.frame[data.frame["quant.type"].isin(["nf4", "fp4"])]
    return style.controlled(data, frame, ["quant.type", "quant.double_quant"], "quant")


def plot_quant_dq(data: ReportInputs) -> Figure | str:
    """nf4 vs fp4, with and without double quant, side by side on score, speed and memory; a
    panel only for what was measured, whiskers: the score's 95% interval."""
    sub, caption = quant_subset(data)
    ok = sub[sub["status"] == "success"]
    combos = ok[["quant.type", "quant.double_quant"]].drop_duplicates() if len(ok) else ok
    if len(combos) < 2:
        return "No quantization panel: quant.type and quant.double_quant do not vary."
    panels = {c: y for c, y in QUANT_PANELS.items() if ok[c].notna().any()}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.5), squeeze=False)
    order = [(q, dq) for q in ("nf4", "fp4") for dq in (True, False)]
    bars = [(q, dq, ok[(ok["quant.type"] == q) & (ok["quant.double_quant"] == dq)])
            for q, dq in order]  # fmt: skip
    bars = [b for b in bars if not b[2].empty]
    x = np.arange(len(bars))
    colors = sns.color_palette("Set2", 2)
    for ax, (col, ylabel) in zip(axes[0], panels.items(), strict=True):
        vals = np.array([rows[col].mean() for _, _, rows in bars])
        err = [_half_ci(rows, col) for _, _, rows in bars] if col == "score" else None
        ax.bar(x, vals, yerr=err, capsize=4, color=[colors[0 if dq else 1] for _, dq, _ in bars],
               error_kw={"gid": "ci"})  # fmt: skip
        ax.bar_label(ax.containers[-1], labels=[_sig(v) for v in vals], fontsize=8)
        ax.set_xticks(x, [f"{q}\n{'dq' if dq else 'no dq'}" for q, dq, _ in bars])
        ax.set(xlabel="4-bit data type, double quant", ylabel=ylabel)
        ax.yaxis.label.set_size(9)
    style.note_failed(axes[0][0], sub[sub["status"] != "success"])
    fig.suptitle(f"nf4 vs fp4 x double quant ({caption})", fontsize=11)
    fig.tight_layout()
    return fig


def _half_ci(rows: pd.DataFrame, col: str) -> float:
    """Half the 95% interval of a bar: t over replicates, else 1.96 x the trial's stderr."""
    vals = rows[col].dropna()
    if len(vals) >= 2:
        ci = mean_interval(vals.tolist())
        return ci.hi - ci.value
    se = rows["score_stderr"].iloc[0] if "score_stderr" in rows and len(rows) else None
    return 0.0 if se is None or pd.isna(se) else 1.959964 * float(se)


def _sig(v: float) -> str:
    """A bar label: thousands separated, small values to 3 significant digits."""
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def lm_eval_rows(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per task, the primary (first) metric of each successful record: before, after, stderr."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if rec.get("status") != "success":
            continue
        for task, metrics in (rec.get("lm_eval") or {}).items():
            metric, m = next(iter(metrics.items()))
            if m.get("after") is None:
                continue
            row = {"label": rec["_label"], "metric": metric, "score": rec.get("score"), **m}
            tasks.setdefault(task, []).append(row)
    return tasks


def plot_lm_eval(data: ReportInputs, top: int = 12) -> Figure | str:
    """Dumbbells per task: the base model's score (before) to the tuned one's (after)."""
    tasks = lm_eval_rows(data.records)
    if not tasks:
        return "No lm-eval panel: no successful trial has lm-eval results."
    # One row per trial, shared by every panel: the top trials by score, best at the top.
    scores = {r["label"]: r["score"] for rows in tasks.values() for r in rows}
    order = sorted(scores, key=lambda k: -(scores[k] if scores[k] is not None else -np.inf))
    order = order[:top][::-1]
    ypos = {label: i for i, label in enumerate(order)}
    n = len(tasks)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 3, 1.8 + 0.3 * len(order)), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, (task, rows) in zip(axes[0], tasks.items(), strict=True):
        rows = [r for r in rows if r["label"] in ypos]
        y = [ypos[r["label"]] for r in rows]
        before, after = [r["before"] for r in rows], [r["after"] for r in rows]
        hib = rows[0].get("higher_is_better", True)
        colors = ["#2a9d8f" if (a - b) * (1 if hib else -1) >= 0 else "#e76f51"
                  for a, b in zip(after, before, strict=True)]  # fmt: skip
        ax.hlines(y, before, after, color=style.GREY, lw=1.5)
        grey = style.GREY
        ax.scatter(before, y, facecolors="white", edgecolors=grey, s=40, label="before (base)")
        ax.errorbar(after, y, xerr=[1.959964 * (r.get("stderr_after") or 0) for r in rows],
                    fmt="none", ecolor="#444", elinewidth=0.8, capsize=2, gid="ci")  # fmt: skip
        ax.scatter(after, y, c=colors, s=45, zorder=3, label="after (tuned)")
        better = "higher" if hib else "lower"
        ax.set(title=task, xlabel=f"{rows[0]['metric']} (fraction, {better} is better)")
        ax.xaxis.label.set_size(9)
    axes[0][0].set_yticks(range(len(order)), [style.short_label(o) for o in order], fontsize=7)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    style.note_failed(axes[0][0], data.frame[data.frame["status"] != "success"], "no lm-eval")
    fig.suptitle("lm-eval before -> after per task (whiskers: 95% interval; top trials by score)")
    # Room at the top for the figure title above the panel titles (they overlapped at 0.98).
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def plot_memory_model(data: ReportInputs) -> Figure:
    """Left: predicted vs measured peak (fit, held out, anchors). Right: predicted breakdown."""
    mem = data.memory
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=(1, 1.3))
    _parity(ax1, mem)
    parts = mem.get("breakdown") or []
    if not parts:
        style.empty(fig, ax2, "No trial with a model shape to break down.")
    else:
        labels = [style.short_label(p["label"]) for p in parts]
        left = np.zeros(len(parts))
        palette = sns.color_palette("tab10", len(MEM_PARTS))
        for color, part in zip(palette, MEM_PARTS, strict=True):
            vals = np.array([p["predicted"][part] for p in parts])
            ax2.barh(labels, vals, left=left, color=color, label=part.replace("_", " "))
            left += vals
        measured = [(i, p["measured"]) for i, p in enumerate(parts) if p["measured"] is not None]
        if measured:
            ax2.scatter([m for _, m in measured], [i for i, _ in measured], marker="|", s=300,
                        color="black", zorder=4, label="measured")  # fmt: skip
        ax2.set(xlabel="predicted peak reserved VRAM (GiB)", title="Where the memory goes")
        ax2.tick_params(axis="y", labelsize=7)
        ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def _parity(ax: Any, mem: dict[str, Any]) -> None:
    err = mem.get("error") or {}
    groups = {
        "calibration (in-sample)": ("o", "#4c72b0", mem.get("in_sample") or []),
        "held out": ("D", "#dd8452", err.get("rows") if err.get("n_fit") else []),
        "built-in H100 anchors": ("*", "black", mem.get("anchors") or []),
    }
    top = 1.0
    for name, (marker, color, rows) in groups.items():
        if rows:
            xs, ys = [r["measured_gib"] for r in rows], [r["predicted_gib"] for r in rows]
            ax.scatter(xs, ys, marker=marker, color=color, s=55, label=name, zorder=3)
            top = max(top, *xs, *ys)
    line = np.array([0, top * 1.08])
    ax.plot(line, line, color=style.GREY, lw=1)
    ax.fill_between(line, line * 0.9, line * 1.1, color=style.GREY, alpha=0.15, label="+-10%")
    mape = err.get("mape_pct", float("nan"))
    basis = err.get("basis", "n/a")
    ax.set(xlabel="measured peak reserved VRAM (GiB)",
           ylabel="predicted peak reserved VRAM (GiB)",
           title=f"Memory model: mean abs error {mape:.1f}% ({basis})")  # fmt: skip
    ax.title.set_size(9)
    ax.legend(fontsize=8, loc="upper left")
