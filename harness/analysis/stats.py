"""The arithmetic behind every interval the harness prints: 95% intervals, the standard error of a
token-weighted mean, paired differences on the same items, Welch over replicate seeds, McNemar,
and how many items or seeds would detect a difference.

Intervals are normal approximations (value +- 1.96 se), as lm-eval's stderrs are; only the Welch
interval over a handful of seeds uses Student's t, where 1.96 would be far too narrow (t at 2
degrees of freedom is 4.30).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as sps

Z95 = 1.959964  # two-sided 95% normal quantile
Z80_POWER = 0.841621  # one-sided 80% power quantile: 1.96 + 0.84 = 2.80 standard errors


@dataclass(frozen=True)
class Interval:
    """A value with its standard error and 95% interval."""

    value: float
    se: float | None
    lo: float | None
    hi: float | None
    n: int | None = None  # items (or seeds) it rests on

    def text(self, digits: int = 3) -> str:
        """'0.125 (95% CI 0.010-0.240)', or the bare value when no error is known."""
        if self.lo is None or self.hi is None:
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} (95% CI {self.lo:.{digits}f}-{self.hi:.{digits}f})"


def interval(value: float | None, se: float | None) -> Interval | None:
    """value +- 1.96 se; ``se`` None (not measured) keeps the value without an interval."""
    if value is None or not math.isfinite(value):
        return None
    if se is None or not math.isfinite(se):
        return Interval(value, None, None, None)
    return Interval(value, se, value - Z95 * se, value + Z95 * se)


def mean_interval(values: Sequence[float]) -> Interval | None:
    """Mean of independent values (replicate seeds) with se = sd / sqrt(n) and a t interval."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    n, mean = len(vals), sum(vals) / len(vals)
    if n < 2:
        return Interval(mean, None, None, None, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return Interval(mean, sd / math.sqrt(n), mean - half, mean + half, n)


def weighted_mean_se(values: Sequence[float], weights: Sequence[float]) -> tuple[float, float]:
    """(sum w*v / sum w, its standard error) over independent examples.

    The held-out loss is a ratio: summed token NLL over summed tokens. Examples, not tokens, are
    independent, so the error is the delta-method (cluster) one over examples:
    se^2 = sum((w_i (v_i - mean))^2) / (n (n - 1) wbar^2), wbar the mean weight.
    With equal weights this is sd / sqrt(n).
    """
    n = len(values)
    total = float(sum(weights))
    mean = sum(w * v for v, w in zip(values, weights, strict=True)) / total
    if n < 2:
        return mean, math.nan
    wbar = total / n
    ss = sum((w * (v - mean)) ** 2 for v, w in zip(values, weights, strict=True))
    return mean, math.sqrt(ss / (n * (n - 1))) / wbar


@dataclass(frozen=True)
class Delta:
    """leader - other on one metric, with its 95% interval and how it was computed."""

    delta: float
    se: float | None
    lo: float | None
    hi: float | None
    n: int  # paired items, or seeds per side, or 0 (no uncertainty known)
    method: str  # "paired items" | "replicate seeds" | "stderrs" | "raw"
    p_mcnemar: float | None = None  # exact McNemar p, for 0/1 item outcomes

    def excludes_zero(self) -> bool:
        """Whether the difference is told apart from no difference (raw: any non-zero Δ)."""
        if self.lo is None or self.hi is None:
            return self.delta != 0
        return self.lo > 0 or self.hi < 0


def paired_delta(pairs: dict[str, list[tuple[float, float, float]]]) -> Delta:
    """leader - other over items scored for both, grouped by task: {task: [(a, b, weight)]}.

    Each task's Δ is the weighted mean of a - b (weights: tokens for held-out loss, 1 for an
    lm-eval item) with its delta-method se; the headline Δ is the mean over tasks (the headline
    score is the mean of the tasks' metrics), se = sqrt(sum se_t^2) / T.
    """
    deltas, variances, n = [], [], 0
    for items in pairs.values():
        d, se = weighted_mean_se([a - b for a, b, _ in items], [w for _, _, w in items])
        deltas.append(d)
        variances.append(se**2)
        n += len(items)
    t = len(deltas)
    delta = sum(deltas) / t
    se = math.sqrt(sum(variances)) / t
    outcomes = {v for items in pairs.values() for a, b, _ in items for v in (a, b)}
    p = None
    if outcomes <= {0.0, 1.0} and t == 1:
        items = next(iter(pairs.values()))
        p = mcnemar_p(sum(a > b for a, b, _ in items), sum(a < b for a, b, _ in items))
    if not math.isfinite(se):
        return Delta(delta, None, None, None, n, "paired items", p)
    return Delta(delta, se, delta - Z95 * se, delta + Z95 * se, n, "paired items", p)


def welch_delta(a: Sequence[float], b: Sequence[float]) -> Delta:
    """mean(a) - mean(b) over replicate seeds, Welch's t interval."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se = math.sqrt(va / na + vb / nb)
    if se == 0:
        return Delta(ma - mb, 0.0, ma - mb, ma - mb, min(na, nb), "replicate seeds")
    df = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    half = sps.t.ppf(0.975, df) * se
    return Delta(ma - mb, se, ma - mb - half, ma - mb + half, min(na, nb), "replicate seeds")


def unpaired_delta(a: Interval, b: Interval) -> Delta:
    """a - b from two values with their own stderrs (no shared items known)."""
    if a.se is None or b.se is None:
        return Delta(a.value - b.value, None, None, None, 0, "raw")
    se = math.sqrt(a.se**2 + b.se**2)
    d = a.value - b.value
    return Delta(d, se, d - Z95 * se, d + Z95 * se, 0, "stderrs")


def mcnemar_p(b: int, c: int) -> float:
    """Exact McNemar test: b items only the leader got right, c only the other. p = two-sided
    binomial(min(b, c); b + c, 1/2); 1.0 when no item is discordant."""
    if b + c == 0:
        return 1.0
    return min(1.0, 2 * sps.binom.cdf(min(b, c), b + c, 0.5))


def needed_n(n: int, se: float, delta: float) -> int | None:
    """Items (or seeds) that would detect ``delta`` at 95% / 80% power, from the se seen at n:
    se scales with 1 / sqrt(n), and detection needs |Δ| = 2.80 se."""
    if not delta or se is None or not math.isfinite(se) or n <= 0:
        return None
    return math.ceil(n * ((Z95 + Z80_POWER) * se / abs(delta)) ** 2)


def detectable(se: float | None) -> float | None:
    """The smallest difference the current data detects at 95% / 80% power: 2.80 se."""
    return None if se is None else (Z95 + Z80_POWER) * se
