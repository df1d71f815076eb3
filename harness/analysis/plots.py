"""The report's seaborn figures: each takes the report inputs and returns one Figure, or the
one line that says why the panel is absent (nothing in the sweep varies along its axis).

save_plots(ReportInputs(frame, records, memory), out_dir)  ->  <name>.png / .svg per plot

Every quality value is drawn with its 95% interval (artists with gid "ci"): value +- 1.96 stderr
for one trial, the t interval over seeds for a setting with replicates.
"""

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or GPU nodes
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from harness.analysis.pareto import pareto_mask  # noqa: E402
from harness.analysis.plots_more import plot_lm_eval, plot_memory_model, plot_quant_dq  # noqa: E402
from harness.analysis.rankby import SCORE as SCORE_METRIC  # noqa: E402
from harness.analysis.settings import aggregate  # noqa: E402
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


def metric_of(data: ReportInputs):
    """The ranking metric of the report (the score when none was given)."""
    return data.metric or SCORE_METRIC


def intervals(frame: pd.DataFrame, metric) -> pd.DataFrame:
    """Per setting of ``frame``: mean, lo, hi of the metric, with the setting's first row's
    other columns (its keys)."""
    agg = aggregate(frame, metric.column, metric.stderr)
    if agg.empty:
        return agg
    first = frame.loc[[rows[0] for rows in agg["rows"]]].reset_index(drop=True)
    keep = [c for c in first.columns if c not in agg.columns]
    return pd.concat([agg, first[keep]], axis=1)


def errorbars(ax, x, agg: pd.DataFrame, *, color=None, label=None, line: bool = True) -> None:
    """Points (joined when ``line``) with 95% whiskers; a missing interval draws no whisker."""
    lo = (agg["mean"] - agg["lo"]).fillna(0).clip(lower=0)
    hi = (agg["hi"] - agg["mean"]).fillna(0).clip(lower=0)
    ax.errorbar(x, agg["mean"], yerr=[lo, hi], fmt="o-" if line else "o", color=color,
                capsize=3, lw=1.4, ms=5, label=label, gid="ci")  # fmt: skip


def plot_score_vs_rank(data: ReportInputs) -> Figure | str:
    """The ranking metric against LoRA rank, one line per variant, other settings held fixed."""
    m = metric_of(data)
    ok = data.ok.dropna(subset=[m.column])
    if ok.empty or "lora.r" not in ok or ok["lora.r"].nunique() < 2:
        return "No rank panel: lora.r does not vary among the successful trials."
    fig, ax = plt.subplots(figsize=(8, 5))
    varied = [c for c in ("lora.r", "lora.variant") if c in ok]
    lines, caption = controlled(data, ok, varied, "lora")
    rest = ok.drop(index=lines.index)
    if not rest.empty:  # the other settings: context, not lines
        ax.scatter(rest["lora.r"], rest[m.column], color=GREY, alpha=0.5, s=25,
                   label="other settings")  # fmt: skip
    agg = intervals(lines, m)
    groups = agg.groupby("lora.variant") if "lora.variant" in agg else [(None, agg)]
    palette = sns.color_palette("deep", 8)
    for color, (variant, group) in zip(palette, groups, strict=False):
        group = group.sort_values("lora.r")
        errorbars(ax, group["lora.r"], group, color=color, label=variant or m.title)
    ax.set_xscale("log", base=2)
    ranks = sorted(data.frame["lora.r"].dropna().unique())
    ax.set_xticks(ranks, [str(int(r)) for r in ranks])
    better = "higher" if m.higher else "lower"
    ylabel = SCORE if m.column == "score" else f"{m.title} ({better} is better)"
    title = f"{m.title} vs LoRA rank by variant, 95% intervals\n(lines: {caption})"
    ax.set(xlabel="LoRA rank r (log2 scale)", ylabel=ylabel, title=title)
    ax.title.set_size(10)
    rug_failed(ax, data.bad, "lora.r")
    note_failed(ax, data.bad, f"no {m.title}")
    ax.legend(fontsize=9)
    return fig


def plot_loss_curves(data: ReportInputs) -> Figure | str:
    """Training loss curves overlaid; failed or pruned runs dashed grey up to where they stopped;
    each trial's held-out loss at its last step with its 95% interval."""
    if not any((r.get("loss") or {}).get("curve") for r in data.records):
        return "No loss-curve panel: no trial logged a training loss."
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
            held, se = rec["loss"].get("eval"), rec["loss"].get("eval_stderr")
            if held is not None:
                ax.errorbar([steps[-1]], [held], yerr=[[1.96 * (se or 0)]], fmt="D", ms=5,
                            color=color, capsize=3, gid="ci")  # fmt: skip
        else:
            label = f"{short_label(rec['_label'])} ({rec['status']})"
            ax.plot(steps, loss, color=GREY, lw=1.2, ls="--", label=label)
        drawn += 1
    if not drawn:
        return empty(fig, ax, "No loss curves in these records.")
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)",
           title="Training loss curves; diamonds: held-out loss with 95% interval")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=10, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    no_curve = data.frame[[not ((r.get("loss") or {}).get("curve")) for r in data.records]]
    note_failed(ax, no_curve[no_curve["status"] != "success"], "no curve")
    fig.tight_layout()
    return fig


