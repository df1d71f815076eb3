"""Faults the tests inject into real trials, through the harness's `train.callbacks` key:

python -m harness 'train.callbacks=[faults.OomAtStep2]'     (tests/ on PYTHONPATH: conftest)
"""

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
