"""Held-out loss per example, for intervals and paired comparisons between trials.

`trainer.evaluate()` gives one number (``loss.eval``, unchanged: HF's mean over examples of
their batch's token-mean NLL). This pass scores each held-out example alone (batch 1, the
trainer's own collator and ``prediction_step``, so the same labels, autocast and fused loss), and
writes ``heldout_items.jsonl``: {"index": i, "loss": mean token NLL, "tokens": loss tokens}.

From it the record gets ``loss.eval_stderr``: the standard error of the token-weighted mean NLL
over examples (delta method with examples as clusters: tokens of one example are not
independent), and ``loss.eval_token_mean``, that token-weighted mean itself.
"""

import json
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from harness.analysis.items import HELDOUT_ITEMS
from harness.analysis.stats import weighted_mean_se


def heldout_items(trainer, model) -> list[dict]:
    """[{index, loss, tokens}] over the trainer's held-out dataset, one example per forward."""
    # The trial's counting collator counts training tokens: score through the one it wraps.
    collate = getattr(trainer.data_collator, "inner", trainer.data_collator)
    loader = DataLoader(trainer.eval_dataset, batch_size=1, shuffle=False, collate_fn=collate)
    rows = []
    model.eval()
    for i, batch in enumerate(loader):
        tokens = int((batch["labels"][..., 1:] != -100).sum())
        if tokens == 0:
            continue
        with torch.no_grad():
            loss, _, _ = trainer.prediction_step(model, batch, prediction_loss_only=True)
        rows.append({"index": i, "loss": float(loss), "tokens": tokens})
    return rows


def write_heldout(rows: list[dict], out_dir: Path) -> dict:
    """Write the per-example file; return the loss fields it adds to the record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (out_dir / HELDOUT_ITEMS).write_text(text)
    if not rows:
        return {"eval_stderr": None, "eval_items": 0}
    mean, se = weighted_mean_se([r["loss"] for r in rows], [r["tokens"] for r in rows])
    return {
        "eval_stderr": se if math.isfinite(se) else None,
        "eval_token_mean": mean,
        "eval_items": len(rows),
        "eval_tokens": sum(r["tokens"] for r in rows),
    }
