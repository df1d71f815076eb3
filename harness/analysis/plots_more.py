"""The report's comparison figures: nf4 vs fp4 x double quant, lm-eval, the memory model."""

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from harness.analysis import style
from harness.analysis.style import ReportInputs

QUANT_PANELS = {
    "score": style.SCORE,
    "loss_tokens_per_s": style.TPS,
    "peak_vram_reserved_gib": style.VRAM,
}
MEM_PARTS = ("weights", "quant_constants", "lora_params", "grads", "optimizer_states",
             "activations", "logits", "overhead")  # fmt: skip


def quant_subset(data: ReportInputs) -> tuple[pd.DataFrame, str]:
    """nf4/fp4 trials that differ only in quant type / double quant (see ``controlled``)."""
    if "quant.type" not in data.frame or "quant.double_quant" not in data.frame:
        return data.frame.iloc[0:0], ""
    frame = data.frame[data.frame["quant.type"].isin(["nf4", "fp4"])]
    return style.controlled(data, frame, ["quant.type", "quant.double_quant"], "quant")


def plot_quant_dq(data: ReportInputs) -> Figure:
    """nf4 vs fp4, with and without double quant, side by side on score, speed and memory."""
    sub, caption = quant_subset(data)
    ok = sub[sub["status"] == "success"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
    if ok.empty:
        for ax in axes[1:]:
            ax.axis("off")
        return style.empty(fig, axes[0], "No successful nf4/fp4 trials to compare in this sweep.")
    for ax, (col, ylabel) in zip(axes, QUANT_PANELS.items(), strict=True):
        if ok[col].isna().all():
            style.empty(fig, ax, f"{col}: not measured\n(CPU trials have no VRAM)")
            continue
        sns.barplot(data=ok, x="quant.type", y=col, hue="quant.double_quant", order=["nf4", "fp4"],
                    errorbar=None, ax=ax, palette="Set2")  # fmt: skip
        for cont in ax.containers:
            vals = cont.datavalues
            ax.bar_label(cont, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in vals],
                         fontsize=8)  # fmt: skip
        ax.set(xlabel="4-bit data type", ylabel=ylabel)
        ax.yaxis.label.set_size(9)
        ax.legend(title="double quant", fontsize=8, title_fontsize=8, loc="lower right")
    style.note_failed(axes[0], sub[sub["status"] != "success"])
    fig.suptitle(f"nf4 vs fp4 x double quant ({caption})", fontsize=11)
    fig.tight_layout()
    return fig


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


def plot_lm_eval(data: ReportInputs, top: int = 12) -> Figure:
    """Dumbbells per task: the base model's score (before) to the tuned one's (after)."""
    tasks = lm_eval_rows(data.records)
    if not tasks:
        fig, ax = plt.subplots(figsize=(8, 3))
        return style.empty(fig, ax, "No lm-eval results (random-weight or failed trials only).")
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
        ax.errorbar(after, y, xerr=[r.get("stderr_after") or 0 for r in rows], fmt="none",
                    ecolor="#444", elinewidth=0.8, capsize=2)  # fmt: skip
        ax.scatter(after, y, c=colors, s=45, zorder=3, label="after (tuned)")
        better = "higher" if hib else "lower"
        ax.set(title=task, xlabel=f"{rows[0]['metric']} (fraction, {better} is better)")
        ax.xaxis.label.set_size(9)
    axes[0][0].set_yticks(range(len(order)), [style.short_label(o) for o in order], fontsize=7)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    style.note_failed(axes[0][0], data.frame[data.frame["status"] != "success"], "no lm-eval")
    fig.suptitle("lm-eval before -> after per task (whiskers: stderr; top trials by score)")
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