def plot_vram_vs_score(data: ReportInputs) -> Figure | str:
    """Peak reserved VRAM against the ranking metric, Pareto front (less memory, better) marked."""
    m = metric_of(data)
    if data.frame["peak_vram_reserved_gib"].isna().all():
        return ("No memory-vs-quality panel: no trial measured VRAM (CPU trials record process "
                "RSS, shown in the ranked table).")  # fmt: skip
    ok = data.ok.dropna(subset=[m.column, "peak_vram_reserved_gib"])
    if len(ok) < 2:
        return f"No memory-vs-quality panel: fewer than 2 trials have a {m.title} and a VRAM peak."
    fig, ax = plt.subplots(figsize=(9, 5.5))
    agg = intervals(ok, m)
    hue = "lora.variant" if "lora.variant" in agg else None
    style = "quant.type" if "quant.type" in agg else None
    lo, hi = (agg["mean"] - agg["lo"]).fillna(0), (agg["hi"] - agg["mean"]).fillna(0)
    ax.errorbar(agg["peak_vram_reserved_gib"], agg["mean"], yerr=[lo, hi], fmt="none",
                ecolor="#888", capsize=2, lw=0.8, gid="ci")  # fmt: skip
    sns.scatterplot(data=agg, x="peak_vram_reserved_gib", y="mean", hue=hue, style=style, s=70,
                    ax=ax)  # fmt: skip
    better = "maximize" if m.higher else "minimize"
    on = pareto_mask(agg, {"peak_vram_reserved_gib": "minimize", "mean": better})
    front = agg[on].sort_values("peak_vram_reserved_gib")
    ax.step(front["peak_vram_reserved_gib"], front["mean"], where="post", color="black", lw=1,
            ls="--", label="Pareto front")  # fmt: skip
    for _, row in front.iterrows():
        ax.annotate(short_label(row["setting"]), (row["peak_vram_reserved_gib"], row["mean"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")  # fmt: skip
    rug_failed(ax, data.bad, "peak_vram_reserved_gib")
    note_failed(ax, data.frame.drop(index=ok.index), f"not a point (no {m.title} or no VRAM)")
    ax.set(xlabel=VRAM, ylabel=SCORE if m.column == "score" else m.title,
           title="Memory vs quality, 95% intervals (Pareto front dashed)")  # fmt: skip
    ax.legend(fontsize=8, loc="best")
    return fig


def plot_throughput(data: ReportInputs) -> Figure | str:
    """Train tokens/s per setting, fastest first, whiskers from the step-time IQR; trials without
    a figure shown with the reason."""
    if data.frame["loss_tokens_per_s"].isna().all():
        return "No throughput panel: no trial timed its training steps."
    frame = data.frame.sort_values("loss_tokens_per_s", ascending=True, na_position="first")
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.32 * len(frame)))
    labels = [f"{t}  {short_label(lbl, 60)}" for t, lbl in zip(frame["trial"], frame["label"],
                                                            strict=True)]  # fmt: skip
    values = frame["loss_tokens_per_s"].fillna(0.0)
    colors = ["#4c72b0" if s == "success" else GREY for s in frame["status"]]
    # tokens/s scales as 1 / step time: the IQR over the median is its relative spread.
    spread = (values * frame["step_time_iqr_s"] / frame["step_time_median_s"]).fillna(0.0)
    ax.barh(labels, values, xerr=spread / 2, color=colors, capsize=2)
    for y, (_, row) in enumerate(frame.iterrows()):
        if row["status"] != "success":
            note = "  " + reason(row, 70)
            ax.text(values.iloc[y], y, note, va="center", fontsize=7, color="#555")
    ax.set(
        xlabel=TPS,
        ylabel="",
        title="Throughput by setting; whiskers: step-time IQR (grey: not a successful trial)",
    )
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


def save_plots(
    data: ReportInputs, out_dir: Path, *, svg: bool = True
) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw every plot that has something to compare; write ``<name>.png`` (and ``.svg``).

    Returns:
        ({file name: path}, {plot name: why it is absent}).
    """
    sns.set_theme(style="whitegrid", context="notebook")
    written, absent = {}, {}
    for name, draw in PLOTS.items():
        fig = draw(data)
        if isinstance(fig, str):
            absent[name] = fig
            continue
        for ext in ("png", "svg") if svg else ("png",):
            path = out_dir / f"{name}.{ext}"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            written[path.name] = path
        plt.close(fig)
    return written, absent
