"""Pick the best setting of a sweep for a GPU budget; print its overrides; optionally pin it.

    python -m harness.pick --budget-gib 24 outputs/sweeps/<sweep>
    python -m harness.pick --budget-gib 16 --storage sqlite:///sweeps.db --study qlora \\
        --objective throughput
    python -m harness.pick --budget-gib 24 <sweep> --objective loss     # rank by held-out loss
    python -m harness.pick --budget-gib 24 <sweep> --write-experiment --name llama8b-24g
    python -m harness.pick --budget-gib 48 <sweep> --model llama3-70b   # never run: predicted
    python -m harness.pick --table                                      # the seeds' table

The ranking metric (``--objective auto``): a study's own objective; for a grid the score when
the sweep named its lm-eval tasks, else the held-out loss (harness/analysis/rankby.py). Among the
settings that fit, the leader and those within noise of it tie; the cheapest of them is picked
(harness/analysis/ties.py), and one line says so.

Exit status: 0 when something measured or predicted fits, 1 when nothing does, 2 on bad input.
"""

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from harness.analysis.costs import (
    metric_text,
    outside_calibration,
    prediction_assumptions,
    throughput_text,
)
from harness.analysis.decide import (
    Choice,
    Predictor,
    closest_measured,
    decide,
    measured_fits,
    pick_predicted,
)
from harness.analysis.frame import (
    StudySource,
    label_keys,
    read_error,
    records_frame,
    status_counts,
    trial_name,
)
from harness.analysis.pin import default_name, experiment_yaml, hydra_overrides, write_experiment
from harness.analysis.rankby import CHOICES, RankBy, rank_by
from harness.analysis.settings import setting_id
from harness.analysis.sources import load_records
from harness.assets.shapes import SHAPES
from harness.errors import ConfigError
from harness.memory.model import calibrate, error_report
from harness.memory.table import format_seeds_table, seeds_rows
from harness.memory.terms import Shape

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.pick", description=__doc__.split("\n")[0])
    p.add_argument("sweep", nargs="?", help="sweep dir (record.json files found recursively)")
    p.add_argument("--storage", help="Optuna RDB storage URL, e.g. sqlite:///sweeps.db")
    p.add_argument("--study", help="Optuna study name (with --storage)")
    p.add_argument("--budget-gib", type=float, help="GPU memory to fit in, GiB")
    p.add_argument("--objective", choices=list(CHOICES), default="auto",
                   help="what ranks (default auto: a study's objective, else score or held-out "
                   "loss; see harness/analysis/rankby.py)")  # fmt: skip
    p.add_argument("--margin", type=float, default=0.10, help="safety margin (default 0.10)")
    p.add_argument("--model", help="predict for this model (a harness/assets/shapes.py name)")
    p.add_argument("--write-experiment", action="store_true", help="pin it as an experiment")
    p.add_argument("--name", help="experiment name (default: from the setting)")
    conf_help = "the config folder (its model files); pins land under the output root"
    p.add_argument("--conf-dir", type=Path, default=CONF_DIR, help=conf_help)
    p.add_argument("--force", action="store_true", help="replace an existing experiment file")
    p.add_argument("--table", action="store_true", help="print what fits on 8-80 GB by size")
    args = p.parse_args(argv)
    if not args.table and args.budget_gib is None:
        p.error("--budget-gib is required (or --table)")
    if not args.table and not args.sweep and not (args.storage and args.study):
        p.error("give a sweep dir, or --storage and --study")
    return args


