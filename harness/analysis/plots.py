"""The report's seaborn figures: each takes the report inputs and returns one Figure.

save_plots(ReportInputs(frame, records, memory), out_dir)  ->  <name>.png / .svg per plot
"""

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or GPU nodes
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from harness.analysis.pareto import pareto_mask  # noqa: E402
from harness.analysis.plots_more import plot_lm_eval, plot_memory_model, plot_quant_dq  # noqa: E402
from harness.analysis.style import (  # noqa: E402
    GREY,
    SCORE,
    TPS,
    VRAM,
    ReportInputs,
    controlled,
    empty,
    note_failed,
    reason,
    rug_failed,
    short_label,
)


def plot_score_vs_rank(data: ReportInputs) -> Figure:
    """Score against LoRA rank, one line per variant, other settings held fixed."""
    fig, ax = plt.subplots(figsize=(8, 5))
    ok = data.ok.dropna(subset=["score"])
    if ok.empty or "lora.r" not in ok:
        return empty(fig, ax, "No scores in this sweep (random-weight trials report none).")
    hue = "lora.variant" if "lora.variant" in ok else None
    lines, caption = controlled(
        data, ok, [c for c in ("lora.r", "lora.variant") if c in ok], "lora"
    )
    rest = ok.drop(index=lines.index)
    if not rest.empty:  # the other settings: context, not lines
        ax.scatter(rest["lora.r"], rest["score"], color=GREY, alpha=0.5, s=25,
                   label="other settings")  # fmt: skip
    sns.lineplot(data=lines, x="lora.r", y="score", hue=hue, marker="o", errorbar=None, ax=ax)
    ax.set_xscale("log", base=2)
    ranks = sorted(data.frame["lora.r"].dropna().unique())
    ax.set_xticks(ranks, [str(int(r)) for r in ranks])
    ax.set(xlabel="LoRA rank r (log2 scale)", ylabel=SCORE,
           title=f"Score vs LoRA rank by variant\n(lines: {caption})")  # fmt: skip
    ax.title.set_size(10)
    rug_failed(ax, data.bad, "lora.r")
    note_failed(ax, data.bad, "no score")
    ax.legend(fontsize=8)
    return fig


def plot_loss_curves(data: ReportInputs) -> Figure:
    """Training loss curves overlaid; failed or pruned runs dashed grey up to where they stopped."""
    fig, ax = plt.subplots(figsize=(10, 5.5))
    drawn = 0
    palette = sns.color_palette("husl", max(len(data.records), 1))
    for color, rec in zip(palette, data.records, strict=True):
        curve = (rec.get("loss") or {}).get("curve") or []
        if not curve:
            continue
        steps, loss = [p["step"] for p in curve], [p["loss"] for p in curve]
        if rec.get("status") == "success":
            ax.plot(steps, loss, color=color, lw=1.4, label=short_label(rec["_label"]))
        else:
            label = f"{short_label(rec['_label'])} ({rec['status']})"
            ax.plot(steps, loss, color=GREY, lw=1.2, ls="--", label=label)
        drawn += 1
    if not drawn:
        return empty(fig, ax, "No loss curves in these records.")
    ax.set(xlabel="optimizer step", ylabel="training loss (nats/token)", title="Loss curves")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    no_curve = data.frame[[not ((r.get("loss") or {}).get("curve")) for r in data.records]]
    note_failed(ax, no_curve[no_curve["status"] != "success"], "no curve")
    fig.tight_layout()
    return fig


def plot_vram_vs_score(data: ReportInputs) -> Figure:
    """Peak reserved VRAM against score, Pareto front (less memory, more score) marked."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    ok = data.ok.dropna(subset=["score", "peak_vram_reserved_gib"])
    if ok.empty:
        return empty(fig, ax, "No trial has both a score and a CUDA peak (CPU trials: RSS only).")
    hue = "lora.variant" if "lora.variant" in ok else None
    style = "quant.type" if "quant.type" in ok else None
    sns.scatterplot(data=ok, x="peak_vram_reserved_gib", y="score", hue=hue, style=style, s=70,
                    ax=ax)  # fmt: skip
    on = pareto_mask(ok, {"peak_vram_reserved_gib": "minimize", "score": "maximize"})
    front = ok[on].sort_values("peak_vram_reserved_gib")
    ax.step(front["peak_vram_reserved_gib"], front["score"], where="post", color="black", lw=1,
            ls="--", label="Pareto front")  # fmt: skip
    for _, row in front.iterrows():
        ax.annotate(short_label(row["label"]), (row["peak_vram_reserved_gib"], row["score"]),
                    fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    rug_failed(ax, data.bad, "peak_vram_reserved_gib")
    note_failed(ax, data.frame.drop(index=ok.index), "not a point (no score or no VRAM)")
    ax.set(xlabel=VRAM, ylabel=SCORE, title="Memory vs quality (Pareto front dashed)")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_throughput(data: ReportInputs) -> Figure:
    """Train tokens/s per setting, fastest first; trials without a figure shown with the reason."""
    frame = data.frame.sort_values("loss_tokens_per_s", ascending=True, na_position="first")
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.32 * len(frame)))
    labels = [f"{t}  {short_label(lbl, 60)}" for t, lbl in zip(frame["trial"], frame["label"],
                                                            strict=True)]  # fmt: skip
    values = frame["loss_tokens_per_s"].fillna(0.0)
    colors = ["#4c72b0" if s == "success" else GREY for s in frame["status"]]
    ax.barh(labels, values, color=colors)
    for y, (_, row) in enumerate(frame.iterrows()):
        if row["status"] != "success":
            note = "  " + reason(row, 70)
            ax.text(values.iloc[y], y, note, va="center", fontsize=7, color="#555")
    ax.set(xlabel=TPS, ylabel="", title="Throughput by setting (grey: not a successful trial)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


PLOTS: dict[str, Callable[[ReportInputs], Figure]] = {
    "score_vs_rank": plot_score_vs_rank,
    "loss_curves": plot_loss_curves,
    "vram_vs_score": plot_vram_vs_score,
    "throughput": plot_throughput,
    "quant_dq": plot_quant_dq,
    "lm_eval": plot_lm_eval,
    "memory_model": plot_memory_model,
}


def save_plots(data: ReportInputs, out_dir: Path, *, svg: bool = True) -> dict[str, Path]:
    """Draw every plot; write ``<name>.png`` (and ``.svg``). Returns {file name: path}."""
    sns.set_theme(style="whitegrid", context="notebook")
    written = {}
    for name, draw in PLOTS.items():
        fig = draw(data)
        for ext in ("png", "svg") if svg else ("png",):
            path = out_dir / f"{name}.{ext}"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            written[path.name] = path
        plt.close(fig)
    return written
