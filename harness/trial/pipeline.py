"""THE trial routine. Every run, grid or study goes through `run_trial`.

    preflight (validate everything cheap) -> load + quantize -> prepare + adapter -> data ->
    train (SFTTrainer) -> evaluate -> save adapter -> record

Failures are results: CUDA OOM -> status "oom" with the memory reached; NaN loss -> "failed";
pruned -> "pruned"; anything else -> "failed" with its traceback in error.txt. Bad settings are
refused by `preflight` before any model is loaded.
"""

import hashlib
import json
import logging
import math
import time
import traceback
import uuid
from contextlib import nullcontext
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import torch

from harness.config.schema import TrialConfig
from harness.engine import build as levers
from harness.engine import offload
from harness.trial import data as data_mod
from harness.trial import flops
from harness.trial import model as models
from harness.trial import preflight as preflight_checks
from harness.trial.measure import (
    PhaseMemory,
    Stopwatch,
    device_info,
    environment,
    frozen_heap,
    throughput,
)
from harness.trial.record import RECORD_NAME, SCHEMA_VERSION, write_record
from harness.trial.train import NonFiniteLoss, Pruned, build_trainer

log = logging.getLogger(__name__)


def config_hash(cfg: TrialConfig) -> str:
    """Same settings -> same hash (fault injection and output paths excluded)."""
    d = asdict(cfg)
    d["train"].pop("inject_fault", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()


def run_trial(
    cfg: TrialConfig, out_dir: Path, *, overrides: list[str] | None = None,
    choices: dict | None = None, on_eval=None, pool: "models.BasePool | None" = None,
) -> dict:  # fmt: skip
    """Run one trial and write its record into `out_dir`. Returns the record.

    Raises ConfigError (before any model is loaded) for bad settings.
    """
    if (Path(out_dir) / RECORD_NAME).exists():  # before any work: its result could not be kept
        raise FileExistsError(f"{Path(out_dir) / RECORD_NAME} exists; records are append-only "
                              "(choose another out_dir / hydra.sweep.dir)")  # fmt: skip
    plan = preflight_checks.preflight(cfg)
    rec = _new_record(cfg, overrides, choices, plan)
    mem, clock = PhaseMemory(plan.device), Stopwatch()
    try:
        _pipeline(cfg, plan, rec, mem, clock, out_dir, on_eval, pool)
        rec["status"] = "success"
    except torch.OutOfMemoryError as e:
        phase = mem.failed_phase
        rec.update(
            status="oom", error=_one_line(e), oom={"phase": phase, **mem.phases.get(phase, {})}
        )
    except Pruned as e:
        rec.update(status="pruned", error=str(e))
    except NonFiniteLoss as e:
        rec.update(status="failed", error=str(e))
    except Exception as e:  # noqa: BLE001 - any other failure is recorded, with its traceback
        rec.update(status="failed", error=_one_line(e))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "error.txt").write_text(traceback.format_exc())
    finally:
        rec["memory"] = {"kind": mem.kind, "phases": mem.phases}
        train_mem = mem.phases.get("train", {})
        rec["peak_vram_reserved_gib"] = train_mem.get("peak_reserved_gib")
        rec["peak_vram_allocated_gib"] = train_mem.get("peak_allocated_gib")
        rec["peak_rss_gib"] = max(
            (p.get("peak_rss_gib", 0) for p in mem.phases.values()), default=None
        )
        rec["timings_s"] = clock.total()
        rec["finished_at"] = _now()
    write_record(rec, out_dir)
    return rec


