"""The valid key nearest a misspelt one, for the one-line error: `lora.rank` -> `lora.r`."""

import dataclasses
import difflib

from harness.config.schema import TrialConfig

ROOT_KEYS = ("sweep", "out_dir")  # top-level keys that are not trial groups (schema._HydraRoot)


def valid_keys() -> list[str]:
    """Every dotted key a command line may set: `group.field` of each trial group, and the
    top-level keys."""
    keys = []
    for group in dataclasses.fields(TrialConfig):
        keys += [f"{group.name}.{f.name}" for f in dataclasses.fields(group.type)]
    return [*keys, *ROOT_KEYS]


def closest_key(key: str) -> str | None:
    """The valid key a misspelt `key` most likely meant, or None when nothing is near.

    In order: the same field under another group (`lora.lr` -> `train.lr`); a field of the same
    group that the name starts with, or that starts with the name (`lora.rank` -> `lora.r`,
    `train.max_step` -> `train.max_steps`); then the nearest spelling (`trian.lr` -> `train.lr`).
    """
    keys = valid_keys()
    if key in keys:
        return None
    group, _, leaf = key.rpartition(".")
    groups = {k.rpartition(".")[0] for k in keys if "." in k}
    if group and group not in groups:  # a misspelt group: find it, then the field under it
        near = difflib.get_close_matches(group, sorted(groups), n=1, cutoff=0.6)
        if not near:
            return None
        fixed = f"{near[0]}.{leaf}"
        return fixed if fixed in keys else closest_key(fixed) or None
    leaves = {k.rpartition(".")[2]: k for k in keys}
    elsewhere = [k for k in keys if k.rpartition(".")[2] == leaf]
    if elsewhere:
        return elsewhere[0]
    siblings = [k for k in keys if k.rpartition(".")[0] == group]
    prefixed = [k for k in siblings if _prefix_related(leaf, k.rpartition(".")[2])]
    if prefixed:
        return _nearest(key, prefixed)
    by_leaf = {k.rpartition(".")[2]: k for k in siblings}
    near = difflib.get_close_matches(leaf, sorted(by_leaf), n=1, cutoff=0.6)
    if near:
        return by_leaf[near[0]]
    near = difflib.get_close_matches(leaf, sorted(leaves), n=1, cutoff=0.8)
    return leaves[near[0]] if near else None


def closest_option(value: str, options: list[str]) -> str | None:
    """The config option nearest a misspelt one (`optim=adamw_8bt` -> `adamw_8bit`)."""
    near = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    return near[0] if near else None


def did_you_mean(key: str) -> str:
    """` (did you mean lora.r?)` or nothing."""
    near = closest_key(key)
    return f" (did you mean {near}?)" if near else ""


def _prefix_related(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


def _nearest(key: str, candidates: list[str]) -> str:
    return max(candidates, key=lambda c: difflib.SequenceMatcher(None, key, c).ratio())
