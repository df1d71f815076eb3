"""Decide like a careful engineer: the leader on the ranking metric and every setting not told
apart from it form a tie set; the pick within it is the cheapest.

Two settings are compared by, in order of preference:
  * replicate seeds on both sides (n >= 2): Welch's t over their values;
  * per-item results on the same items (lm-eval items, held-out examples): a paired difference;
  * each side's stderr: sqrt(se_a^2 + se_b^2);
  * nothing known: the raw values ("raw": only equal values tie).
A setting ties the leader when the 95% interval of leader - other holds 0.

Cost, within the tie set: lower peak memory (differences under 2% are equal: allocator rounding
moves a peak by a few percent), then higher throughput (under 5% equal: step-time noise), then
fewer trainable parameters, then the better metric value.
"""

from dataclasses import dataclass, field
from typing import Any

from harness.analysis.items import paired
from harness.analysis.rankby import RankBy
from harness.analysis.stats import (
    Delta,
    Interval,
    interval,
    mean_interval,
    needed_n,
    paired_delta,
    unpaired_delta,
    welch_delta,
)

MEMORY_TOL, SPEED_TOL = 0.02, 0.05


@dataclass
class Candidate:
    """One setting that fits: its trials' records, metric values and cost."""

    label: str
    records: list[dict[str, Any]]  # its successful replicates (>= 1)
    values: list[float]  # the metric per replicate
    stderr: float | None  # the single trial's stderr (one replicate)
    peak_gib: float | None  # the memory it needs (measured or predicted peak)
    tps: float | None
    params: float | None
    payload: Any = None  # what the caller needs back (a frame index, a predicted Choice)

    @property
    def value(self) -> Interval:
        if len(self.values) >= 2:
            return mean_interval(self.values)
        return interval(self.values[0], self.stderr)


@dataclass
class Verdict:
    """The chosen candidate, the leader, the tie set and the one line that says why."""

    chosen: Candidate
    leader: Candidate
    tie: list[Candidate]
    deltas: dict[str, Delta] = field(default_factory=dict)  # other label -> leader - other
    line: str = ""


def compare(leader: Candidate, other: Candidate, metric: RankBy) -> Delta:
    """leader - other on the metric (see the module docstring for the method)."""
    if len(leader.values) >= 2 and len(other.values) >= 2:
        return welch_delta(leader.values, other.values)
    if metric.items is not None and len(leader.records) == len(other.records) == 1:
        a, b = metric.items(leader.records[0]), metric.items(other.records[0])
        pairs = paired(a, b) if a and b else {}
        if pairs:
            return paired_delta(pairs)
    return unpaired_delta(leader.value, other.value)


def decide_among(cands: list[Candidate], metric: RankBy) -> Verdict | None:
    """The pick among candidates that all fit: best value, then the tie set, then the cost."""
    if not cands:
        return None
    sign = 1.0 if metric.higher else -1.0
    ordered = sorted(cands, key=lambda c: -sign * c.value.value)
    leader = ordered[0]
    deltas = {c.label: compare(leader, c, metric) for c in ordered[1:]}
    tie = [leader] + [c for c in ordered[1:] if not deltas[c.label].excludes_zero()]
    chosen, why = cheapest(tie)
    verdict = Verdict(chosen, leader, tie, deltas)
    verdict.line = explain(verdict, metric, why, n_all=len(cands))
    return verdict


