"""The memory model's calibration arithmetic: a ridge least-squares fit towards priors, and its
leave-one-out error.

Kept apart from ``model`` (which owns the physics) so the fit stays plain numpy.
"""

import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

# The fitted terms, each a factor on a counted quantity (GiB) except ``overhead`` (a constant):
# activations and logits as counted (harness/memory/activations.py); the allocator's slack as a
# share of one layer's activations without and with expandable segments, of the host layers'
# parked activations, of the streamed LM head and of the blocks HF's loss frees before asking
# for larger ones (harness/memory/allocator.py).
TERMS = ("activations", "logits", "overhead", "cached", "expandable", "host_copies", "head_stream",
         "loss_blocks")  # fmt: skip
# First-principles priors: tensors as counted (1.0), 0.2 GiB of CUDA workspaces and loss buffers,
# some slack where blocks are cached whole, little with expandable segments, half of each parked
# layer and the whole head block and loss block held past their use.
PRIOR = np.array([1.0, 1.0, 0.2, 0.3, 0.1, 0.5, 1.0, 1.0])
# How far the fit may drift from the prior per unit of evidence. The logits' count is held close:
# it is what the allocated peak shows (12.1-12.7 B a logit, activations.LOGIT_BYTES: 12), and
# the same rows' reserved slack scales with tokens * vocab too, which ``loss_blocks`` carries.
PRIOR_SD = np.array([0.5, 0.05, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5])
# Measurement noise of peak reserved VRAM relative to its value: identical runs differ by up to
# 2.6% (plain llama3-8b b4: 16.12 and 16.55 GiB on the same H100), so residuals weigh by relative
# error and a 0.4 GiB toy model counts as much as a 17 GiB 8B run.
REL_NOISE = 0.03

Row = tuple[float, tuple[float, ...], float]  # counted fixed GiB, term quantities (GiB), measured


@dataclass(frozen=True)
class Calibration:
    """Fitted factors of ``total = fixed + sum(factor * term)`` (``TERMS``)."""

    coef: tuple[float, ...] = tuple(float(p) for p in PRIOR)
    n_records: int = 0  # measured CUDA records in the fit
    n_priors: int = 0  # built-in probe anchors in the fit
    error: str = ""  # its leave-one-out error (``error_line``), where known

    def factor(self, term: str) -> float:
        """The fitted factor of one of ``TERMS``."""
        return self.coef[TERMS.index(term)]

    @property
    def act_factor(self) -> float:
        return self.factor("activations")

    @property
    def logits_factor(self) -> float:
        return self.factor("logits")

    @property
    def overhead_gib(self) -> float:
        return self.factor("overhead")

    def describe(self) -> str:
        """One line: the factors and what they rest on."""
        c = dict(zip(TERMS, self.coef, strict=True))
        return (
            f"activations x{c['activations']:.2f}, logits x{c['logits']:.2f}, overhead "
            f"{c['overhead']:+.2f} GiB, allocator slack x{c['cached']:.2f} of a layer "
            f"(x{c['expandable']:.2f} with expandable segments), x{c['host_copies']:.2f} of each "
            f"host layer, x{c['head_stream']:.2f} of a streamed head, x{c['loss_blocks']:.2f} of "
            f"the loss's freed bf16 logits (fit on {self.n_records} "
            f"measured records + {self.n_priors} built-in anchors)"
            + (f"; {self.error}" if self.error else "")
        )


def fit_terms(rows: list[Row], *, n_records: int, n_priors: int) -> Calibration:
    """Ridge fit of the ``TERMS`` factors on (fixed, quantities, measured) GiB rows.

    One fit of every factor on the reserved peak: apart, the allocated peak's factors and the
    slack's scored worse leave-one-out (max 11.0% against 9.6%), the slack of the allocator
    without expandable segments tracking the fp32 temporaries of the upcast stack, which the
    activation factor carries. Residuals are scaled by ``REL_NOISE * measured``; prior rows pull
    each factor towards ``PRIOR`` with ``PRIOR_SD``. With no rows the prior comes back unchanged.
    """
    a_rows, b_rows = [], []
    for fixed, terms, measured in rows:
        scale = REL_NOISE * max(measured, 0.1)
        a_rows.append([q / scale for q in terms])
        b_rows.append((measured - fixed) / scale)
    a_rows += list(np.diag(1.0 / PRIOR_SD))
    b_rows += list(PRIOR / PRIOR_SD)
    coef, *_ = np.linalg.lstsq(np.array(a_rows), np.array(b_rows), rcond=None)
    # Negative factors are unphysical: a step can't free memory it never allocated.
    return Calibration(tuple(max(float(c), 0.0) for c in coef), n_records, n_priors)


def summarise_errors(rows: list[dict[str, Any]], basis: str, n_fit: int) -> dict[str, Any]:
    """Aggregate per-point errors into the error report (abs % errors: median, mean, max) and
    its one-line summary (``line``)."""
    errs = [abs(r["error_pct"]) for r in rows]
    out = {
        "basis": basis,
        "n_fit": n_fit,
        "n_holdout": len(rows),
        "median_ape_pct": statistics.median(errs) if errs else math.nan,
        "mape_pct": sum(errs) / len(errs) if errs else math.nan,
        "max_ape_pct": max(errs) if errs else math.nan,
        "rows": rows,
    }
    return {**out, "line": error_line(out)}


def error_line(err: dict[str, Any]) -> str:
    """The error report in one phrase, as ``pick`` prints it beside a prediction."""
    return (
        f"±{err['median_ape_pct']:.1f}% median, {err['max_ape_pct']:.1f}% max held-out error, "
        f"{err['basis']}"
    )
