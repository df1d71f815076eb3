"""Trial records as the memory model reads them: shape, setting, measured peak.

The model is calibrated and scored on every committed CUDA record of the repo (``REPO_RECORDS``)
plus the records a command is given. A record counts when it succeeded on a CUDA device with a
train-phase peak and a model shape; a failed or OOM run's peak is not the setting's.
``tests/fixtures/records`` are written by ``tests/fixtures/make_records.py`` (test inputs, not
measurements) and are not among them.
"""

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.config.migrate import effective_engine, migrate_record
from harness.memory.terms import GIB, Setting, Shape, static_bytes
from harness.trial.record import find_records

Point = tuple[Shape, Setting, float, str]  # shape, setting, measured peak reserved GiB, label

ROOT = Path(__file__).resolve().parents[2]
# (folder, glob): benchmark runs, and the first GPU verification of the core trial
REPO_RECORDS = (("benchmarks/records", "**/record.json"), ("reports/device/records", "*.json"))
# A record's train phase starting with more allocated than its setting's resident bytes (counted,
# not fitted) by most of an fp32 embedding table holds that table: the plain trial that ran
# before it in the same process left it, kept alive by bitsandbytes' optimizer manager (gaps of
# llama3-8b 1.94 GiB, qwen2.5-1.5b 0.90, smollm2-135m 0.16 for tables of 1.96, 0.87 and 0.11).
# Records that ran first in their process start within 0.08 GiB of the count.
CARRIED_SHARE = 0.75
# What the reference loop (harness/benchmark/loop.py, ``runner: loop``) runs whatever its record's
# engine block says: frozen weights left in bf16 (no prepare_model_for_kbit_training), every
# layer recomputed, peft's LoRA layers, the loss from HF's model on materialised logits. It is
# the probe's plain row (harness/memory/anchors.py): llama3-8b b1 9.04 GiB allocated in both.
LOOP_ENGINE = {"checkpointing": "full", "frozen_dtype": "bf16"}


def shape_from_record(model: dict[str, Any]) -> Shape | None:
    """Shape from a record's ``model`` block (None if a field is missing)."""
    keys = ("hidden_size", "num_layers", "intermediate_size", "vocab_size", "num_heads")
    if any(model.get(k) is None for k in keys):
        return None
    return Shape(
        **{k: int(model[k]) for k in keys},
        num_kv_heads=int(model.get("num_kv_heads") or model["num_heads"]),
        tie_embeddings=bool(model.get("tie_word_embeddings", False)),
    )


def setting_from_record(rec: dict[str, Any]) -> Setting:
    """Setting of a trial record: its config, and what its levers record it ran.

    ``levers.chunked_loss`` says whether it trained through TRL's chunked LM head; records from
    before the harness detected it ran TRL >= 1.16's trainer, which has it (plain llama3-8b b4:
    16.55 GiB reserved, 16.56 where detected). ``levers.liger_rope`` is absent from records
    written before Liger's RoPE was applied; ``levers.expandable_segments`` gives the allocator.
    """
    lev = rec.get("levers") or {}
    if rec.get("runner") == "loop":
        return setting_from_config({**migrate_record(rec)["config"], "engine": LOOP_ENGINE})
    chunked = lev["chunked_loss"] if "chunked_loss" in lev else _trl_fuses_head(rec)
    config = {**migrate_record(rec)["config"], "engine": effective_engine(rec)}
    if lev.get("backend") == "unsloth":
        config["engine"] = unsloth_engine(config)
    setting = setting_from_config(config, chunked_loss=bool(chunked))
    raw_train = (rec.get("config") or {}).get("train") or {}
    return replace(
        setting,
        liger_rope=not lev or bool(lev.get("liger_rope", 0)),
        expandable_segments=bool(
            lev.get("expandable_segments", raw_train.get("expandable_segments"))
        ),
        carried_gib=carried_gib(rec, setting),
    )


def unsloth_engine(config: dict[str, Any]) -> dict[str, Any]:
    """The harness's engine keys that do what ``engine.backend=unsloth`` does (harness/engine/
    unsloth.py, Unsloth 2026.10.9): frozen weights in bf16 (no fp32 upcast); ``offload`` is its
    own, every layer's input parked in host memory through a GPU staging buffer and every layer
    recomputed; its Triton RMSNorm, RoPE and SwiGLU keep what Liger's keep; its fused LoRA ops
    save each input once, and with dropout > 0 each adapter's 1 B mask (``fused_masks``)."""
    mode = (config.get("engine") or {}).get("checkpointing", "full")
    return {
        "checkpointing": mode,
        "checkpoint_fraction": 1.0 if mode == "offload" else None,
        "frozen_dtype": "bf16",
        "kernels": "liger",
        "lora_kernel": "fused",
        "fused_masks": True,
    }


def _trl_fuses_head(rec: dict[str, Any]) -> bool:
    version = str((rec.get("env") or {}).get("trl") or "0")
    major, _, minor = version.partition(".")
    try:
        return (int(major), int(minor.partition(".")[0] or 0)) >= (1, 16)
    except ValueError:
        return False


def carried_gib(rec: dict[str, Any], setting: Setting) -> float:
    """GiB an earlier trial of the record's process left allocated at its train phase's start."""
    train = ((rec.get("memory") or {}).get("phases") or {}).get("train") or {}
    start, shape = train.get("start_allocated_gib"), shape_from_record(rec.get("model") or {})
    if start is None or shape is None:
        return 0.0
    resident = sum(static_bytes(shape, setting).values())
    if setting.upcast_frozen:  # autocast's bf16 copy of the head is made in the first forward
        resident -= 2.0 * shape.vocab_size * shape.hidden_size
    table = 4.0 * shape.vocab_size * shape.hidden_size / GIB
    return table if float(start) - resident / GIB > CARRIED_SHARE * table else 0.0


