"""A named study in sweeps/<name>.yaml -> a validated `StudySpec`, and the Optuna pieces built
from it: sampler, pruner, search space -> Hydra overrides, record -> objective values.

Every check runs before any trial: a bad sampler, metric, direction or search space names the
field, the value and what is allowed (ConfigError), like the trial config does.
"""

import math
import operator
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from omegaconf import OmegaConf

from harness.analysis.frame import get_path
from harness.analysis.pareto import DIRECTIONS
from harness.errors import ConfigError
from harness.sweep.grid import FailureLimit

SAMPLERS = ("tpe", "random", "grid", "nsga2")
PRUNERS = ("none", "median", "percentile", "hyperband")
PARAM_TYPES = ("categorical", "int", "float")
# Optuna 5 samplers read each trial's constraints (Trial.set_constraint): TPE and NSGA-II rank
# infeasible trials last; random and grid ignore them. best/Pareto here always exclude them.
_OPS = {"<=": operator.sub, ">=": lambda value, bound: bound - value}


@dataclass
class Objective:
    metric: str  # dotted path into the record: score, loss.eval, peak_vram_reserved_gib, ...
    direction: str = "maximize"


@dataclass
class Constraint:
    """``peak_vram_reserved_gib <= 24``: feasible when metric - 24 <= 0 (Optuna's convention)."""

    metric: str
    op: str
    bound: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"

    def value(self, record: dict) -> float | None:
        got = get_path(record, self.metric)
        return None if got is None else float(_OPS[self.op](float(got), self.bound))


@dataclass
class StudySpec:
    """One named study. See sweeps/*.yaml for every key in use."""

    name: str
    n_trials: int | None = None  # the total over all runs and workers; grids: the grid size
    storage: str | None = None  # SQLAlchemy URL; default sqlite:///outputs/studies/<name>.db
    sampler: dict = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    objectives: list = field(default_factory=lambda: [{"metric": "score"}])
    pruner: dict = field(default_factory=lambda: {"name": "none"})
    constraints: list = field(default_factory=list)
    overrides: list = field(default_factory=list)  # Hydra overrides shared by every trial
    space: dict = field(default_factory=dict)  # key -> [choices] | {type, low, high, log, step}
    grid: dict = field(default_factory=dict)  # key -> [values]; implies sampler grid
    fail_limit: dict = field(default_factory=dict)  # FailureLimit fields
    heartbeat: dict = field(default_factory=dict)  # {interval: s, grace: s, max_retry: n}
    replicates: int = 1  # seeds per trial (train.seed=0..n-1); the objective is their mean

    def __post_init__(self) -> None:
        if self.grid:
            self.sampler = {**self.sampler, "name": "grid"}
            if self.space:
                raise ConfigError("space", list(self.space), "give either grid or space, not both")
            self.space = {k: list(v) for k, v in self.grid.items()}
        name = self.sampler.get("name")
        if name not in SAMPLERS:
            raise ConfigError("sampler.name", name, f"allowed: {', '.join(SAMPLERS)}")
        if name == "grid" and not self.grid:
            raise ConfigError("grid", self.grid, "sampler grid needs a grid: {key: [values]}")
        if not self.space:
            raise ConfigError("space", self.space, "at least one key to search over")
        self.objectives = [Objective(**o) for o in self.objectives]
        for obj in self.objectives:
            if obj.direction not in DIRECTIONS:
                raise ConfigError("objectives.direction", obj.direction, f"one of {DIRECTIONS}")
        self.constraints = [parse_constraint(c) for c in self.constraints]
        if self.pruner.get("name", "none") not in PRUNERS:
            raise ConfigError("pruner.name", self.pruner.get("name"), f"one of {PRUNERS}")
        if self.pruned and len(self.objectives) > 1:
            raise ConfigError(
                "pruner.name",
                self.pruner["name"],
                "Optuna prunes single-objective "
                "studies only; use name: none with several objectives",
            )
        for key, dist in self.space.items():
            _check_param(key, dist)
        if self.n_trials is None:
            self.n_trials = self.grid_size
        if not isinstance(self.n_trials, int) or self.n_trials <= 0:
            raise ConfigError("n_trials", self.n_trials, "an integer > 0 (the study's total)")
        if self.grid and self.n_trials > self.grid_size:
            raise ConfigError("n_trials", self.n_trials, f"at most the grid size {self.grid_size}")
        self.limit = FailureLimit(**self.fail_limit)
        check_heartbeat(self.heartbeat)
        self._check_replicates()

    def _check_replicates(self) -> None:
        n = self.replicates
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError("replicates", n, "an integer >= 1 (seeds per trial)")
        if n > 1 and "train.seed" in self.space:
            why = "replicates sets train.seed itself; search it or replicate it"
            raise ConfigError("space.train.seed", self.space["train.seed"], why)
        if n > 1 and self.pruned:
            why = "none with replicates > 1: a pruner judges one run, not a mean"
            raise ConfigError("pruner.name", self.pruner["name"], why)

    def replicate_overrides(self) -> list[list[str]]:
        """The extra overrides of each replicate run of a trial: [[]] without replicates."""
        if self.replicates == 1:
            return [[]]
        return [[f"train.seed={k}"] for k in range(self.replicates)]

    @property
    def pruned(self) -> bool:
        return self.pruner.get("name", "none") != "none"

    @property
    def grid_size(self) -> int | None:
        return math.prod(len(v) for v in self.grid.values()) if self.grid else None

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]