def _pipeline(cfg, plan, rec, mem, clock, out_dir, on_eval, pool) -> None:
    import transformers

    # 1. load + quantize (or reuse the pool's quantized base) and attach the adapter
    with mem.phase("load"), clock("load"):
        weights, tok_src, random_weights = models.weights_source(cfg.model, seed=cfg.train.seed)
        tokenizer = models.load_tokenizer(tok_src)
        # before the base loads: its weights then sit in expandable segments too, which
        # empty_cache can hand back in part (levers.apply sets it again, idempotently)
        offload.expandable_segments(cfg.train.expandable_segments)
        expandable = cfg.train.expandable_segments  # part of the pool's key (models.BasePool)
        base = pool.get(cfg.model, cfg.quant, plan.device, expandable) if pool else None
        rec["pool"] = {"base_reused": base is not None, "data_reused": False}
        base = base or models.load_base(weights, cfg.quant, device=plan.device)
        # the adapter's random init (LoRA A) from train.seed: the same in a sweep's 5th trial as
        # in a fresh process, so trials that differ in one setting start from the same weights
        transformers.set_seed(cfg.train.seed)
        model = models.attach_adapter(
            base, cfg.lora, cfg.quant, targets=plan.targets,
            checkpointing=cfg.train.checkpointing != "none",
        )  # fmt: skip
        dtype = models.DTYPES[cfg.quant.compute_dtype]
        rec["levers"] = levers.apply(model, cfg.train, compute_dtype=dtype)
        # what the levers moved or cast away, before it is reused
        models.release_cached_memory(collect=False)
    rec["model"] = models.shape_summary(cfg.model, plan.hf_config, random_weights=random_weights)
    rec["params"] = models.count_params(model)

    # 2. data: tokenize with loss on responses only. A sweep's trials with the same data and
    # tokenizer share the work: the pool keeps the datasets the first trainer prepared from them
    # (truncated, packed and labelled by TRL), and later trainers take those as they are.
    data_key = ("prepared", tok_src, repr(cfg.data))
    prepared = pool.memo.get(data_key) if pool else None
    if prepared is None:
        train_rows = data_mod.tokenize(plan.train_examples, tokenizer, cfg.data)
        eval_rows = data_mod.tokenize(plan.heldout_examples, tokenizer, cfg.data)
    else:
        train_rows, eval_rows = prepared
        rec["pool"]["data_reused"] = True
    # 3. train
    trainer, meter = build_trainer(
        model, tokenizer, train_rows, eval_rows, cfg.train, optim_used=plan.optimizer["used"],
        weight_decay=cfg.optim.weight_decay, max_seq_len=cfg.data.max_seq_len,
        packing=cfg.data.packing, packing_strategy=cfg.data.packing_strategy,
        device=plan.device, out_dir=out_dir / "trainer",
        bf16=cfg.quant.compute_dtype == "bf16" and plan.device != "cpu",
        fp16=cfg.quant.compute_dtype == "fp16" and plan.device != "cpu", on_eval=on_eval,
    )  # fmt: skip
    if pool and prepared is None:
        pool.cached(data_key, lambda: (trainer.train_dataset, trainer.eval_dataset))
    rec["levers"]["chunked_loss"] = models.has_fused_lm_head(model)  # the memory model reads it
    models.release_cached_memory(collect=False)  # blocks setup freed (casts) are not training's
    try:
        with mem.phase("train"), clock("train"), frozen_heap(cfg.train.gc_freeze), meter.gc:
            trainer.train()
    finally:
        models.forget_optimizer_overrides()  # the optimizer has read them; the modules may go
        rec["levers"]["flat_optimizer_tensors"] = meter.flat_optimizer_tensors
        rec["levers"]["causal_padding_batches"] = meter.collator.unmasked_batches
        rec["throughput"] = throughput(
            meter.step_times_s, meter.loss_tokens, meter.padded_tokens, meter.samples,
            warmup=cfg.train.timing_warmup_steps, gc_pause_s=meter.gc_pause_s,
        )  # fmt: skip
        rec["throughput"]["gc_full_collections_train"] = meter.gc.full_collections
        _add_mfu(rec, plan.hf_config)
        curve = meter.loss_curve
        rec["loss"] = {"curve": curve, "final_train": curve[-1]["loss"] if curve else None,
                       "eval_curve": meter.eval_curve}  # fmt: skip
    if meter.stop_reason:
        pruned = meter.stop_reason.startswith("pruned")
        if pruned and pool:  # the frozen base is unharmed: keep it for the next trial
            pool.put(cfg.model, cfg.quant, plan.device, models.detach_adapter(model), expandable)
        raise (Pruned if pruned else NonFiniteLoss)(meter.stop_reason)
    # 4. evaluate: held-out loss, then lm-eval after (adapter on) and before (adapter off, cached)
    with mem.phase("eval"), clock("eval"):
        eval_loss = trainer.evaluate()["eval_loss"]
        if not math.isfinite(eval_loss):
            raise NonFiniteLoss(f"non-finite held-out loss {eval_loss}")
        rec["loss"].update(eval=eval_loss, eval_perplexity=math.exp(min(eval_loss, 50)))
        if not random_weights:
            rec["lm_eval"] = preflight_checks.run_lm_eval(
                cfg, plan, model, tokenizer, out_dir=out_dir, weights=weights
            )
            if cfg.train.generations:
                rec["generations"] = _generations(model, tokenizer, plan, cfg)
    rec["score"] = _score(rec)
    # 5. save the adapter (and optionally a merged 16-bit model)
    if cfg.train.save_adapter:
        model.save_pretrained(out_dir / "adapter")
        tokenizer.save_pretrained(out_dir / "adapter")
        rec["artifacts"]["adapter_dir"] = "adapter"
    if cfg.train.merge:
        models.merge_to_16bit(weights, out_dir / "adapter", out_dir / "merged", device=plan.device)
        rec["artifacts"]["merged_dir"] = "merged"
    if pool:
        pool.put(cfg.model, cfg.quant, plan.device, models.detach_adapter(model), expandable)


