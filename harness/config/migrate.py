"""Records and command lines written before the engine had its own group, in today's keys.

The one place old keys are translated. Engine levers lived under `train.` (`train.kernels=liger`);
they are `engine.` keys now. `train.expandable_segments` and `train.compile` are gone: they bought
no speed or memory. Levers added after a record was written take the value that record's code ran
with, so a pinned config reruns it as it ran, not as a newer preset would.
"""

from dataclasses import fields

from harness.config.engine import EngineConfig

ENGINE_KEYS = tuple(f.name for f in fields(EngineConfig) if f.name != "name")
DROPPED = ("expandable_segments", "compile")  # keys that measured no gain and went
# what the code that wrote a record without these keys ran
BEFORE_THE_KEY = {"causal_padding": False, "kept_layers": "spread", "gc_freeze": False,
                  "host_layers": 0, "trim_recompute": False, "cuda_graphs": False}  # fmt: skip


def migrate_override(item: str) -> str | None:
    """One Hydra override in today's keys; None where its key is gone."""
    prefix = item[: len(item) - len(item.lstrip("+~"))]
    key, eq, value = item[len(prefix) :].partition("=")
    if not key.startswith("train."):
        return item
    leaf = key.removeprefix("train.")
    if leaf in DROPPED:
        return None
    return f"{prefix}engine.{leaf}{eq}{value}" if leaf in ENGINE_KEYS else item


def migrate_overrides(items: list[str]) -> list[str]:
    """A command line's overrides in today's keys (dropped keys left out)."""
    return [new for item in items if (new := migrate_override(item)) is not None]


def migrate_config(config: dict, choices: dict | None = None) -> dict:
    """A record's resolved config in today's shape: engine levers out of `train` into `engine`."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in (config or {}).items()}
    train = config.get("train") or {}
    if "engine" in config and not any(k in train for k in ENGINE_KEYS):
        engine = config["engine"] or {}
        config["engine"] = {**{k: v for k, v in BEFORE_THE_KEY.items() if k not in engine},
                            **engine}  # fmt: skip
        return config
    engine = {"name": (choices or {}).get("engine") or "plain", **BEFORE_THE_KEY}
    engine.update({k: train.pop(k) for k in ENGINE_KEYS if k in train})
    for key in DROPPED:
        train.pop(key, None)
    config["train"], config["engine"] = train, {**engine, **(config.get("engine") or {})}
    return config


def migrate_record(rec: dict) -> dict:
    """A copy of a record whose config is in today's shape."""
    return {**rec, "config": migrate_config(rec.get("config") or {}, rec.get("choices"))}


def effective_engine(rec: dict) -> dict:
    """The record's engine config with `checkpoint_fraction` as the trial ran it: the share of
    layers its levers took off the GPU (recomputed, or host layers). Records from before offload
    took a fraction carry the old default 0.5 beside `checkpointing: offload`, which then
    recomputed every layer."""
    engine = dict(migrate_record(rec)["config"]["engine"])
    lev = rec.get("levers") or {}
    n, done = lev.get("num_layers"), lev.get("checkpointed_layers")
    if engine.get("checkpointing") in ("selective", "offload") and n and done is not None:
        engine["checkpoint_fraction"] = (done + (lev.get("host_layers") or 0)) / n
    return engine
