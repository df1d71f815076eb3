"""Trial records: one JSON per trial, written atomically, never edited afterwards.

Schema (``schema_version`` 1). Every measurement carries its unit in its name.

    schema_version      1
    trial_id            unique id (uuid4 hex)
    config_hash         sha1 of the canonical resolved config (same settings -> same hash)
    status              "success" | "oom" | "failed" | "pruned" | "diverged" (trained to the
                        end but collapsed: harness/trial/outcome.py divergence; never picked)
    error               null | one-line message;  traceback (if any) in ``error.txt`` beside
    started_at, finished_at   ISO-8601 UTC;  started_unix_s: the start in seconds (float)
    pool                {base_reused, data_reused}: what the sweep's pool handed this trial
    levers              what each engine lever put in place (harness/engine/build.py), e.g.
                        checkpointed_layers / num_layers, slim_layers, lora_fused,
                        memory_cap_gib, causal_padding_batches (train and held-out batches
                        that ran without their padding mask)
    config              the resolved, validated config {model, quant, lora, optim, data, train,
                        eval, engine}; records whose engine levers sit under ``train`` are read
                        through harness/config/migrate.py
    overrides           the Hydra overrides of this job, e.g. ["lora.r=16", "quant=fp4"]
    choices             the Hydra group choices, e.g. {"model": "smollm2-135m", "quant": "nf4"}
    model               {name, source, random_weights, architecture, hidden_size, num_layers,
                         intermediate_size, vocab_size, num_heads, num_kv_heads,
                         weights_dir (the base weights folder loaded), model_class,
                         weights_name (e.g. "<file>.gguf sha256:<16 hex>": tells files apart)}
    prompt              {format: "chat" | "alpaca", why}  (data.prompt_format resolved)
    params              {total, trainable, trainable_pct}
    optimizer           {requested, used, fallback_reason}
    device              {type: "cuda"|"cpu", name, total_memory_gib}
    throughput          {loss_tokens_per_s, padded_tokens_per_s, samples_per_s,
                         step_time_median_s, step_time_iqr_s, timed_steps, warmup_steps,
                         step_times_s, gc_pause_s (cyclic GC inside the timed steps),
                         gc_full_collections_train, profiled_steps (train.profile_steps > 0:
                         profiled steps left out of the rates)}
    profile             train.profile_steps > 0 only (harness/trial/profile.py): {first_step,
                         steps, wall_ms_per_step, gpu_busy_ms_per_step, gpu_busy_fraction,
                         kernel_launches_per_step, cuda_runtime_launch_calls_per_step,
                         graph_launches_per_step, cpu_ops_per_step, top_kernels: [{name,
                         calls_per_step, ms_per_step}], trace, timed (profiled steps inside
                         the tokens/s window)}; the CUDA fields are null on the CPU
    memory              {kind: "cuda"|"cpu_rss", phases: {load|train|eval: {...}}}
                        cuda phases: {peak_allocated_gib, peak_reserved_gib}
                        cpu phases:  {peak_rss_gib}   (process RSS; never reported as VRAM)
    peak_vram_reserved_gib   train-phase peak reserved VRAM (null on the CPU)
    peak_vram_allocated_gib  train-phase peak allocated VRAM (null on the CPU)
    loss                {curve: [{step, loss, grad_norm}], final_train, eval, eval_perplexity,
                         eval_curve: [{step, loss}]}
    lm_eval             {task: {metric: {before, after, delta, stderr_before, stderr_after,
                         higher_is_better}}}     (empty for random-weight models)
    eval                what was scored and how (harness/evaluate/run.py): {scored_form
                        ("4bit" | "merged"), scored_model, adapter_dtypes, device, batch_size,
                        batch_size_auto, limit, num_fewshot, seed, tasks, primary_metrics,
                        data_dir, include_path, task_dir, files ({file: sha1} of every task and
                        data file read), files_sha1, items ("eval_items.jsonl": per-item
                        metrics, both phases), before_from_cache, reproduce (the command that
                        scores it again: python -m harness.evaluate <trial dir>)}
    score               the headline quality number (harness/evaluate/headline.py): the mean
                        over tasks of each task's primary metric after tuning; null when not
                        measured
    score_stderr        its standard error: sqrt(sum of the tasks' stderr^2) / n_tasks
    score_detail        {aggregation, before, scored_form, tasks: {task: {metric, after,
                         stderr_after, before, higher_is_better, in_score}}}
    peak_rss_gib        highest process RSS over the phases (CPU trials)
    oom                 {phase, peak_allocated_gib, peak_reserved_gib}  (status "oom" only)
    timings_s           {load, train, eval, total}
    env                 {python, torch, transformers, peft, bitsandbytes, trl, lm_eval,
                         git_commit, git_dirty, hostname}
    artifacts           {adapter_dir, merged_dir, profile_trace (profiled trials)}  (paths
                        relative to the record's dir)
    generations         [{prompt, base, tuned}]  (optional)
"""

import hashlib
import json
import os
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.trial.measure import device_info, environment

SCHEMA_VERSION = 1
RECORD_NAME = "record.json"
STATUSES = ("success", "oom", "failed", "pruned", "diverged")


def config_hash(cfg) -> str:
    """Same settings -> same hash."""
    return hashlib.sha1(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()


def new_record(cfg, overrides: list[str] | None, choices: dict | None, optimizer: dict,
               device: str) -> dict[str, Any]:  # fmt: skip
    """The record of a trial about to start: what it runs, where and with which versions."""
    from harness.trial.outcome import now

    return {
        "schema_version": SCHEMA_VERSION,
        "trial_id": uuid.uuid4().hex,
        "config_hash": config_hash(cfg),
        "status": "failed",
        "error": None,
        "started_at": now(),
        "started_unix_s": time.time(),  # with timings_s: where a sweep's wall time went
        "config": asdict(cfg),
        "overrides": list(overrides or []),
        "choices": dict(choices or {}),
        "optimizer": optimizer,
        "device": device_info(device),
        "lm_eval": {},
        "score": None,
        "score_stderr": None,
        "score_detail": None,
        "artifacts": {"adapter_dir": None, "merged_dir": None},
        "env": environment(),
    }


def write_record(record: dict[str, Any], out_dir: Path) -> Path:
    """Write ``record.json`` atomically: a temp file in the same dir, fsync, then rename.

    A process killed mid-write leaves at most a stray ``.record-*.tmp``, never a partial record.
    An existing record is never overwritten: results are append-only.
    """
    if record.get("status") not in STATUSES:
        raise ValueError(f"record status {record.get('status')!r} not in {STATUSES}")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / RECORD_NAME
    if target.exists():
        raise FileExistsError(f"{target} exists; records are append-only")
    fd, tmp = tempfile.mkstemp(prefix=".record-", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=False, default=_jsonable)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, target)  # fails if target appeared meanwhile: never clobber a record
    finally:
        os.unlink(tmp)
    return target


def read_record(path: Path) -> dict[str, Any]:
    """Read one record (a ``record.json`` path or the dir holding it)."""
    path = path / RECORD_NAME if path.is_dir() else path
    with open(path) as f:
        return json.load(f)


def find_records(root: Path) -> list[Path]:
    """All ``record.json`` files under ``root``, sorted by path."""
    return sorted(root.rglob(RECORD_NAME))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