def _check_numbers(args: argparse.Namespace) -> None:
    if args.budget_gib is not None and not (math.isfinite(args.budget_gib) and args.budget_gib > 0):
        raise ConfigError("--budget-gib", args.budget_gib, "a GPU memory size in GiB, > 0")
    if not (math.isfinite(args.margin) and 0 <= args.margin < 1):
        raise ConfigError("--margin", args.margin, "a fraction in [0, 1), e.g. 0.10 for 10%")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source: Any = StudySource(args.storage, args.study) if args.study else args.sweep
    try:
        _check_numbers(args)
        records = load_records(source) if (args.sweep or args.study) else []
    except Exception as e:
        if (why := read_error(e)) is None:
            raise
        print(f"error: {why}", file=sys.stderr)
        return 2
    calib = calibrate(records)
    if args.table:
        rows = seeds_rows(calib, margin=args.margin)
        print(format_seeds_table(rows, margin=args.margin, calib=calib))
        print(f"\nMemory model: {calib.describe()}.")
        if args.budget_gib is None:
            return 0
    if not records:
        print(f"error: no trial records in {source}", file=sys.stderr)
        return 2
    shape, model = _target_model(args.model, records)
    if args.model and shape is None:  # the sweep ran this model: answer from its trials only
        records = [r for r in records if args.model in _model_names(r)]
    frame = records_frame(records)
    try:
        metric = rank_by(records, frame, args.objective)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    err = error_report(records)
    print(_header(args, frame, source, metric))
    if shape is None:
        _explain_no_measured_fit(frame, args)
    predictor = Predictor(calib, err["mape_pct"], shape, model)
    choice = decide(records, frame, args.budget_gib, objective=metric, margin=args.margin,
                    predictor=predictor)  # fmt: skip
    if choice is None:
        _refuse(records, args, calib, shape)
        return 1
    print(describe(choice, args, err, grid=label_keys(records), metric=metric, records=records))
    if args.write_experiment:
        return _pin(choice, args)
    return 0


def describe(
    choice: Choice, args: argparse.Namespace, err: dict, grid: list[str], *, metric: RankBy,
    records: list[dict],
) -> str:  # fmt: skip
    """The answer as text: what, how much memory, what it buys, why it, and how to rerun it."""
    rec = choice.record
    same = " (for the unchanged setting)" if choice.changes or choice.model else ""
    head = "MEASURED" if choice.kind == "measured" else "PREDICTED (memory model, not measured)"
    lines = [f"{head}: {rec.get('_setting') or rec['_label']}  [{trial_name(rec)}]"]
    if choice.kind == "measured":
        lines.append(f"  peak reserved {choice.peak_gib:.1f} GiB + {args.margin:.0%} = "
                     f"{choice.need_gib:.1f} GiB of {args.budget_gib:.1f} GiB")  # fmt: skip
    else:
        far = outside_calibration(choice.model and Shape.named(choice.model), rec, records)
        error = f"error unknown: {far}" if far else err["line"]
        lines.append(f"  predicted peak {choice.peak_gib:.1f} GiB ({error}) + {args.margin:.0%} "
                     f"= {choice.need_gib:.1f} GiB of {args.budget_gib:.1f} GiB")  # fmt: skip
        if choice.changes:
            lines.append("  changed from the measured trial: " + _kv(choice.changes))
        if choice.model:
            lines.append(f"  for model {choice.model}, never run in this sweep; "
                         + prediction_assumptions(rec, choice.changes))  # fmt: skip
            if not (args.conf_dir / "model" / f"{choice.model}.yaml").is_file():
                lines.append(f"  (to run it: add conf/model/{choice.model}.yaml)")
    if choice.verdict is not None:
        lines.append("  " + choice.verdict.line)
    where = (rec.get("model") or {}).get("name", "?")
    reps = [r for r in records if r.get("status") == "success" and setting_id(r) == setting_id(rec)]
    lines.append(f"  measured on {where} ({(rec.get('device') or {}).get('name', '?')}): "
                 f"{metric_text(reps or [rec], metric)}{same}")  # fmt: skip
    lines.append(f"  cost: {throughput_text(rec)}{same}")
    overrides = hydra_overrides(_retarget(choice), grid, choice.changes)
    lines.append(f"  record: {rec.get('_path')}")
    lines.append("  overrides: " + " ".join(overrides))
    lines.append("  rerun: python -m harness " + " ".join(overrides))
    return "\n".join(lines)


