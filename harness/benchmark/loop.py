"""The reference loop: a hand-written QLoRA training loop, the yardstick beside every engine.

    python -m harness.benchmark.loop [OVERRIDE ...] out_dir=DIR

What a careful engineer writes without a framework, on the trial's own settings: the base loaded
and quantized as a trial loads it (`trial/model.load_base`); peft's LoRA on the same targets with
the same rank, alpha, dropout and fp32 adapter weights; no `prepare_model_for_kbit_training`, so
no fp32 copies of embeddings, norms or head (activations stay in the compute dtype); every decoder
layer recomputed (HF's non-reentrant checkpointing); bf16 autocast on CUDA; the same optimizer,
learning rate, schedule, clipping, seed and packed rows. No Trainer, no callbacks, no harness
lever. Its record has the fields a benchmark table reads (tokens/s, MFU, peak reserved memory),
measured as a trial measures them, with `runner: loop`.
"""

import math
import random
import sys
import time
import traceback
from pathlib import Path

import torch

from harness.errors import ConfigError
from harness.logs import quiet_third_party

quiet_third_party()  # before bitsandbytes is imported (harness.trial imports it)

from harness.trial import data as data_mod  # noqa: E402
from harness.trial import flops, outcome  # noqa: E402
from harness.trial import model as models  # noqa: E402
from harness.trial.measure import PhaseMemory, Stopwatch, sync, throughput  # noqa: E402
from harness.trial.record import new_record, write_record  # noqa: E402


def main(argv: list[str]) -> int:
    from harness.config.compose import compose_trial
    from harness.trial.preflight import preflight

    out = [a.split("=", 1)[1] for a in argv if a.startswith("out_dir=")]
    overrides = [a for a in argv if not a.startswith(("out_dir=", "hydra."))]
    try:
        if len(out) != 1:
            raise ConfigError("out_dir", out or None, "exactly one out_dir=DIR")
        cfg, choices = compose_trial(overrides)
        plan = preflight(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rec = new_record(cfg, overrides, choices, plan.optimizer, plan.device)
    rec["runner"] = "loop"
    mem, clock = PhaseMemory(plan.device), Stopwatch()
    try:
        run(cfg, plan, rec, mem, clock)
        rec["status"] = "success"
    except torch.OutOfMemoryError as e:
        phase = mem.failed_phase
        rec.update(status="oom", error=outcome.one_line(e),
                   oom={"phase": phase, **mem.phases.get(phase, {})})  # fmt: skip
    except Exception as e:  # noqa: BLE001 - recorded with its traceback, like a trial
        rec.update(status="failed", error=outcome.one_line(e))
        Path(out[0]).mkdir(parents=True, exist_ok=True)
        (Path(out[0]) / "error.txt").write_text(traceback.format_exc())
    finally:
        outcome.close_record(rec, mem, clock)
    write_record(rec, Path(out[0]))
    print(f"loop: {rec['status']}", rec.get("throughput", {}).get("padded_tokens_per_s"))
    return 0 if rec["status"] == "success" else 1


def run(cfg, plan, rec: dict, mem: PhaseMemory, clock: Stopwatch) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, get_scheduler, set_seed

    from harness.trial.train import HF_OPTIM

    tcfg, device = cfg.train, plan.device
    with mem.phase("load"), clock("load"):
        weights, tok_src, random_weights = models.weights_source(cfg.model, seed=tcfg.seed)
        tokenizer = models.load_tokenizer(tok_src)
        model = models.load_base(weights, cfg.quant, device=device)
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        set_seed(tcfg.seed)
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=plan.targets, use_rslora="rslora" in cfg.lora.variant,
            use_dora="dora" in cfg.lora.variant, bias=cfg.lora.bias, task_type="CAUSAL_LM",
        ))  # fmt: skip
    rec["model"] = models.shape_summary(cfg.model, plan.hf_config, random_weights=random_weights)
    rec["params"] = models.count_params(model)
    rows = data_mod.tokenize(plan.train_examples, tokenizer, cfg.data)
    batches = _batches(rows, cfg.data, tcfg, tokenizer.pad_token_id or 0)
    args = TrainingArguments(output_dir="/tmp/unused", optim=HF_OPTIM[plan.optimizer["used"]],
                             learning_rate=tcfg.lr, weight_decay=cfg.optim.weight_decay,
                             use_cpu=device == "cpu", report_to=[])  # fmt: skip
    opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    opt = opt_cls([p for p in model.parameters() if p.requires_grad], **opt_kwargs)
    sched = get_scheduler(tcfg.scheduler, opt, tcfg.warmup_steps, tcfg.max_steps)
    dtype = models.DTYPES[cfg.quant.compute_dtype] if device == "cuda" else None
    times, loss_tokens, padded, samples, curve = [], [], [], [], []
    model.train()
    with mem.phase("train"), clock("train"):
        for step in range(tcfg.max_steps):
            sync(device)
            t0 = time.perf_counter()
            total = torch.zeros((), device=device)
            micro = [next(batches) for _ in range(tcfg.grad_accum)]
            n_loss = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
            for b in micro:
                b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
                with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                    loss = model(**b).loss
                weight = int((b["labels"][:, 1:] != -100).sum()) / n_loss  # token-weighted mean
                (loss * weight).backward()
                total += loss.detach() * weight
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], tcfg.max_grad_norm
            )
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            times.append(time.perf_counter() - t0)
            loss_tokens.append(n_loss)
            padded.append(sum(b["input_ids"].numel() for b in micro))
            samples.append(sum(len(b["input_ids"]) for b in micro))
            if (step + 1) % tcfg.logging_steps == 0 or step + 1 == tcfg.max_steps:
                curve.append({"step": step + 1, "loss": float(total)})
    if not all(math.isfinite(c["loss"]) for c in curve):
        raise RuntimeError(f"non-finite loss in {curve}")
    tp = throughput(times, loss_tokens, padded, samples, warmup=tcfg.timing_warmup_steps)
    if device == "cuda" and tp.get("timed_steps"):
        tp.update(flops.utilization(
            plan.hf_config, tp["padded_tokens_per_s"], recompute_fraction=1.0,
            seq_len=tp["padded_tokens_per_s"] / tp["samples_per_s"],
            lora_params=rec["params"]["trainable"],
        ))  # fmt: skip
    rec["throughput"] = tp
    rec["loss"] = {"curve": curve, "final_train": curve[-1]["loss"] if curve else None}
    rec["levers"] = {"runner": "loop", "checkpointed_layers": plan.hf_config.num_hidden_layers,
                     "num_layers": plan.hf_config.num_hidden_layers}  # fmt: skip


