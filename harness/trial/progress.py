"""What a trial prints while it runs: one line per logged step (step/total, loss, loss tokens/s,
ETA), the held-out evaluation's batches and each lm-eval phase with its time.

On a terminal the steps and the evaluation batches draw a progress bar on stderr; when output goes
to a file or a pipe they are plain lines on stdout (the held-out evaluation at most one line per
10 s, then its result), so a log reads top to bottom. HF's own per-log dicts are replaced.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from harness.logs import interactive

EVAL_LINE_EVERY_S = 10.0  # a 3-minute held-out evaluation prints ~18 lines, not one per batch


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`: precise where it matters, short where it doesn't."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class TrainProgress(TrainerCallback):
    """Progress of training and of the held-out evaluation, read from the trial's meter.

    Args:
        meter: the trial's MeasureCallback (synchronized step times, loss tokens per step).
        bar: draw tqdm bars; default: when `interactive()`.
    """

    def __init__(self, meter, *, bar: bool | None = None) -> None:
        self.meter = meter
        self.bar = interactive() if bar is None else bar
        self.total, self.t0, self.logged_steps = 0, 0.0, 0
        self.train_bar = self.eval_bar = None
        self.eval_done, self.eval_t0, self.eval_last = 0, 0.0, 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.total, self.t0, self.logged_steps = state.max_steps, time.perf_counter(), 0
        if self.bar:
            from tqdm.auto import tqdm

            self.train_bar = tqdm(total=self.total, desc="train", unit="step", dynamic_ncols=True)
        else:
            print(f"train: {self.total} steps", flush=True)

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs or not self.total:
            return
        step = state.global_step
        times, tokens = self.meter.step_times_s, self.meter.loss_tokens
        since = min(self.logged_steps, len(times))  # the steps since the last logged one
        rate = sum(tokens[since:]) / max(sum(times[since:]), 1e-9)
        self.logged_steps = len(times)
        left = (time.perf_counter() - self.t0) / max(step, 1) * (self.total - step)
        loss = float(logs["loss"])
        if self.train_bar is not None:
            self.train_bar.update(step - self.train_bar.n)
            self.train_bar.set_postfix_str(f"loss {loss:.4f}, {rate:,.1f} loss-tok/s")
            return
        width = len(str(self.total))
        print(f"step {step:>{width}}/{self.total}  loss {loss:.4f}  {rate:,.1f} loss-tok/s  "
              f"ETA {duration(left)}", flush=True)  # fmt: skip

    def on_train_end(self, args, state, control, **kw):
        if self.train_bar is not None:
            self.train_bar.close()
            self.train_bar = None

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kw):
        total = len(eval_dataloader) if eval_dataloader is not None else 0
        now = time.perf_counter()
        if self.eval_done == 0:
            self.eval_t0 = self.eval_last = now
            if self.bar:
                from tqdm.auto import tqdm

                self.eval_bar = tqdm(total=total, desc="held-out eval", unit="batch",
                                     leave=False, dynamic_ncols=True)  # fmt: skip
        self.eval_done += 1
        if self.eval_bar is not None:
            self.eval_bar.update(1)
        elif now - self.eval_last >= EVAL_LINE_EVERY_S:
            self.eval_last = now
            print(f"held-out eval: batch {self.eval_done}/{total}", flush=True)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None
        loss = (metrics or {}).get("eval_loss")
        took = duration(time.perf_counter() - self.eval_t0) if self.eval_done else "0 s"
        shown = "" if loss is None else f"loss {loss:.4f}, "
        line = (
            f"held-out eval at step {state.global_step}: {shown}{self.eval_done} batches in {took}"
        )
        if self.train_bar is not None:  # a periodic evaluation: above the bar, not through it
            self.train_bar.write(line)
        else:
            print(line, flush=True)
        self.eval_done = 0


def attach(trainer, meter) -> TrainProgress:
    """Replace HF's per-log printing (a dict a step, or its bar) with `TrainProgress`."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    progress = TrainProgress(meter)
    trainer.add_callback(progress)
    return progress


@contextmanager
def phase(what: str) -> Iterator[None]:
    """`<what> ...` as it starts and `<what>: done in 12 s` as it ends (lm-eval's phases)."""
    print(f"{what} ...", flush=True)
    t0 = time.perf_counter()
    yield
    print(f"{what}: done in {duration(time.perf_counter() - t0)}", flush=True)
