"""Run a benchmark file: each configuration in its own process, its record kept append-only.

    python -m harness.bench benchmarks/presets.yaml [--only NAME ...] [--out DIR] [--check]
    python -m harness.bench --table          # BENCHMARKS.md's tables from benchmarks/records/

A run gets the id `<UTC start>-<device>` and writes
`<out>/<suite>/<run-id>/run.json` (its configurations, overrides and references) and
`<out>/<suite>/<run-id>/<configuration>/record.json` (the trial's record). Each configuration is
a fresh `python -m harness` process: no pooled base, allocator state or patched library carries
over from the one before. A reference runs before the configurations measured against it.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from harness.benchmark.spec import BenchFile, BenchFileError, Configuration, load_bench_file
from harness.benchmark.table import RECORD, record_summary, render_suite, rewrite_doc

REPO = Path(__file__).resolve().parents[2]
RECORDS = REPO / "benchmarks" / "records"
DOC = REPO / "BENCHMARKS.md"
LOG_TAIL = 25  # lines of a trial's output shown when it left no record


def main(argv: list[str] | None = None) -> int:
    """The `python -m harness.bench` command. Returns the exit status (2: bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.table:
            changed = rewrite_doc(args.doc, args.out)
            print(f"{args.doc}: {'tables rewritten' if changed else 'tables unchanged'}")
            return 0
        if args.file is None:
            raise BenchFileError(
                "a benchmark file is needed (e.g. benchmarks/presets.yaml), or --table"
            )
        bench = load_bench_file(args.file)
        configs = bench.select(args.only)
        check_composes(bench, configs)
        if args.check:
            print(f"{bench.path}: {len(configs)} configurations compose")
            return 0
        return _run_and_tabulate(bench, configs, args.out)
    except BenchFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "file", nargs="?", type=Path, help="a benchmark file, e.g. benchmarks/presets.yaml"
    )
    p.add_argument("--only", nargs="+", metavar="NAME", help="these configurations (+ references)")
    p.add_argument("--out", type=Path, default=RECORDS, help=f"records root (default {RECORDS})")
    p.add_argument("--check", action="store_true", help="validate and compose; run nothing")
    p.add_argument("--table", action="store_true", help="rewrite the tables of --doc from --out")
    p.add_argument("--doc", type=Path, default=DOC, help=f"the document (default {DOC})")
    return p


def check_composes(bench: BenchFile, configs: tuple[Configuration, ...]) -> None:
    """Compose every configuration with the real config and validate it, before any trial runs.

    Raises:
        BenchFileError: naming the configuration and what Hydra or the schema refused.
    """
    from hydra import compose, initialize_config_dir

    from harness.cli import CONF_DIR
    from harness.config.schema import register_configs, to_trial_config

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for config in configs:
            try:
                to_trial_config(compose("config", overrides=[*bench.shared, *config.overrides]))
            except Exception as e:  # Hydra, OmegaConf and the schema each raise their own type
                cause = f" ({_first_line(e.__cause__)})" if e.__cause__ else ""
                raise BenchFileError(
                    f"{bench.path}: configuration {config.name!r}: {_first_line(e)}{cause}"
                ) from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _run_and_tabulate(bench: BenchFile, configs: tuple[Configuration, ...], root: Path) -> int:
    run_dir, missing = run_suite(bench, configs, root=root)
    print(render_suite(root, bench.suite), end="")
    if root.resolve() == RECORDS.resolve():
        try:
            rewrite_doc(DOC, root)
        except BenchFileError as e:
            print(f"note: tables not rewritten: {e}", file=sys.stderr)
    print(f"records: {run_dir}")
    return 1 if missing else 0


def run_suite(
    bench: BenchFile,
    configs: tuple[Configuration, ...],
    *,
    root: Path,
    launcher: list[str] | None = None,
) -> tuple[Path, list[str]]:
    """Run the configurations in order, each in its own process, into a new run folder.

    Args:
        bench: the benchmark file.
        configs: the configurations to run (references first: `BenchFile.select`).
        root: the records root; the run lands in `root/<suite>/<run-id>/`.
        launcher: the trial command before its overrides; default `python -m harness` (the
            `loop` runner's configurations run `python -m harness.benchmark.loop`).

    Returns:
        The run folder and the names of the configurations that left no record.
    """
    launchers = {"trial": launcher or [sys.executable, "-m", "harness"],
                 "loop": [sys.executable, "-m", "harness.benchmark.loop"]}  # fmt: skip
    device = device_name([*bench.shared, *configs[0].overrides])
    started = datetime.now(UTC)
    run_dir = root / bench.suite / f"{started:%Y%m%dT%H%M%SZ}-{_slug(device)}"
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise BenchFileError(
            f"{run_dir}: exists: allowed: a new run (records are append-only)"
        ) from None
    manifest = {
        "suite": bench.suite,
        "run_id": run_dir.name,
        "file": _display(bench.path),
        "device": device,
        "started_at": started.isoformat(timespec="seconds"),
        "shared": list(bench.shared),
        "configurations": [
            {
                "name": c.name,
                "overrides": list(c.overrides),
                "reference": c.reference,
                "runner": c.runner,
            }
            for c in configs
        ],
    }
    (run_dir / "run.json").write_text(json.dumps(manifest, indent=1) + "\n")
    missing = []
    for i, config in enumerate(configs, 1):
        t0 = time.perf_counter()
        overrides = [*bench.shared, *config.overrides]
        rec = _run_one(launchers[config.runner], overrides, run_dir / config.name)
        wall = time.perf_counter() - t0
        print(
            f"[{i}/{len(configs)}] {config.name}: {record_summary(rec)} ({wall:.0f} s)", flush=True
        )
        if rec is None:
            missing.append(config.name)
    return run_dir, missing


def _run_one(launcher: list[str], overrides: list[str], dest: Path) -> dict | None:
    """One trial in its own process; its record copied to `dest/record.json`, else None."""
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        log = Path(work) / "trial.log"
        argv = [*launcher, *overrides, f"out_dir={work}", f"hydra.run.dir={work}"]
        with log.open("w") as out:
            proc = subprocess.run(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        record = Path(work) / RECORD
        if not record.is_file():
            tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
            print(f"exit {proc.returncode}, no record; its output ends:", *tail, sep="\n  ",
                  file=sys.stderr)  # fmt: skip
            return None
        dest.mkdir(parents=True)
        shutil.copyfile(record, dest / RECORD)
        return json.loads(record.read_text())


def device_name(overrides: list[str]) -> str:
    """The device the trials run on: the CUDA device's name, or cpu."""
    if "train.device=cpu" in [o.replace(" ", "") for o in overrides]:
        return "cpu"
    probe = (
        "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if proc.returncode == 0 and lines else "unknown"


def _slug(device: str) -> str:
    """`NVIDIA H200` -> `h200`, `NVIDIA H100 80GB HBM3` -> `h100-80gb-hbm3`."""
    return re.sub(r"[^a-z0-9]+", "-", device.lower().replace("nvidia", "")).strip("-") or "unknown"


def _display(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
