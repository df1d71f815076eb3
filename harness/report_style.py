"""What the report's figures share: their inputs, colours, axis labels and grey failure marks.

Failed, OOM and pruned trials are drawn grey with their reason, never dropped: where they have
no y value they sit on a rug at the bottom of the axes, or are listed in a corner note.
"""

import textwrap
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

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

    @property
    def ok(self) -> pd.DataFrame:
        return self.frame[self.frame["status"] == "success"]

    @property
    def bad(self) -> pd.DataFrame:
        return self.frame[self.frame["status"] != "success"]


def reason(row: pd.Series, width: int = 60) -> str:
    """'status: first words of the error' for a grey mark."""
    err = row.get("error")
    text = f"{row['status']}: {err}" if isinstance(err, str) and err else str(row["status"])
    return textwrap.shorten(text, width=width, placeholder="...")


def empty(fig: Figure, ax: Any, why: str) -> Figure:
    """A figure that says what is missing instead of an empty or absent file."""
    ax.axis("off")
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True, fontsize=11, color="#555")
    return fig


def rug_failed(ax: Any, bad: pd.DataFrame, x: str) -> None:
    """Grey x marks at the bottom of the axes for trials with an x value but no y."""
    trans = ax.get_xaxis_transform()
    for _, row in bad.dropna(subset=[x]).iterrows():
        ax.scatter(row[x], 0.03, transform=trans, marker="x", color=GREY, s=50, zorder=5)
        ax.annotate(reason(row, 40), (row[x], 0.05), xycoords=trans, fontsize=7, color=GREY,
                    rotation=90, va="bottom", ha="center")  # fmt: skip


def note_failed(ax: Any, bad: pd.DataFrame, where: str = "not plotted") -> None:
    """List trials the panel cannot place (no x either), so none vanish silently."""
    if bad.empty:
        return
    lines = [f"{r['trial']} {reason(r, 70)}" for _, r in bad.iterrows()][:6]
    more = f"\n... and {len(bad) - 6} more" if len(bad) > 6 else ""
    ax.text(0.01, 0.99, f"{where}:\n" + "\n".join(lines) + more, transform=ax.transAxes,
            fontsize=7, color="#666", va="top",
            bbox={"facecolor": "white", "edgecolor": GREY, "alpha": 0.85})  # fmt: skip
