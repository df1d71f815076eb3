"""A sweep with known per-item outcomes, written as trials write them (record.json,
eval_items.jsonl, heldout_items.jsonl), for the decision tests and the report.

    r16  10 items, 8 right: the leader on score and on held-out loss
    r4   6 right; differs from r16 on 3 items (2 for r16, 1 for r4): within noise; 0.3 GiB less
    r64  0 right: worse beyond noise, and the most memory
"""

import json
from pathlib import Path

ITEMS = {  # lora.r: per-item exact match on qh_embedded
    16: [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
    4: [1, 1, 1, 1, 1, 1, 0, 0, 1, 0],
    64: [0] * 10,
}
TOKENS = [10, 20, 10, 10]
LOSSES = {16: [1.0, 2.0, 1.5, 0.5], 4: [1.1, 2.1, 1.4, 0.7], 64: [3.0, 3.0, 3.0, 3.0]}
PEAKS = {16: 9.3, 4: 9.0, 64: 10.0}
TPS = {16: 1000.0, 4: 1010.0, 64: 950.0}
PARAMS = {4: 1_000_000, 16: 4_000_000, 64: 16_000_000}


def record(r: int, *, seed: int = 0, score: float | None = None, loss: float | None = None,
           tasks: list[str] | None = None) -> dict:  # fmt: skip
    """A successful CUDA record of setting lora.r=r; score and loss default to the items'."""
    items = ITEMS[r]
    score = sum(items) / len(items) if score is None else score
    n = len(items)
    stderr = (score * (1 - score) * n / (n - 1) / n) ** 0.5  # lm-eval's sample stderr
    total = sum(t * v for t, v in zip(TOKENS, LOSSES[r], strict=True)) / sum(TOKENS)
    return {
        "schema_version": 1, "trial_id": f"r{r}-s{seed}", "status": "success", "error": None,
        "config": {"lora": {"r": r}, "train": {"seed": seed, "batch_size": 4},
                   "eval": {"tasks": tasks or ["qh_embedded"]},
                   "data": {"name": "embedded", "max_seq_len": 128}},
        "overrides": [f"lora.r={r}", f"train.seed={seed}"]
        + ([f"eval.tasks=[{','.join(tasks)}]"] if tasks else []),
        "device": {"type": "cuda", "name": "fixture GPU"},
        "lm_eval": {"qh_embedded": {"exact_match": {
            "after": score, "before": 0.0, "stderr_after": stderr, "higher_is_better": True}}},
        "score": score, "score_stderr": stderr,
        "loss": {"eval": total if loss is None else loss, "eval_stderr": 0.05},
        "peak_vram_reserved_gib": PEAKS[r],
        "throughput": {"loss_tokens_per_s": TPS[r], "step_time_median_s": 0.4,
                       "step_time_iqr_s": 0.02},
        "params": {"trainable": PARAMS[r], "total": 135_000_000},
    }  # fmt: skip


def write_trial(root: Path, name: str, rec: dict, *, items: bool = True) -> Path:
    """One trial dir: record.json and (with ``items``) its per-item files."""
    out = root / name
    out.mkdir(parents=True)
    (out / "record.json").write_text(json.dumps(rec))
    if items:
        r = rec["config"]["lora"]["r"]
        rows = [{"phase": "after", "task": "qh_embedded", "doc_id": i, "exact_match": float(v)}
                for i, v in enumerate(ITEMS[r])]  # fmt: skip
        rows.append({"phase": "before", "task": "qh_embedded", "doc_id": 0, "exact_match": 0.0})
        (out / "eval_items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        held = [{"index": i, "loss": v, "tokens": t}
                for i, (v, t) in enumerate(zip(LOSSES[r], TOKENS, strict=True))]  # fmt: skip
        (out / "heldout_items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in held))
    return out


def write_sweep(root: Path, *, tasks: list[str] | None = None) -> Path:
    """The three-setting sweep (one seed each) under ``root``."""
    for i, r in enumerate((16, 4, 64)):
        write_trial(root, str(i), record(r, tasks=tasks))
    return root