def cheapest(tie: list[Candidate]) -> tuple[Candidate, str]:
    """The cheapest of a tie set (tie[0] is the leader) and what made it so, in words."""
    if len(tie) == 1:
        return tie[0], ""
    pool, why = list(tie), "the best value; nothing cheaper"
    peaks = [c.peak_gib for c in pool if c.peak_gib is not None]
    if peaks and min(peaks) < max(peaks) * (1 - MEMORY_TOL):
        low = min(peaks)
        pool = [c for c in pool if c.peak_gib is not None and c.peak_gib <= low * (1 + MEMORY_TOL)]
        why = "{gib:.2g} GiB less peak memory than {next}"
    else:
        speeds = [c.tps for c in pool if c.tps is not None]
        params = [c.params for c in pool if c.params is not None]
        if speeds and max(speeds) * (1 - SPEED_TOL) > min(speeds):
            top = max(speeds)
            pool = [c for c in pool if c.tps is not None and c.tps >= top * (1 - SPEED_TOL)]
            why = "the same memory (within 2%), {pct:.0f}% more tokens/s than {next}"
        elif params and min(params) < max(params):
            pool = [c for c in pool if c.params == min(params)]
            why = "the same memory and speed, {fewer} fewer trainable parameters than {next}"
    chosen = pool[0]  # pool keeps the tie set's order: the best value first
    # Against the leader when the pick is another setting, else the next cheapest.
    rest = [c for c in tie if c is not chosen]
    nxt = tie[0] if chosen is not tie[0] else min(rest, key=_cost)
    return chosen, why.format(
        gib=(nxt.peak_gib or 0) - (chosen.peak_gib or 0),
        pct=100 * ((chosen.tps or 0) / (nxt.tps or 1) - 1),
        fewer=_count((nxt.params or 0) - (chosen.params or 0)),
        next=nxt.label,
    )


def explain(v: Verdict, metric: RankBy, why: str, *, n_all: int) -> str:
    """One line: who leads, who is within noise, what was picked and why."""
    digits = _digits(v)
    lead = f"{v.leader.label} leads on {metric.title}: {v.leader.value.text(digits)}"
    if len(v.tie) == 1:
        if not v.deltas:
            return f"{lead}; the only candidate."
        closest = min(v.deltas.items(), key=lambda kv: abs(kv[1].delta))
        return f"{lead}; every other setting is worse beyond noise (closest: {closest[0]}, " + (
            f"{delta_text(v.leader.label, closest[0], closest[1], digits)})."
        )
    if len(v.tie) <= 4:
        names = ", ".join(c.label for c in v.tie[:-1]) + f" and {v.tie[-1].label}"
    else:
        names = f"{len(v.tie)} settings, the leader {v.leader.label} among them,"
    shown = sorted(v.tie[1:], key=lambda c: abs(v.deltas[c.label].delta))[:2]
    diffs = "; ".join(delta_text(v.leader.label, c.label, v.deltas[c.label], digits)
                      for c in shown)  # fmt: skip
    line = f"{names} are within noise ({diffs}); picking {v.chosen.label}: {why}."
    if len(v.tie) == n_all:
        line += " " + power_text(v, shown[0])
    return line


def delta_text(a: str, b: str, d: Delta, digits: int = 3) -> str:
    """'r4 - r16 = +0.031 (95% CI -0.060...+0.122, 32 paired items)'."""
    if d.lo is None:
        return f"{a} - {b} = {d.delta:+.{digits}f} (raw values: no uncertainty recorded)"
    basis = {"paired items": f"{d.n} paired items", "replicate seeds": f"{d.n} seeds a side",
             "stderrs": "from each side's stderr"}[d.method]  # fmt: skip
    mcnemar = f", McNemar p={d.p_mcnemar:.2g}" if d.p_mcnemar is not None else ""
    f = f"+.{digits}f"
    return f"{a} - {b} = {d.delta:{f}} (95% CI {d.lo:{f}}...{d.hi:{f}}, {basis}{mcnemar})"


def power_text(v: Verdict, runner: Candidate) -> str:
    """What would separate the leader from the runner-up: items or seeds at 80% power."""
    d = v.deltas[runner.label]
    unit = {"paired items": "items", "replicate seeds": "seeds a side"}.get(d.method)
    if d.se is None or unit is None:
        return ("Nothing separates the candidates; per-item results or replicate seeds "
                "(train.seed=0,1,2) would measure the noise.")  # fmt: skip
    n = needed_n(d.n, d.se, d.delta)
    if n is None:
        return f"Nothing separates the candidates: their {unit} give the same value."
    return (
        f"Nothing separates the candidates: telling {v.leader.label} from {runner.label} "
        f"(|delta| {abs(d.delta):.3g}) at 80% power needs ~{n:,} {unit} (now {d.n})."
    )


def _cost(c: Candidate) -> tuple:
    return (c.peak_gib if c.peak_gib is not None else float("inf"), -(c.tps or 0))


def _digits(v: Verdict) -> int:
    return 4 if abs(v.leader.value.value) >= 1 else 3


def _count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,.0f}"