def _batches(rows: list[dict], dcfg, tcfg, pad_id: int):
    """Endless batches of `input_ids` and `labels` (-100 off the completions): with data.packing,
    the examples concatenated and cut into max_seq_len rows (TRL's `wrapped` packing); else each
    example right-padded to the longest in its batch. Shuffled per pass with the trial's seed."""

    def labels(r: dict) -> list[int]:
        return [t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"], strict=True)]

    if dcfg.packing:
        ids = [t for r in rows for t in r["input_ids"]]
        lab = [t for r in rows for t in labels(r)]
        n = dcfg.max_seq_len
        rows = [{"input_ids": ids[i : i + n], "labels": lab[i : i + n]}
                for i in range(0, len(ids) - n + 1, n)]  # fmt: skip
    else:
        rows = [{"input_ids": r["input_ids"], "labels": labels(r)} for r in rows]
    if not rows:
        raise ConfigError("data.max_seq_len", dcfg.max_seq_len, "longer than all the data packed")
    rng = random.Random(tcfg.seed)
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for i in range(0, len(order) - tcfg.batch_size + 1, tcfg.batch_size):
            batch = [rows[j] for j in order[i : i + tcfg.batch_size]]
            width = max(len(r["input_ids"]) for r in batch)
            pads = [width - len(r["input_ids"]) for r in batch]
            yield {
                "input_ids": torch.tensor([r["input_ids"] + [pad_id] * n
                                           for r, n in zip(batch, pads, strict=True)]),
                "labels": torch.tensor([r["labels"] + [-100] * n
                                        for r, n in zip(batch, pads, strict=True)]),
                "attention_mask": torch.tensor([[1] * (width - n) + [0] * n for n in pads]),
            }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
