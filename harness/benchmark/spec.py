"""A benchmark file (`benchmarks/*.yaml`): named configurations, each a list of Hydra overrides.

    shared: [model=llama3-8b, train.batch_size=4]   # every configuration's first overrides
    configurations:
      - name: plain
        overrides: [engine=plain]
      - name: fast_no_trim
        overrides: [engine=fast, engine.trim_recompute=false]
        reference: fast      # what its ratios are taken against; default: plain
      - name: loop
        overrides: []
        runner: loop         # the hand-written reference loop (harness/benchmark/loop.py)

A reference must come earlier in the file, so it runs first. The file's stem names its records
folder (`benchmarks/records/<stem>/`) and its table in BENCHMARKS.md.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

FILE_KEYS = ("shared", "configurations")
CONFIG_KEYS = ("name", "overrides", "reference", "runner")
RUNNERS = ("trial", "loop")  # python -m harness | python -m harness.benchmark.loop
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a folder name
SET_BY_RUNNER = ("out_dir", "hydra.run.dir")  # each trial's record dir


class BenchFileError(ValueError):
    """A bad benchmark file or argument: the message names the file, field, value and what is
    allowed."""


@dataclass(frozen=True)
class Configuration:
    """One named configuration: the overrides after the file's shared ones."""

    name: str
    overrides: tuple[str, ...]
    reference: str | None  # None: the configuration the others are measured against
    runner: str = "trial"  # trial: a harness trial | loop: the hand-written reference loop


@dataclass(frozen=True)
class BenchFile:
    """A validated benchmark file."""

    path: Path
    shared: tuple[str, ...]
    configurations: tuple[Configuration, ...]

    @property
    def suite(self) -> str:
        return self.path.stem

    def select(self, names: list[str] | None) -> tuple[Configuration, ...]:
        """The named configurations and, transitively, their references, in file order."""
        by_name = {c.name: c for c in self.configurations}
        wanted: set[str] = set()
        for name in names or by_name:
            if name not in by_name:
                raise BenchFileError(f"--only {name!r}: allowed: {', '.join(by_name)}")
            while name is not None and name not in wanted:
                wanted.add(name)
                name = by_name[name].reference
        return tuple(c for c in self.configurations if c.name in wanted)


def load_bench_file(path: str | Path) -> BenchFile:
    """Read and validate a benchmark file.

    Raises:
        BenchFileError: a missing file, bad YAML, an unknown key or a bad value.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchFileError(
            f"{path}: no such file (a benchmark file, e.g. benchmarks/presets.yaml)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BenchFileError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise BenchFileError(
            f"{path}: {data!r}: allowed: a mapping with keys {', '.join(FILE_KEYS)}"
        )
    _known_keys(path, "", data, FILE_KEYS)
    shared = _overrides(path, "shared", data.get("shared") or [])
    raw = data.get("configurations")
    if not isinstance(raw, list) or not raw:
        raise BenchFileError(f"{path}: configurations={raw!r}: allowed: a non-empty list")
    configs: list[Configuration] = []
    default_ref = (
        "plain" if any(isinstance(c, dict) and c.get("name") == "plain" for c in raw) else None
    )
    for i, item in enumerate(raw):
        configs.append(_configuration(path, i, item, configs, default_ref))
    return BenchFile(path, shared, tuple(configs))


def _configuration(
    path: Path, i: int, item: object, earlier: list[Configuration], default_ref: str | None
) -> Configuration:
    where = f"configurations[{i}]"
    if not isinstance(item, dict):
        raise BenchFileError(
            f"{path}: {where}={item!r}: allowed: a mapping with keys name, overrides"
        )
    _known_keys(path, f"{where}.", item, CONFIG_KEYS)
    name = item.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BenchFileError(f"{path}: {where}.name={name!r}: allowed: letters, digits, _ . -")
    names = [c.name for c in earlier]
    if name in names:
        raise BenchFileError(f"{path}: {where}.name={name!r}: allowed: a name not used before")
    overrides = _overrides(path, f"{where}.overrides", item.get("overrides"))
    ref = (
        item["reference"] if "reference" in item else (None if name == default_ref else default_ref)
    )
    if ref is not None and ref not in names:
        allowed = ", ".join(names) or "none: it is the first"
        raise BenchFileError(
            f"{path}: {where}.reference={ref!r}: allowed: an earlier configuration ({allowed})"
        )
    runner = item.get("runner", "trial")
    if runner not in RUNNERS:
        raise BenchFileError(f"{path}: {where}.runner={runner!r}: allowed: {', '.join(RUNNERS)}")
    return Configuration(name, overrides, ref, runner)


def _known_keys(path: Path, prefix: str, data: dict, allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise BenchFileError(
                f"{path}: unknown key {prefix}{key}: allowed: {', '.join(allowed)}"
            )


def _overrides(path: Path, where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise BenchFileError(f"{path}: {where}={value!r}: allowed: a list of key=value overrides")
    for item in value:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in SET_BY_RUNNER:
            raise BenchFileError(f"{path}: {where}: {item!r}: allowed: any key but {SET_BY_RUNNER}")
    return tuple(value)
