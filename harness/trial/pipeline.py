"""THE trial routine. Every run, grid point and study trial goes through `run_trial`.

    preflight (validate everything cheap) -> load + quantize -> adapter -> engine -> data ->
    train (SFTTrainer) -> held-out loss -> save adapter -> lm-eval -> record

Failures are results: CUDA OOM -> status "oom" with the memory reached; NaN loss -> "failed";
a collapsed training (outcome.divergence) -> "diverged"; pruned -> "pruned"; anything else ->
"failed" with its traceback in error.txt. Bad settings are refused by `preflight` before any
model is loaded.
"""

import math
import traceback
from pathlib import Path

import torch

from harness.config.schema import TrialConfig
from harness.engine import build as engine
from harness.evaluate.run import score_trial
from harness.sweep.pool import BasePool, release_cached_memory
from harness.trial import data as data_mod
from harness.trial import model as models
from harness.trial import outcome
from harness.trial.heldout import heldout_items, write_heldout
from harness.trial.measure import PhaseMemory, Stopwatch, frozen_heap
from harness.trial.preflight import preflight
from harness.trial.record import RECORD_NAME, new_record, write_record
from harness.trial.train import NonFiniteLoss, Pruned, build_trainer


def run_trial(
    cfg: TrialConfig, out_dir: Path, *, overrides: list[str] | None = None,
    choices: dict | None = None, on_eval=None, pool: BasePool | None = None,
) -> dict:  # fmt: skip
    """Run one trial and write its record into `out_dir`. Returns the record.

    Raises ConfigError (before any model is loaded) for bad settings.
    """
    if (Path(out_dir) / RECORD_NAME).exists():  # before any work: its result could not be kept
        raise FileExistsError(f"{Path(out_dir) / RECORD_NAME} exists; records are append-only "
                              "(choose another out_dir / hydra.sweep.dir)")  # fmt: skip
    plan = preflight(cfg)
    rec = new_record(cfg, overrides, choices, plan.optimizer, plan.device)
    mem, clock = PhaseMemory(plan.device), Stopwatch()
    try:
        _pipeline(cfg, plan, rec, mem, clock, out_dir, on_eval, pool or BasePool(enabled=False))
        rec["status"] = "success"
    except torch.OutOfMemoryError as e:
        phase = mem.failed_phase
        rec.update(status="oom", error=outcome.one_line(e),
                   oom={"phase": phase, **mem.phases.get(phase, {})})  # fmt: skip
    except (Pruned, NonFiniteLoss, outcome.Diverged) as e:
        status = {Pruned: "pruned", NonFiniteLoss: "failed", outcome.Diverged: "diverged"}
        rec.update(status=status[type(e)], error=str(e))
    except Exception as e:  # noqa: BLE001 - any other failure is recorded, with its traceback
        rec.update(status="failed", error=outcome.one_line(e))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "error.txt").write_text(traceback.format_exc())
    finally:
        outcome.close_record(rec, mem, clock)
    write_record(rec, out_dir)
    return rec