def _add_mfu(rec: dict, hf_config) -> None:
    tp, lev = rec["throughput"], rec.get("levers") or {}
    if not tp.get("timed_steps") or rec["device"]["type"] != "cuda":
        return
    tokens_per_s, lora = tp["padded_tokens_per_s"], rec["params"]["trainable"]
    tp.update(flops.utilization(
        hf_config, tokens_per_s, seq_len=tokens_per_s / tp["samples_per_s"], lora_params=lora,
        recompute_fraction=lev.get("checkpointed_layers", 0) / max(lev.get("num_layers", 1), 1),
        recompute_trimmed_layers=lev.get("recompute_trimmed", 0),
    ))  # fmt: skip


def _generations(model, tokenizer, plan, cfg) -> list[dict]:
    rows = data_mod.heldout_task_rows(plan.heldout_examples, tokenizer, cfg.data)
    out = []
    for row in rows[: cfg.train.generations]:
        ids = tokenizer(row["text"], return_tensors="pt", add_special_tokens=False).to(plan.device)
        gen = {}
        for label in ("base", "tuned"):
            with torch.no_grad(), model.disable_adapter() if label == "base" else nullcontext():
                o = model.generate(**ids, max_new_tokens=24, do_sample=False)
            gen[label] = tokenizer.decode(
                o[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
            )
        out.append({"prompt": row["text"], "expected": row["answer"], **gen})
    return out


def _score(rec: dict) -> float | None:
    """Headline quality: the first task's first metric after tuning (higher is better, sign-flipped
    otherwise); else None. Random-weight trials have no score."""
    for metrics in rec.get("lm_eval", {}).values():
        for m in metrics.values():
            after = m.get("after")
            if after is not None:
                return after if m.get("higher_is_better", True) else -after
    return None


def _new_record(cfg, overrides, choices, plan) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "trial_id": uuid.uuid4().hex,
        "config_hash": config_hash(cfg),
        "status": "failed",
        "error": None,
        "started_at": _now(),
        "started_unix_s": time.time(),  # with timings_s: where a sweep's wall time went
        "config": asdict(cfg),
        "overrides": list(overrides or []),
        "choices": dict(choices or {}),
        "optimizer": plan.optimizer,
        "device": device_info(plan.device),
        "lm_eval": {},
        "score": None,
        "artifacts": {"adapter_dir": None, "merged_dir": None},
        "env": environment(),
    }


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