def _header(args: argparse.Namespace, frame: Any, source: Any, metric: RankBy) -> str:
    budget = f"Budget {args.budget_gib:.1f} GiB, margin {args.margin:.0%}"
    return (f"{budget}; {len(frame)} trials from {source} ({status_counts(frame)}).\n"
            f"Ranked by {metric.describe()}.\n")  # fmt: skip


def _explain_no_measured_fit(frame: Any, args: argparse.Namespace) -> None:
    cuda = frame[frame["peak_vram_reserved_gib"].notna() & (frame["status"] == "success")]
    if cuda.empty:
        print(f"No measured pick: none of the {len(frame)} trials has a CUDA peak (CPU trials "
              "measure process RSS, not VRAM), so nothing measured can be picked for a VRAM "
              "budget.\n")  # fmt: skip
        return
    if not measured_fits(frame, args.budget_gib, args.margin).empty:
        return
    row = closest_measured(frame)
    need = row["peak_vram_reserved_gib"] * (1 + args.margin)
    print(f"No measured setting fits: none of the {len(cuda)} successful CUDA trials fits "
          f"{args.budget_gib:.1f} GiB with a {args.margin:.0%} margin.\n  closest: "
          f"{row['label']} [{row['trial']}] needs {need:.1f} GiB (peak "
          f"{row['peak_vram_reserved_gib']:.1f} GiB + {args.margin:.0%}), "
          f"{need - args.budget_gib:.1f} GiB over.\n")  # fmt: skip


def _refuse(records: list, args: argparse.Namespace, calib: Any, shape: Shape | None) -> None:
    low = pick_predicted(records, math.inf, objective="memory", margin=args.margin,
                         predictor=Predictor(calib, shape=shape))  # fmt: skip
    print(f"NOTHING FITS {args.budget_gib:.1f} GiB, measured or predicted.")
    if low is not None:
        change = f" with {_kv(low.changes)}" if low.changes else ""
        print(f"  smallest predicted: {low.record['_label']}{change} needs {low.need_gib:.1f} GiB "
              f"(peak {low.peak_gib:.1f} GiB + {args.margin:.0%}).")  # fmt: skip


def _pin(choice: Choice, args: argparse.Namespace) -> int:
    if choice.model and not (args.conf_dir / "model" / f"{choice.model}.yaml").is_file():
        print(f"error: no conf/model/{choice.model}.yaml to pin a run of it", file=sys.stderr)
        return 2
    rec, changes = _retarget(choice), dict(choice.changes)
    name = args.name or default_name(rec)
    note = f"{choice.kind}: needs {choice.need_gib:.1f} GiB of {args.budget_gib:.1f} GiB"
    command = "python -m harness.pick " + " ".join(sys.argv[1:])
    text = experiment_yaml(rec, name=name, command=command, changes=changes, note=note)
    try:
        path = write_experiment(text, args.conf_dir, name, force=args.force)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nwrote {path}\n  rerun: python -m harness experiment={name}")
    return 0


def _retarget(choice: Choice) -> dict:
    """The record as it should be rerun: for another model, its group choice and no model block."""
    rec = choice.record
    if not choice.model:
        return rec
    config = {k: v for k, v in (rec.get("config") or {}).items() if k != "model"}
    return {**rec, "choices": {**(rec.get("choices") or {}), "model": choice.model},
            "config": config}  # fmt: skip


def _target_model(name: str | None, records: list[dict]) -> tuple[Shape | None, str | None]:
    """(shape, name) to predict for, or (None, None) when the sweep ran that model itself."""
    if name is None or any(_model_names(r) & {name} for r in records):
        return None, None
    if name not in SHAPES:
        known = ", ".join(sorted(SHAPES))
        raise SystemExit(f"error: --model={name!r}: not a known shape ({known})")
    return Shape.named(name), name


def _model_names(rec: dict) -> set[str]:
    return {(rec.get("model") or {}).get("name"), (rec.get("choices") or {}).get("model")}


def _kv(changes: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in changes.items())
