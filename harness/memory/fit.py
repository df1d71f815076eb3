"""The memory model's calibration arithmetic: a ridge least-squares fit towards priors.

Kept apart from ``memory_model`` (which owns the physics) so the fit stays plain numpy.
"""

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

# First-principles priors: activations and logits as counted (factor 1.0), 0.5 GiB overhead.
PRIOR = np.array([1.0, 1.0, 0.5])
# How far the fit may drift from the prior per unit of evidence: factors +-0.5, overhead +-1 GiB.
PRIOR_SD = np.array([0.5, 0.5, 1.0])
# Measurement noise of peak reserved VRAM relative to its value: allocator rounding and
# fragmentation move it by a few percent between identical runs.
REL_NOISE = 0.05


@dataclass(frozen=True)
class Calibration:
    """Fitted factors of ``total = static + act_factor*act + logits_factor*logits + overhead``."""

    act_factor: float = 1.0
    logits_factor: float = 1.0
    overhead_gib: float = 0.5
    n_records: int = 0  # measured CUDA records of this repo in the fit
    n_priors: int = 0  # built-in anchors in the fit

    def describe(self) -> str:
        """One line: the factors and what they rest on."""
        return (
            f"activations x{self.act_factor:.2f}, logits x{self.logits_factor:.2f}, "
            f"overhead {self.overhead_gib:+.2f} GiB (fit on {self.n_records} measured records "
            f"+ {self.n_priors} built-in anchors)"
        )


def fit_terms(
    rows: list[tuple[float, float, float, float]], *, n_records: int, n_priors: int
) -> Calibration:
    """Ridge fit of (act_factor, logits_factor, overhead) on (static, act, logits, measured) GiB.

    Residuals are scaled by ``REL_NOISE * measured`` so a 0.4 GiB toy model and a 24 GiB 8B run
    weigh by relative error; prior rows pull each coefficient towards ``PRIOR`` with ``PRIOR_SD``.
    With no rows the prior comes back unchanged.
    """
    a_rows, b_rows = [], []
    for static, act, logits, measured in rows:
        scale = REL_NOISE * max(measured, 0.1)
        a_rows.append([act / scale, logits / scale, 1.0 / scale])
        b_rows.append((measured - static) / scale)
    a_rows += list(np.diag(1.0 / PRIOR_SD))
    b_rows += list(PRIOR / PRIOR_SD)
    coef, *_ = np.linalg.lstsq(np.array(a_rows), np.array(b_rows), rcond=None)
    act, logit, over = (float(c) for c in coef)
    # Negative factors are unphysical: a step can't free memory it never allocated.
    return Calibration(max(act, 0.0), max(logit, 0.0), over, n_records, n_priors)


def split_holdout(n: int, holdout_frac: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (fit, holdout): a seeded shuffle; at least one of each when n >= 2."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    k = min(max(1, round(n * holdout_frac)), n - 1) if n >= 2 else 0
    return sorted(idx[k:]), sorted(idx[:k])


def summarise_errors(rows: list[dict[str, Any]], basis: str, n_fit: int) -> dict[str, Any]:
    """Aggregate per-point errors into the error report."""
    errs = [abs(r["error_pct"]) for r in rows]
    return {
        "basis": basis,
        "n_fit": n_fit,
        "n_holdout": len(rows),
        "mape_pct": sum(errs) / len(errs) if errs else math.nan,
        "max_ape_pct": max(errs) if errs else math.nan,
        "rows": rows,
    }
