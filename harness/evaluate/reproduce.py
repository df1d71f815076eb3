"""``python -m harness.evaluate <trial dir>``: score again the model a trial scored, and compare.

It rebuilds the scored form from the trial's folder (harness/evaluate/forms.py: the 4-bit model
as trained from the same base weights folder, quant, compute dtype, prepared modules, engine and
the saved adapter; or the saved merged model), checks that every task and data file still has the
content the trial read, and runs lm-eval with the recorded tasks, limit, few-shot count, seed and
batch size. Each number is printed beside the record's; exit 0 when all agree to 1e-6, 1 when
any differs, 2 for a folder it cannot reproduce (one line, before any model loads).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.evaluate import fingerprint, forms
from harness.evaluate.items import ITEMS_NAME, write_items
from harness.evaluate.run import score_phase

TOLERANCE = 1e-6


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__)
    parser.add_argument("trial_dir", type=Path, help="a trial's folder (holds record.json)")
    parser.add_argument("--phase", choices=("both", "after", "before"), default="both")
    parser.add_argument("--out", type=Path, help="output folder (default <trial>/reproduced)")
    args = parser.parse_args(argv)
    try:
        rec, cfg, settings, weights = plan(args.trial_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    phases = ("after", "before") if args.phase == "both" else (args.phase,)
    if "before" in phases and not any(
        m.get("before") is not None for t in rec["lm_eval"].values() for m in t.values()
    ):
        phases = tuple(p for p in phases if p != "before")  # eval.base_scores=false: none kept
    out = args.out or args.trial_dir / "reproduced"
    scores = reproduce(rec, cfg, settings, weights, args.trial_dir, phases=phases, out=out)
    rows = compare(rec["lm_eval"], scores)
    for row in rows:
        print(f"{row['task']} {row['metric']} {row['phase']}: record {row['record']} "
              f"reproduced {row['reproduced']}{'' if row['equal'] else '  DIFFERS'}")  # fmt: skip
    bad = [r for r in rows if not r["equal"]]
    print(f"{len(rows) - len(bad)} of {len(rows)} values equal the record (to {TOLERANCE:g}); "
          f"output: {out}")  # fmt: skip
    return 1 if bad or not rows else 0


def plan(trial_dir: Path) -> tuple[dict, Any, dict[str, Any], str]:
    """(record, config, run_lm_eval settings, weights) of a trial; ConfigError where the folder
    cannot be reproduced: no record, no scores, a missing artifact, a changed task or data file."""
    import torch

    from harness.config.migrate import migrate_record
    from harness.config.schema import to_trial_config
    from harness.trial.record import RECORD_NAME, read_record

    if not (trial_dir / RECORD_NAME).is_file():
        raise ConfigError("trial_dir", str(trial_dir), f"a trial folder holding {RECORD_NAME}")
    rec = migrate_record(read_record(trial_dir))
    ev = rec.get("eval") or {}
    if rec.get("status") != "success" or not rec.get("lm_eval") or not ev:
        why = f"status {rec.get('status')}, or no eval block: nothing to reproduce"
        raise ConfigError("trial_dir", str(trial_dir), f"a trial with lm-eval scores ({why})")
    form = ev["scored_form"]
    needed = trial_dir / ("merged" if form == "merged" else f"adapter/{forms.ADAPTER_FILE}")
    if not needed.exists():
        raise ConfigError("trial_dir", str(trial_dir), f"{needed.name} is missing: the trial "
                          "saved no model to reload (train.save_adapter=false)")  # fmt: skip
    if ev["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trial_dir", str(trial_dir), "scored on CUDA; no CUDA device here")
    cfg = to_trial_config(rec["config"])
    settings = {
        "tasks": ev["tasks"],
        "data_dir": Path(ev["data_dir"]),
        "embedded_dir": trial_dir / "embedded_task",
        "include_path": Path(ev["include_path"]) if ev["include_path"] else None,
        "limit": ev["limit"],
        "num_fewshot": ev["num_fewshot"],
        "seed": ev["seed"],
        "batch_size": ev["batch_size"],
    }
    now = fingerprint.scored_files(
        ev["tasks"], data_dir=settings["data_dir"], embedded_dir=settings["embedded_dir"],
        include_path=settings["include_path"],
    )  # fmt: skip
    why = fingerprint.changed(ev["files"], now)
    if why:
        raise ConfigError("trial_dir", str(trial_dir), f"{why} since the trial scored it")
    return rec, cfg, settings, _weights(rec, cfg)


def _weights(rec: dict, cfg: Any) -> str:
    """The base weights folder the trial loaded; rebuilt (embedded, GGUF) where it is gone."""
    from harness.trial import model as models

    recorded = rec["model"]["weights_dir"]
    if Path(recorded).exists() or cfg.model.source == "hub":
        return recorded
    return models.weights_source(cfg.model, seed=cfg.train.seed)[0]


def reproduce(rec: dict, cfg: Any, settings: dict, weights: str, trial_dir: Path, *,
              phases: tuple[str, ...], out: Path) -> dict[str, dict]:  # fmt: skip
    """Score the rebuilt form in ``phases``; writes scores.json and eval_items.jsonl to ``out``."""
    from harness.trial import model as models

    device, form = rec["eval"]["device"], rec["eval"]["scored_form"]
    tokenizer = models.load_tokenizer(weights)
    if form == "merged":
        model = forms.load_merged(trial_dir / "merged", device=device)
    else:
        model = forms.rebuild_trained(cfg, weights, trial_dir / "adapter", device=device)
    results = {}
    if "after" in phases:
        results["after"] = score_phase(model, tokenizer, settings, out / "after")
    if "before" in phases:
        with forms.base_of(form, model, weights, device=device) as base:
            results["before"] = score_phase(base, tokenizer, settings, out / "before")
    write_items(out / ITEMS_NAME, {p: r["items"] for p, r in results.items()})
    scores = {phase: r["scores"] for phase, r in results.items()}
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    return scores


def compare(recorded: dict, scores: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per task, metric and phase (values and stderrs) of the record."""
    rows = []
    for phase, phase_scores in scores.items():
        for task, metrics in recorded.items():
            for metric, m in metrics.items():
                got = phase_scores.get(task, {}).get(metric) or {}
                for part, key in (("", phase), (" stderr", f"stderr_{phase}")):
                    want, have = m.get(key), got.get("stderr" if part else "value")
                    rows.append({"task": task, "metric": metric + part, "phase": phase,
                                 "record": want, "reproduced": have,
                                 "equal": close(want, have)})  # fmt: skip
    return rows


def close(a: float | None, b: float | None) -> bool:
    """Equal to 1e-6 of the larger magnitude (at least 1e-6 absolute); None equals only None."""
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))
