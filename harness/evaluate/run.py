"""The glue from a trial to lm-eval: score the scored form after tuning, and before (cached per
base model, quant, engine, form and the content of every task and data file); record what was
scored and the command that reproduces it (``python -m harness.evaluate <trial dir>``)."""

import hashlib
import json
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.evaluate import fingerprint, forms
from harness.evaluate.items import ITEMS_NAME, write_items
from harness.paths import cache_dir
from harness.trial import data as data_mod
from harness.trial import progress

CPU_AUTO_BATCH = 8  # the CPU reports no OOM to probe with; 8 kept 135M scoring under 2 GiB RSS
REPRODUCE = "python -m harness.evaluate"


def score_trial(cfg, plan, model, tokenizer, rec: dict, *, out_dir: Path, weights: str) -> None:
    """lm-eval after tuning (``eval.scored_form``) and before; fills ``rec["lm_eval"]`` and
    ``rec["eval"]`` and writes ``eval_items.jsonl``. Call after the adapter (and merged model)
    are saved: the scored state is the one they hold."""
    ecfg = cfg.eval
    if not ecfg.tasks:
        return
    embedded_dir = out_dir / "embedded_task"
    embedded_dir.mkdir(parents=True, exist_ok=True)
    rows = data_mod.heldout_task_rows(plan.heldout_examples, tokenizer, cfg.data)
    (embedded_dir / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    form = ecfg.scored_form
    if form == "merged":
        scored = forms.load_merged(out_dir / "merged", device=plan.device)
    else:
        scored = forms.as_trained(model)
    settings = scoring_settings(cfg, plan.data_dir, embedded_dir)
    batch, auto = choose_batch_size(ecfg.batch_size, scored, tokenizer, plan.device)
    settings["batch_size"] = batch
    files = fingerprint.scored_files(
        ecfg.tasks, data_dir=plan.data_dir, embedded_dir=embedded_dir,
        include_path=settings["include_path"],
    )  # fmt: skip
    after = score_phase(scored, tokenizer, settings, out_dir / "lm_eval" / "after")
    before, computed = {"scores": {}, "items": [], "primary": {}}, []
    if ecfg.base_scores:
        key = base_key(cfg, weights, plan.device, settings, files)

        def base() -> dict:
            computed.append(True)
            with forms.base_of(form, scored, weights, device=plan.device) as base_model:
                return score_phase(base_model, tokenizer, settings, out_dir / "lm_eval" / "before")

        from harness.evaluate.cache import base_scores_cached

        before = base_scores_cached(key, base, cache_file=cache_dir() / "base_scores.json")
    from harness.evaluate.lmeval import merge_before_after

    rec["lm_eval"] = merge_before_after(before["scores"], after["scores"])
    write_items(out_dir / ITEMS_NAME, {"after": after["items"], "before": before["items"]})
    cached = bool(ecfg.base_scores) and not computed
    rec["eval"] = _eval_block(
        cfg, plan, settings, files, model=model, auto=auto, out_dir=out_dir,
        before=before, after=after, cached=cached,
    )  # fmt: skip


def _eval_block(cfg, plan, settings, files, *, model, auto, out_dir, before, after, cached) -> dict:
    """The record's account of what was scored, how, and the command that scores it again."""
    form = cfg.eval.scored_form
    saved = form == "merged" or (out_dir / "adapter" / forms.ADAPTER_FILE).is_file()
    include = settings["include_path"]
    return {
        "scored_form": form,
        "scored_model": forms.describe(form, asdict(cfg.quant), asdict(cfg.engine)),
        "adapter_dtypes": forms.adapter_dtypes(model),
        "device": plan.device,
        "batch_size": settings["batch_size"],
        "batch_size_auto": auto,
        "limit": settings["limit"],
        "num_fewshot": cfg.eval.num_fewshot,
        "seed": cfg.train.seed,
        "tasks": list(cfg.eval.tasks),
        "primary_metrics": {**before["primary"], **after["primary"]},
        "data_dir": str(Path(plan.data_dir).resolve()),
        "include_path": str(include) if include else None,
        "task_dir": "lm_eval/after/lm_eval_tasks",
        "files": files,
        "files_sha1": fingerprint.digest(files),
        "items": ITEMS_NAME,
        "before_from_cache": cached,
        "reproduce": f"{REPRODUCE} {shlex.quote(str(Path(out_dir).resolve()))}" if saved else None,
    }


def scoring_settings(cfg, data_dir: Path, embedded_dir: Path) -> dict[str, Any]:
    """The keyword arguments of ``run_lm_eval`` a trial's config fixes (all but batch size)."""
    ecfg = cfg.eval
    limit = ecfg.limit
    limit = int(limit) if limit is not None and limit >= 1 else limit
    return {
        "tasks": list(ecfg.tasks),
        "data_dir": Path(data_dir),
        "embedded_dir": embedded_dir,
        "include_path": Path(ecfg.include_path).resolve() if ecfg.include_path else None,
        "limit": limit,
        "num_fewshot": ecfg.num_fewshot,
        "seed": cfg.train.seed,
    }


def score_phase(model: Any, tokenizer: Any, settings: dict, work_dir: Path) -> dict[str, Any]:
    """One lm-eval run as JSON-able parts: scores, per-item metrics, declared primary metrics."""
    from harness.evaluate.lmeval import run_lm_eval

    with progress.phase(f"lm-eval ({work_dir.name}) on {', '.join(settings['tasks'])}"):
        ev = run_lm_eval(model, tokenizer, work_dir=work_dir, **settings)
    return {"scores": ev.scores, "items": ev.items, "primary": ev.primary}


def choose_batch_size(requested: str | int, model: Any, tokenizer: Any, device: str):
    """(batch size, chosen automatically?). ``auto`` is resolved once, to a number the record
    keeps: lm-eval's own probe (the largest batch of full-length rows that fits, from 64 down) on
    CUDA, 8 on the CPU. A fixed number makes the reproduction batch, pad and round alike."""
    text = str(requested)
    if text.isdigit():
        return int(text), False
    if device != "cuda":
        return CPU_AUTO_BATCH, True
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    try:
        probe = HFLM(pretrained=model, tokenizer=tokenizer, batch_size="auto")
        return int(probe._detect_batch_size()), True
    finally:
        model.train(was_training)


def base_key(cfg, weights: str, device: str, settings: dict, files: dict[str, str]) -> dict:
    """What the base model's scores depend on (``cache.base_scores_cached`` adds lm-eval's
    version): the weights and their files, quant, engine, form, batch size, few-shot seed and
    the content of every task and data file."""
    return {
        "weights": weights,
        "weights_files": weights_fingerprint(weights),
        "quant": asdict(cfg.quant),
        "engine": asdict(cfg.engine),
        "scored_form": cfg.eval.scored_form,
        "device": device,
        "tasks": settings["tasks"],
        "limit": settings["limit"],
        "num_fewshot": settings["num_fewshot"],
        "seed": settings["seed"],
        "batch_size": settings["batch_size"],
        "files_sha1": fingerprint.digest(files),
    }


def weights_fingerprint(weights: str) -> str | None:
    """sha1 over (name, size, mtime) of a local weights folder's files; None for a hub id."""
    path = Path(weights)
    if not path.is_dir():
        return None
    digest = hashlib.sha1()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        stat = f.stat()
        digest.update(f"{f.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
