"""What the memory-model tests expect, counted straight from the committed record files.

Records are append-only and land every week, so the tests derive their counts here instead of
pinning them. The rule is written out against the raw JSON, apart from ``harness.memory.records``,
so a reading error there still fails a test:

    a CUDA record    ``device.type`` is cuda (records without a device block ran on CUDA)
    scored           a CUDA record with ``status: success``, a peak reserved figure and a model
                     shape, except an Unsloth trial (``levers.backend: unsloth``) and an offload
                     trial whose levers predate the harness's own offload (no
                     ``embeddings_on_cpu``: TRL's activation offloading)
    calibrating      scored and run without ``engine.memory_cap_gib``
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE_KEYS = ("hidden_size", "num_layers", "intermediate_size", "vocab_size", "num_heads")


def record_files() -> list[Path]:
    """Every committed record: benchmark runs and the first GPU verification of the trial."""
    bench = sorted((ROOT / "benchmarks" / "records").rglob("record.json"))
    return bench + sorted((ROOT / "reports" / "device" / "records").glob("*.json"))


def cuda_records() -> list[dict]:
    """The committed records that ran on CUDA, each with its path as ``_path``."""
    out = []
    for path in record_files():
        rec = json.loads(path.read_text())
        if (rec.get("device") or {}).get("type", "cuda") == "cuda":
            out.append({**rec, "_path": str(path.relative_to(ROOT))})
    return out


def is_scored(rec: dict) -> bool:
    """Whether the memory model scores this record (the module docstring's rule)."""
    model, levers = rec.get("model") or {}, rec.get("levers") or {}
    config = rec.get("config") or {}
    engine = (config.get("train") or {}) | (config.get("engine") or {})
    trl_offload = engine.get("checkpointing") == "offload" and bool(levers)
    trl_offload = trl_offload and "embeddings_on_cpu" not in levers
    return (
        rec.get("status") == "success"
        and rec.get("peak_vram_reserved_gib") is not None
        and all(model.get(k) is not None for k in SHAPE_KEYS)
        and levers.get("backend") != "unsloth"
        and not trl_offload
    )


def is_capped(rec: dict) -> bool:
    config = rec.get("config") or {}
    engine = (config.get("train") or {}) | (config.get("engine") or {})
    return engine.get("memory_cap_gib") is not None


def scored_count() -> int:
    """Records the leave-one-out table holds."""
    return sum(is_scored(r) for r in cuda_records())


def calibrating_count() -> int:
    """Records the fit rests on (scored, uncapped)."""
    return sum(is_scored(r) and not is_capped(r) for r in cuda_records())
