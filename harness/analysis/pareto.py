"""Pareto set of trials over any number of objectives (e.g. lower peak VRAM, higher score)."""

from collections.abc import Mapping

import numpy as np
import pandas as pd

DIRECTIONS = ("minimize", "maximize")


def pareto_mask(
    frame: pd.DataFrame, objectives: Mapping[str, str], *, among: pd.Series | None = None
) -> pd.Series:
    """True for rows that no other candidate row beats; rows with a NaN objective are never on it.

    Args:
        frame: one row per trial.
        objectives: {column: "minimize" | "maximize"}, e.g. {"peak_vram_reserved_gib":
            "minimize", "score": "maximize"}. One objective: the best row(s).
        among: boolean mask (aligned with ``frame``) of the candidate rows, e.g. the feasible
            COMPLETE trials of a study; None: every row.

    Returns:
        Boolean series aligned with ``frame.index``.
    """
    for col, direction in objectives.items():
        if direction not in DIRECTIONS:
            raise ValueError(f"objective {col!r}: direction {direction!r} not in {DIRECTIONS}")
    # Flip maximized columns: every column is then "lower is better".
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in objectives.values()])
    vals = frame[list(objectives)].to_numpy(dtype=float).reshape(len(frame), len(sign)) * sign
    ok = ~np.isnan(vals).any(axis=1)
    if among is not None:
        ok &= np.asarray(among, dtype=bool)
    on = np.zeros(len(frame), dtype=bool)
    for i in np.flatnonzero(ok):
        # i is dominated when another candidate is no worse on every objective and strictly
        # better on one.
        others = vals[ok]
        beaten = np.all(others <= vals[i], axis=1) & np.any(others < vals[i], axis=1)
        on[i] = not beaten.any()
    return pd.Series(on, index=frame.index)
