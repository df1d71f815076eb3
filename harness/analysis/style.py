"""What the report's figures share: their inputs, colours, axis labels and grey failure marks.

Failed, OOM and pruned trials are drawn grey with their reason, never dropped: where they have
no y value they sit on a rug at the bottom of the axes, or are listed in a corner note.
"""

import textwrap
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from harness.analysis.frame import label_keys, short, value_of

GREY = "#9a9a9a"
VRAM = "peak reserved VRAM, train phase (GiB)"
SCORE = "score (primary lm-eval metric after tuning; higher is better)"
TPS = "train throughput (loss tokens/s)"


@dataclass
class ReportInputs:
    """What the figures draw from: the frame, the raw records and the memory model's verdict."""

    frame: pd.DataFrame
    records: list[dict[str, Any]]
    memory: dict[str, Any] = field(default_factory=dict)  # {calibration, error, points}
    metric: Any = None  # the ranking metric (harness.analysis.rankby.RankBy); None: the score

    @property
    def ok(self) -> pd.DataFrame:
        return self.frame[self.frame["status"] == "success"]

    @property
    def bad(self) -> pd.DataFrame:
        return self.frame[self.frame["status"] != "success"]


def reason(row: pd.Series, width: int = 60) -> str:
    """'status: first words of the error' for a grey mark."""
    err = row.get("error")
    if row["status"] == "success" and row.get("device") == "cpu":
        return "CPU run: RSS only, no VRAM figure"
    text = f"{row['status']}: {err}" if isinstance(err, str) and err else str(row["status"])
    return textwrap.shorten(text, width=width, placeholder="...")


def short_label(label: str, width: int = 48) -> str:
    """A trial label cut to fit a tick (full labels live in the tables)."""
    return label if len(label) <= width else label[: width - 3] + "..."


def empty(fig: Figure, ax: Any, why: str) -> Figure:
    """A figure that says what is missing instead of an empty or absent file."""
    ax.axis("off")
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True, fontsize=11, color="#555")
    return fig


def rug_failed(ax: Any, bad: pd.DataFrame, x: str) -> None:
    """Grey x marks on the bottom edge for trials with an x value but no y (reasons: note)."""
    placed = bad.dropna(subset=[x])
    if placed.empty:
        return
    trans = ax.get_xaxis_transform()
    ax.scatter(placed[x], [0.03] * len(placed), transform=trans, marker="x", color=GREY, s=60,
               zorder=5, clip_on=False, label="failed / OOM / pruned")  # fmt: skip
    for _, row in placed.iterrows():
        ax.annotate(f"{row['trial']} {row['status']}", (row[x], 0.06), xycoords=trans,
                    fontsize=7, color="#777", rotation=90, va="bottom", ha="center")  # fmt: skip
    # A blended transform does not widen the data limits: make room for far-off marks (OOM).
    lo, hi = ax.get_xlim()
    ax.set_xlim(min(lo, placed[x].min()), max(hi, placed[x].max() * 1.04))


def note_failed(ax: Any, bad: pd.DataFrame, where: str = "not plotted") -> None:
    """List trials the panel cannot place, below the axes, so none vanish silently."""
    if bad.empty:
        return
    lines = [f"{r['trial']} {reason(r, 90)}" for _, r in bad.iterrows()][:8]
    more = f"\n... and {len(bad) - 8} more" if len(bad) > 8 else ""
    # 45 pt below the axes: clear of tick labels and the x label at any figure size.
    ax.annotate(f"{where}:\n" + "\n".join(lines) + more, xy=(0, 0), xycoords="axes fraction",
                xytext=(0, -45), textcoords="offset points", fontsize=7, color="#666",
                va="top")  # fmt: skip


def controlled(
    data: ReportInputs, frame: pd.DataFrame, varied: list[str], prefix: str
) -> tuple[pd.DataFrame, str]:
    """The rows of ``frame`` that differ only in ``varied`` columns, and what the rest is fixed at.

    Comparing nf4 with fp4 (or r=8 with r=64) across different batch sizes would mix two effects,
    so a panel keeps the group of otherwise-equal settings covering the most ``varied`` combos.
    Grid keys starting with ``prefix`` (the varied group) are not held fixed.
    """
    if frame.empty:
        return frame, ""
    keys = [k for k in label_keys(data.records) if k != prefix and not k.startswith(prefix + ".")]
    if data.frame["model"].nunique() > 1:
        keys.insert(0, "model.name")
    cols = {k: k if "." in k else f"choice.{k}" for k in keys}
    cols = {k: c for k, c in cols.items() if c in frame and c not in varied}
    if not cols:
        return frame, "all other settings equal"
    keyed = frame.assign(_key=frame[list(cols.values())].astype(str).agg(" ".join, axis=1))
    ok = keyed[keyed["status"] == "success"]
    combos = ok.groupby("_key")[varied].apply(lambda g: len(g.drop_duplicates()))
    if combos.empty:
        return frame.iloc[0:0], ""
    fixed = keyed[keyed["_key"] == combos.sort_values(ascending=False).index[0]]
    rec = data.records[fixed.index[0]]
    held = " ".join(short(k, value_of(rec, k)) for k in cols)
    return fixed.drop(columns="_key"), f"other settings fixed: {held}"