def describes(rec: dict[str, Any]) -> bool:
    """Whether the model describes the record's mechanism. Not:

    - an Unsloth trial (``engine.backend=unsloth``): the model predicts the harness's own engines,
      which ``pick`` chooses among, and the reference loop beside them; Unsloth is measured as a
      peer, never picked. Read as what it runs (``unsloth_engine``), its llama3-8b b4 records
      land within 1%, but qwen2.5-1.5b b4 allocates 2.44 GiB where 2.07 are counted (-12.7%).
    - ``offload`` in a harness trial written before the harness had its own offload (its levers
      lack ``embeddings_on_cpu``), which ran TRL's activation offloading (every saved tensor
      parked through autograd hooks: llama3-8b b4 10.03 GiB reserved for 7.78 allocated, where
      the harness's offload reserved 6.79 for 6.28).
    """
    levers = rec.get("levers") or {}
    if levers.get("backend") == "unsloth":
        return False
    engine = ((rec.get("config") or {}).get("train") or {}) | (
        (rec.get("config") or {}).get("engine") or {}
    )
    trl_offload = bool(levers) and "embeddings_on_cpu" not in levers
    return not (engine.get("checkpointing") == "offload" and trl_offload)


def setting_from_config(cfg: dict[str, Any], *, chunked_loss: bool = False) -> Setting:
    """Setting from a record's resolved ``config`` (nested by group); missing keys keep defaults.

    4-bit records get ``upcast_frozen``: that is what the harness's loading path does.
    """
    q, lo = cfg.get("quant", {}), cfg.get("lora", {})
    o, d, t = cfg.get("optim", {}), cfg.get("data", {}), cfg.get("train", {})
    e = cfg.get("engine", {})
    targets = lo.get("targets", "all-linear")
    base = Setting()
    return replace(
        base,
        quant=q.get("type", base.quant),
        double_quant=bool(q.get("double_quant", base.double_quant)),
        r=int(lo.get("r", base.r)),
        targets=targets if isinstance(targets, str) else tuple(targets),
        variant=lo.get("variant", base.variant),
        lora_dtype=lo.get("dtype", base.lora_dtype),
        dropout=float(lo.get("dropout", base.dropout)),
        batch_size=int(t.get("batch_size", base.batch_size)),
        seq_len=int(d.get("max_seq_len", base.seq_len)),
        checkpointing=e.get("checkpointing", base.checkpointing),
        optimizer=o.get("name", base.optimizer),
        kernels=e.get("kernels", base.kernels),
        # harness/trial/model.py runs prepare_model_for_kbit_training on every 4-bit model;
        # engine.frozen_dtype=bf16 casts its fp32 copies back.
        upcast_frozen=q.get("type", base.quant) in ("nf4", "fp4")
        and e.get("frozen_dtype", "fp32") == "fp32",
        residual_fp32=e.get("residual_dtype", "auto") == "fp32",
        projections_fp32=e.get("projection_dtype", "auto") == "fp32",
        lora_kernel=e.get("lora_kernel", base.lora_kernel),
        fused_masks=bool(e.get("fused_masks", base.fused_masks)),
        checkpoint_fraction=_fraction(e.get("checkpoint_fraction", base.checkpoint_fraction)),
        slim_activations=bool(e.get("slim_activations", base.slim_activations)),
        kept_layers=str(e.get("kept_layers", base.kept_layers)),
        host_layers=int(e.get("host_layers", base.host_layers) or 0),
        embeddings_on_cpu=bool(e.get("embeddings_on_cpu", base.embeddings_on_cpu)),
        head_on_cpu=bool(e.get("head_on_cpu", base.head_on_cpu)),
        chunked_loss=chunked_loss,
        memory_cap_gib=_fraction(e.get("memory_cap_gib")),
        causal_padding=bool(e.get("causal_padding", False)),
        cuda_graphs=bool(e.get("cuda_graphs", False)),
    )


def measured_points(records: list[dict[str, Any]]) -> list[Point]:
    """(shape, setting, measured peak reserved GiB, label) of each successful CUDA record whose
    mechanism the model describes (``describes``)."""
    points = []
    for rec in records:
        peak = rec.get("peak_vram_reserved_gib")
        shape = shape_from_record(rec.get("model") or {})
        cuda = (rec.get("device") or {}).get("type", "cuda") == "cuda"
        if rec.get("status") != "success" or peak is None or shape is None or not cuda:
            continue
        if not describes(rec):
            continue
        label = rec.get("_label") or rec.get("trial_id", "?")
        points.append((shape, setting_from_record(rec), float(peak), label))
    return points


_REPO: list[dict[str, Any]] = []


def repo_records() -> list[dict[str, Any]]:
    """The repo's committed records (``REPO_RECORDS``), labelled by path; cached, [] if absent."""
    if not _REPO:
        for folder, pattern in REPO_RECORDS:
            root = ROOT / folder
            paths = find_records(root) if pattern == "**/record.json" else root.glob(pattern)
            for path in sorted(paths):
                rec = json.loads(path.read_text())
                rec["_label"] = str(path.relative_to(ROOT)).removesuffix("/record.json")
                _REPO.append(rec)
    return _REPO


def _fraction(value) -> float | None:
    return None if value is None else float(value)