def _pipeline(cfg, plan, rec, mem, clock, out_dir, on_eval, pool: BasePool) -> None:
    key = pool.key(cfg.model, cfg.quant, plan.device, cfg.engine)
    with pool.lease(key) as lease:
        # 1. load + quantize (or the pool's base), attach the adapter, build the engine
        with mem.phase("load"), clock("load"):
            weights, tok_src, random_weights = models.weights_source(cfg.model, seed=cfg.train.seed)
            tokenizer = models.load_tokenizer(tok_src)
            rec["pool"] = {"base_reused": lease.base is not None, "data_reused": False}
            if cfg.engine.backend == "unsloth":  # the peer: its loading, kernels and adapter
                model, rec["levers"] = engine.build_unsloth(cfg, weights, tok_src, plan.targets)
            else:
                base = lease.base or models.load_base(weights, cfg.quant, device=plan.device)
                model = models.attach_adapter(
                    base, cfg.lora, cfg.quant, targets=plan.targets, seed=cfg.train.seed,
                    checkpointing=cfg.engine.checkpointing != "none",
                    custom_modules=engine.lora_modules(cfg.engine),
                )  # fmt: skip
                rec["levers"] = engine.build(
                    model, cfg.engine, compute_dtype=models.DTYPES[cfg.quant.compute_dtype]
                )
            release_cached_memory(collect=False)  # what the engine cast or moved away
        rec["model"] = models.shape_summary(
            cfg.model, plan.hf_config, random_weights=random_weights
        )
        outcome.what_ran(rec, cfg, weights, model, tokenizer)
        rec["params"] = models.count_params(model)
        # 2. data: tokenized with loss on responses only; a sweep's trials with the same data and
        # tokenizer reuse the datasets the first trainer prepared (truncated, packed, labelled)
        data_key = ("prepared", tok_src, repr(cfg.data))
        prepared = lease.memo.get(data_key)
        rec["pool"]["data_reused"] = prepared is not None
        train_rows, eval_rows = prepared or (
            data_mod.tokenize(plan.train_examples, tokenizer, cfg.data),
            data_mod.tokenize(plan.heldout_examples, tokenizer, cfg.data),
        )
        # 3. train
        trainer, meter = build_trainer(
            model, tokenizer, train_rows, eval_rows, cfg.train, cfg.engine, cfg.data,
            optim_used=plan.optimizer["used"], weight_decay=cfg.optim.weight_decay,
            device=plan.device, precision=cfg.quant.compute_dtype, out_dir=out_dir / "trainer",
            on_eval=on_eval,
        )  # fmt: skip
        lease.memo.setdefault(data_key, (trainer.train_dataset, trainer.eval_dataset))
        release_cached_memory(collect=False)  # blocks setup freed are not training's
        gc_freeze, profiler = frozen_heap(cfg.engine.gc_freeze), meter.profiler
        with mem.phase("train"), clock("train"), gc_freeze, meter.gc, profiler:
            trainer.train()
        outcome.training(rec, meter, model, plan.hf_config, cfg.train.timing_warmup_steps)
        outcome.profile(rec, profiler, out_dir)  # train.profile_steps: where a step's time went
        if meter.stop_reason:
            pruned = meter.stop_reason.startswith("pruned")
            if pruned:  # the frozen base is unharmed: keep it for the next trial
                lease.keep(model)
            raise (Pruned if pruned else NonFiniteLoss)(meter.stop_reason)
        # 4. evaluate: held-out loss, then lm-eval after (adapter on) and before (adapter off)
        with mem.phase("eval"), clock("eval"):
            eval_loss = trainer.evaluate()["eval_loss"]
            if not math.isfinite(eval_loss):
                raise NonFiniteLoss(f"non-finite held-out loss {eval_loss}")
            rec["loss"].update(eval=eval_loss, eval_perplexity=math.exp(min(eval_loss, 50)))
            rec["loss"].update(write_heldout(heldout_items(trainer, model), out_dir))
            collapsed = outcome.divergence(rec["loss"], rec["model"]["vocab_size"])
            if collapsed:  # before lm-eval: nothing to score
                raise outcome.Diverged(collapsed)
            # 5. save the adapter (and a merged 16-bit model) first: lm-eval scores what they hold
            merged = cfg.eval.scored_form == "merged" and not random_weights
            outcome.save(model, tokenizer, weights, cfg.train, rec, out_dir, device=plan.device,
                         merge=merged)  # fmt: skip
            if not random_weights:
                score_trial(cfg, plan, model, tokenizer, rec, out_dir=out_dir, weights=weights)
                if cfg.train.generations:
                    rec["generations"] = outcome.generations(model, tokenizer, plan, cfg)
        rec["score"] = outcome.score(rec)
        lease.keep(model)
