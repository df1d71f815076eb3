"""Training with TRL's SFTTrainer, instrumented: synchronized step times, loss-token counts, loss
curve, held-out loss checkpoints (for pruning), non-finite loss detection."""

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback

from harness.config.engine import EngineConfig
from harness.config.schema import DataConfig, OptimConfig, TrainConfig
from harness.errors import ConfigError
from harness.trial import progress
from harness.trial.measure import GcPauses, sync
from harness.trial.profile import ProfileWindow

# Our optimizer names -> transformers' TrainingArguments.optim names.
HF_OPTIM = {
    "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_32bit",
    "adamw_8bit": "adamw_bnb_8bit",
    "adamw_torch": "adamw_torch",
    "adamw_torch_fused": "adamw_torch_fused",
    "sgd": "sgd",
}


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf."""


class Pruned(RuntimeError):
    """The sweep's pruner stopped this trial on an intermediate held-out loss."""


def optimizer_probe(name: str, device: str) -> str | None:
    """Run one step of the optimizer on a tiny tensor on `device`; None if it works, else why."""
    import bitsandbytes as bnb

    if name.startswith("paged") and not device.startswith("cuda"):
        # bitsandbytes would run it unpaged: paging moves optimizer state between GPU and host
        # memory, so on the CPU the name would misreport what ran.
        return "paged optimizers page state out of GPU memory; they need CUDA"
    ctor = {
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
        "adamw_8bit": bnb.optim.AdamW8bit,
        "adamw_torch": torch.optim.AdamW,
        "adamw_torch_fused": lambda p, lr: torch.optim.AdamW(p, lr=lr, fused=True),
        "sgd": torch.optim.SGD,
    }[name]
    try:
        # 4096 elements: bnb's 8-bit optimizers fall back to 32-bit state below that size.
        param = torch.nn.Parameter(torch.zeros(64, 64, device=device))
        opt = ctor([param], lr=1e-3)
        param.grad = torch.ones_like(param)
        opt.step()
        sync(device)
    except Exception as e:  # any failure means: cannot run here
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def choose_optimizer(ocfg: OptimConfig, device: str) -> dict[str, str | None]:
    """{requested, used, fallback_reason}; raises ConfigError when it can't run and may not fall
    back."""
    why = optimizer_probe(ocfg.name, device)
    if why is None:
        return {"requested": ocfg.name, "used": ocfg.name, "fallback_reason": None}
    if ocfg.on_unsupported == "fail":
        raise ConfigError("optim.name", ocfg.name, f"cannot run on {device} ({why})")
    fallback = ocfg.fallback
    if fallback == "auto":
        fallback = {"paged_adamw_8bit": "adamw_8bit"}.get(ocfg.name, "adamw_torch")
    if optimizer_probe(fallback, device) is not None:
        raise ConfigError("optim.fallback", fallback, f"cannot run on {device} either")
    return {"requested": ocfg.name, "used": fallback, "fallback_reason": f"{device}: {why}"}


class CountingCollator:
    """Wraps the trainer's collator to count, per batch, the tokens that carry loss (label !=
    -100, after the one-token shift), all tokens of the padded batch, and samples.

    With `causal_padding`, a batch whose padding is all trailing (every row's padding after its
    last real token) and carries no loss gets an all-ones attention mask. The decoder's causal
    mask already keeps each real token from attending to later positions, so no real token sees
    the padding either way, and no loss or gradient reaches it: the same math. HF then skips the
    padding mask and attention runs its unmasked causal kernel (H200: a masked llama3-8b b4 step
    took ~0.08 s longer, the first one ~0.3 s: BENCHMARKS.md). The
    check runs on the host, on the collated batch."""

    def __init__(self, inner: Callable, *, causal_padding: bool = False) -> None:
        self.inner, self.causal_padding = inner, causal_padding
        self.pending: list[tuple[int, int, int]] = []
        self.unmasked_batches = 0  # padded batches that ran under the causal mask alone

    def __call__(self, features):
        batch = self.inner(features)
        labels = batch["labels"]
        loss_tokens = int((labels[..., 1:] != -100).sum())
        self.pending.append((loss_tokens, int(batch["input_ids"].numel()), len(features)))
        if self.causal_padding and _trailing_padding_only(batch):
            batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
            self.unmasked_batches += 1
        return batch

    def take(self) -> tuple[int, int, int]:
        sums = [sum(x) for x in zip(*self.pending, strict=True)] or [0, 0, 0]
        self.pending = []
        return sums[0], sums[1], sums[2]


