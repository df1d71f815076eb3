"""Pareto front of trials over two objectives (e.g. lower peak VRAM, higher score)."""

import numpy as np
import pandas as pd


def pareto_mask(
    frame: pd.DataFrame, x: str, y: str, *, minimize_x: bool = True, maximize_y: bool = True
) -> pd.Series:
    """True for rows no other row beats on both ``x`` and ``y``; rows with a NaN are never on it.

    Args:
        frame: one row per trial.
        x: column to minimise (or maximise with ``minimize_x=False``), e.g. peak_vram_reserved_gib.
        y: column to maximise (or minimise with ``maximize_y=False``), e.g. score.

    Returns:
        Boolean series aligned with ``frame.index``.
    """
    xs = frame[x].to_numpy(dtype=float) * (1 if minimize_x else -1)
    ys = frame[y].to_numpy(dtype=float) * (-1 if maximize_y else 1)
    ok = ~(np.isnan(xs) | np.isnan(ys))
    on = np.zeros(len(frame), dtype=bool)
    for i in np.flatnonzero(ok):
        # Both objectives are now "lower is better"; i is dominated when another row is no worse
        # on both and strictly better on one.
        no_worse = (xs[ok] <= xs[i]) & (ys[ok] <= ys[i])
        better = (xs[ok] < xs[i]) | (ys[ok] < ys[i])
        on[i] = not np.any(no_worse & better)
    return pd.Series(on, index=frame.index)


def pareto_front(
    frame: pd.DataFrame, x: str, y: str, *, minimize_x: bool = True, maximize_y: bool = True
) -> pd.DataFrame:
    """The Pareto-optimal rows, sorted by ``x``."""
    mask = pareto_mask(frame, x, y, minimize_x=minimize_x, maximize_y=maximize_y)
    return frame[mask].sort_values(x)
