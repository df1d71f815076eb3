"""Faults the tests inject into real trials, through the harness's `train.callbacks` key:

python -m harness 'train.callbacks=[faults.OomAtStep2]'     (tests/ on PYTHONPATH: conftest)
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback


class OomAtStep2(TrainerCallback):
    """Raise CUDA's out-of-memory error as step 2 begins (the trial must record status oom)."""

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. (injected by tests/faults.py)")


class NanAtStep2(TrainerCallback):
    """Poison one adapter weight as step 2 begins: the next loss is NaN (status failed)."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.model = model

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == 1:
            with torch.no_grad():
                next(p for p in self.model.parameters() if p.requires_grad).fill_(float("nan"))


class NanUntilFixed(NanAtStep2):
    """NanAtStep2 until the cause is "fixed": FAULTS_FIXED=1 in the environment."""

    def on_step_begin(self, args, state, control, **kw):
        if not os.environ.get("FAULTS_FIXED"):
            super().on_step_begin(args, state, control, **kw)


class SlowSteps(TrainerCallback):
    """Sleep 1 s after every step: a 3-step trial lasts long enough to be killed mid-way."""

    def on_step_end(self, args, state, control, **kw):
        time.sleep(1.0)


class DieBeforeTell(TrainerCallback):
    """In a study whose trials run in the driver: SIGKILL the driver after trial 0 has written
    its record, before it is told to the study (the window a resume must recover from)."""

    def on_train_end(self, args, state, control, **kw):
        if Path(args.output_dir).parent.name == "trial_0":
            driver = sys.modules["harness.sweep.study"]
            driver.tell = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