def _trailing_padding_only(batch) -> bool:
    """Whether the batch has padding, all of it after each row's real tokens, with no loss on it."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2 or bool(mask.all()) or "position_ids" in batch:
        return False
    m = mask.int()
    # trailing: once a row's mask turns 0 it stays 0 (a running minimum equal to the mask)
    trailing = bool((m.cummin(dim=1).values == m).all())
    return trailing and bool((batch["labels"][m == 0] == -100).all())


class MeasureCallback(TrainerCallback):
    """Per-step synchronized wall time and token counts; loss curve; pruning; faults."""

    def __init__(
        self, collator: CountingCollator, device: str, *,
        on_eval: Callable[[int, float], bool] | None = None,
    ) -> None:  # fmt: skip
        self.collator, self.device, self.on_eval = collator, device, on_eval
        self.step_times_s: list[float] = []
        self.loss_tokens: list[int] = []
        self.padded_tokens: list[int] = []
        self.samples: list[int] = []
        self.loss_curve: list[dict] = []
        self.eval_curve: list[dict] = []
        self.stop_reason: str | None = None
        self.flat_optimizer_tensors = 0  # tensors folded by engine.flat_optimizer
        self.gc = GcPauses()  # installed by the trial around trainer.train()
        self.gc_pause_s: list[float] = []  # per step
        self.profiler = ProfileWindow(device, first=0, steps=0)  # build_trainer's, if profiling
        self._t0, self._gc0 = 0.0, 0.0

    def on_step_begin(self, args, state, control, **kw):
        sync(self.device)
        self._t0, self._gc0 = time.perf_counter(), self.gc.pause_s

    def on_step_end(self, args, state, control, **kw):
        sync(self.device)
        self.step_times_s.append(time.perf_counter() - self._t0)
        self.gc_pause_s.append(self.gc.pause_s - self._gc0)
        loss_tokens, padded, samples = self.collator.take()
        self.loss_tokens.append(loss_tokens)
        self.padded_tokens.append(padded)
        self.samples.append(samples)

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            loss = float(logs["loss"])
            point = {"step": state.global_step, "loss": loss}
            if logs.get("grad_norm") is not None:  # pre-clipping norm (outcome.divergence reads it)
                point["grad_norm"] = float(logs["grad_norm"])
            self.loss_curve.append(point)
            if not math.isfinite(loss):
                self.stop_reason = f"non-finite training loss {loss} at step {state.global_step}"
                control.should_training_stop = True

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        self.collator.take()  # held-out batches went through the collator: not training tokens
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        self.eval_curve.append({"step": state.global_step, "loss": float(loss)})
        if self.on_eval is not None and self.on_eval(state.global_step, float(loss)):
            self.stop_reason = f"pruned at step {state.global_step} (held-out loss {loss:.4f})"
            control.should_training_stop = True


def build_trainer(
    model, tokenizer, train_rows, eval_rows, tcfg: TrainConfig, ecfg: EngineConfig,
    dcfg: DataConfig, *, optim_used: str, weight_decay: float, device: str, precision: str,
    out_dir: Path, on_eval: Callable[[int, float], bool] | None = None,
):  # fmt: skip
    """An SFTTrainer over pre-tokenized rows (input_ids + completion_mask) with the measuring
    callback attached. Returns (trainer, callback).

    `train_rows` / `eval_rows` may instead be the datasets a previous trainer prepared from the
    same rows and data settings (`trainer.train_dataset` / `.eval_dataset`: truncated, packed,
    labelled by TRL): they are used as they are (a sweep's later trials skip that work)."""
    from datasets import Dataset
    from trl import SFTConfig

    args = SFTConfig(
        output_dir=str(out_dir),
        max_steps=tcfg.max_steps or -1,
        num_train_epochs=tcfg.epochs or 1,
        per_device_train_batch_size=tcfg.batch_size,
        per_device_eval_batch_size=tcfg.batch_size,
        gradient_accumulation_steps=tcfg.grad_accum,
        learning_rate=tcfg.lr,
        lr_scheduler_type=tcfg.scheduler,
        warmup_steps=tcfg.warmup_steps,
        max_grad_norm=tcfg.max_grad_norm,
        optim=HF_OPTIM[optim_used],
        weight_decay=weight_decay,
        logging_steps=tcfg.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must reach the log and stop the trial
        eval_strategy="steps" if tcfg.eval_every_steps else "no",
        eval_steps=tcfg.eval_every_steps or None,
        save_strategy="no",
        report_to=[],
        seed=tcfg.seed,
        data_seed=tcfg.seed,
        bf16=precision == "bf16" and device != "cpu",
        fp16=precision == "fp16" and device != "cpu",
        use_cpu=device == "cpu",
        # Checkpointing was set up when the adapter was attached and the engine built.
        gradient_checkpointing=False,
        max_length=dcfg.max_seq_len,
        packing=dcfg.packing,
        packing_strategy=dcfg.packing_strategy,
        activation_offloading=False,  # engine.checkpointing=offload is the engine's own
        completion_only_loss=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        dataset_kwargs={"skip_prepare_dataset": not isinstance(train_rows, list)},
    )
    as_dataset = lambda rows: Dataset.from_list(rows) if isinstance(rows, list) else rows  # noqa: E731
    trainer = _trainer_class(ecfg.flat_optimizer)(
        model=model,
        args=args,
        train_dataset=as_dataset(train_rows),
        eval_dataset=as_dataset(eval_rows),
        processing_class=tokenizer,
    )
    collator = CountingCollator(trainer.data_collator, causal_padding=ecfg.causal_padding)
    trainer.data_collator = collator
    callback = MeasureCallback(collator, device, on_eval=on_eval)
    trainer.meter = callback
    trainer.add_callback(callback)
    if tcfg.profile_steps:  # after the meter: the profiler's start and stop fall outside its clock
        first, steps = tcfg.timing_warmup_steps, tcfg.profile_steps
        callback.profiler = ProfileWindow(device, first=first, steps=steps)
        trainer.add_callback(callback.profiler)
    progress.attach(trainer, callback)  # step/total, loss, tokens/s, ETA instead of HF's dicts
    for path in tcfg.callbacks:
        trainer.add_callback(load_callback(path)())
    return trainer, callback


def load_callback(path: str) -> type:
    """The TrainerCallback class at `package.module.Class` (train.callbacks); else ConfigError."""
    import importlib

    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        why = f"module.Class of an importable class ({e})"
        raise ConfigError("train.callbacks", path, why) from None
    if not (isinstance(cls, type) and issubclass(cls, TrainerCallback)):
        raise ConfigError("train.callbacks", path, "must name a transformers.TrainerCallback")
    return cls


def _trainer_class(flat_optimizer: bool) -> type:
    """TRL's SFTTrainer, or with engine.flat_optimizer the harness's subclass of it: the optimizer
    HF builds folded into one update per param group (flat_optim.py), and the gradient norm
    clipped over the trainable tensors alone (HF walks every parameter of the model for it,
    several times a step: the same norm, from the same gradients)."""
    from trl import SFTTrainer

    if not flat_optimizer:
        return SFTTrainer

    class FlatOptimizerTrainer(SFTTrainer):
        def create_optimizer(self, *args, **kwargs):
            from harness.engine.flat_optim import flatten_optimizer

            opt = super().create_optimizer(*args, **kwargs)
            self.meter.flat_optimizer_tensors = flatten_optimizer(opt)
            return opt

        def _clip_grad_norm(self, model):
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:  # they clip their own way
                return super()._clip_grad_norm(model)
            self.accelerator.unscale_gradients()  # fp16's loss scaler, as accelerate does
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            return torch.nn.utils.clip_grad_norm_(trainable, self.args.max_grad_norm)

    return FlatOptimizerTrainer