def load_spec(path: Path, **replace: Any) -> StudySpec:
    """Read sweeps/<name>.yaml; keyword arguments that are not None replace its keys."""
    if not path.is_file():
        raise ConfigError("spec", str(path), "an existing study file, e.g. sweeps/tpe.yaml")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f"line {where.line + 1}: " if where else ""
        why = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError("spec", str(path), f"valid YAML ({at}{why})") from None
    if not isinstance(raw, dict):
        raise ConfigError("spec", str(path), "a YAML mapping of study keys (name, space, ...)")
    known = {f.name for f in fields(StudySpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}", raw[unknown[0]], f"known keys: {sorted(known)}")
    raw.update({k: v for k, v in replace.items() if v is not None})
    return StudySpec(**raw)


def check_heartbeat(beat: dict) -> None:
    """{interval: s, grace: s, max_retry: n}: a trial silent for `grace` s is failed, so grace
    must outlast a beat interval or every live trial would be failed between two beats."""
    allowed = {"interval", "grace", "max_retry"}
    for key, value in beat.items():
        if key not in allowed:
            raise ConfigError(f"heartbeat.{key}", value, f"known keys: {sorted(allowed)}")
        low = 0 if key == "max_retry" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"heartbeat.{key}", value, f"an integer >= {low}")
    interval, grace = beat.get("interval", 60), beat.get("grace", 180)
    if grace <= interval:
        raise ConfigError("heartbeat.grace", grace, f"> the heartbeat interval {interval} s")


def parse_constraint(text: str) -> Constraint:
    parts = str(text).split()
    if len(parts) != 3 or parts[1] not in _OPS:
        raise ConfigError("constraints", text, "'<metric> <= <number>' or '<metric> >= <number>'")
    try:
        return Constraint(parts[0], parts[1], float(parts[2]))
    except ValueError:
        raise ConfigError("constraints", text, "the bound must be a number") from None


def _check_param(key: str, dist: Any) -> None:
    if isinstance(dist, list):
        if not dist:
            raise ConfigError(f"space.{key}", dist, "a non-empty list of choices")
        return
    if not isinstance(dist, dict) or dist.get("type") not in PARAM_TYPES:
        raise ConfigError(f"space.{key}", dist, f"a list of choices or {{type: {PARAM_TYPES}}}")
    if dist["type"] == "categorical":
        _check_param(key, dist.get("choices"))
    elif not dist.get("low", 0) < dist.get("high", 0) or (dist.get("log") and dist["low"] <= 0):
        raise ConfigError(f"space.{key}", dist, "low < high (and low > 0 with log: true)")


def suggest_overrides(trial: optuna.Trial, spec: StudySpec) -> list[str]:
    """Sample every key of the space now (so the whole draw happens under the study lock) and
    return the trial's Hydra overrides: ``["lora.r=16", "train.lr=0.00031", ...]``."""
    out = []
    for key, dist in spec.space.items():
        if isinstance(dist, list) or dist["type"] == "categorical":
            choices = dist if isinstance(dist, list) else dist["choices"]
            value = trial.suggest_categorical(key, choices)
        else:
            suggest = trial.suggest_int if dist["type"] == "int" else trial.suggest_float
            opts = {k: dist[k] for k in ("step", "log") if k in dist}
            value = suggest(key, dist["low"], dist["high"], **opts)
        out.append(f"{key}={hydra_value(value)}")
    return out


def hydra_value(value: Any) -> str:
    """A Python value as Hydra override text (true/false, null, numbers, quoted odd strings)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if re.fullmatch(r"\[[\w.+/, -]*\]", text):  # a list of plain items: Hydra's list syntax
        return text
    plain = all(c.isalnum() or c in "_-+./" for c in text)
    return text if plain else "'" + text.replace("'", "\\'") + "'"


def make_sampler(
    spec: StudySpec, *, trial_number: int | None = None
) -> optuna.samplers.BaseSampler:
    """The study's sampler. With `trial_number`, a seeded sampler is reseeded from (seed, number):
    every worker process would otherwise replay the same random stream and draw the same
    "random" startup points; now trial N gets the same draw whichever worker runs it. The grid
    keeps its seed: it is the shuffle that maps grid ids to points in every worker."""
    opts = {k: v for k, v in spec.sampler.items() if k != "name"}
    name = spec.sampler["name"]
    if name != "grid" and opts.get("seed") is not None and trial_number is not None:
        seq = np.random.SeedSequence([int(opts["seed"]), trial_number])
        opts["seed"] = int(seq.generate_state(1)[0])
    if name == "tpe":
        return optuna.samplers.TPESampler(**opts)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(**opts)
    if name == "random":
        return optuna.samplers.RandomSampler(**opts)
    return optuna.samplers.GridSampler(spec.grid, **opts)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    opts = {k: v for k, v in spec.pruner.items() if k != "name"}
    return {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }[spec.pruner.get("name", "none")](**opts)


def objective_values(spec: StudySpec, record: dict) -> list[float] | None:
    """The record's objective values, or None where one is missing or not finite."""
    vals = [get_path(record, o.metric) for o in spec.objectives]
    if any(v is None or not math.isfinite(float(v)) for v in vals):
        return None
    return [float(v) for v in vals]
