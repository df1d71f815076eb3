"""Turn a picked trial back into settings: Hydra overrides, and a pinned experiment config.

python -m harness experiment=<name>     # reruns <output root>/experiment/<name>.yaml by name
"""

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from harness.analysis.frame import flatten, set_path
from harness.config.migrate import (
    effective_engine,
    migrate_override,
    migrate_overrides,
    migrate_record,
)
from harness.paths import experiments_dir

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"
# Groups Hydra reports in runtime.choices that are not trial settings.
NOT_PINNED = ("experiment", "hparams_search", "trial_schema")
GROUP_ORDER = ("model", "quant", "lora", "optim", "data", "train", "eval", "engine")
_PLAIN = re.compile(r"^[A-Za-z0-9_./:+-]+$")


def override_value(val: Any) -> str:
    """A value in Hydra override syntax: true/false, null, [a,b], quoted when needed."""
    if isinstance(val, bool):
        return "true" if val else "false"
    if val is None:
        return "null"
    if isinstance(val, list | tuple):
        return "[" + ",".join(override_value(v) for v in val) + "]"
    text = str(val)
    return text if _PLAIN.match(text) else "'" + text.replace("'", "\\'") + "'"


def hydra_overrides(
    rec: dict[str, Any], grid_keys: list[str], changes: dict[str, Any] | None = None
) -> list[str]:
    """Overrides that reproduce a trial: group choices, then its dotted overrides and grid keys.

    Args:
        rec: the trial record.
        grid_keys: the sweep's varying keys; each dotted one is spelt out even when the sweep set
            it through a sweep file rather than a command-line override.
        changes: dotted keys to change (a predicted variant, e.g. {"train.batch_size": 1}).
    """
    choices = _choices(rec)
    flat = flatten(migrate_record(rec)["config"])
    out: dict[str, str] = dict(choices)
    grid_keys = [migrate_override(k) or k for k in grid_keys]
    changes = {migrate_override(k) or k: v for k, v in (changes or {}).items()}
    for item in migrate_overrides(rec.get("overrides") or []):
        key, _, val = item.partition("=")
        key = key.lstrip("+~")
        if "." in key:
            out[key] = override_value(flat[key]) if key in flat else val
    for key in grid_keys:
        if "." in key and key in flat:
            out[key] = override_value(flat[key])
    for key, val in (changes or {}).items():
        out[key] = override_value(val)
    return [f"{k}={v}" for k, v in out.items()]


def experiment_yaml(
    rec: dict[str, Any], *, name: str, command: str, changes: dict[str, Any] | None = None,
    note: str = "",
) -> str:  # fmt: skip
    """The pinned config: group overrides, then every resolved value so it pins everything.

    Args:
        rec: the trial record (its ``choices`` and resolved ``config``).
        name: experiment name (file stem).
        command: the pick command line, for the header.
        changes: dotted keys changed from the record (predicted variants).
        note: one header line on what was measured or predicted.
    """
    config = copy.deepcopy(migrate_record(rec)["config"])
    # as the trial ran: its recompute fraction, and levers newer than the record at their old value
    config["engine"] = effective_engine(rec)
    for key, val in (changes or {}).items():
        set_path(config, key, val)
    origin = rec.get("_path") or rec.get("trial_id")
    head = [
        "# @package _global_",
        f"# Pinned by `{command}` from {origin}",
        f"# rerun: python -m harness experiment={name}",
    ]
    head += [f"# {line}" for line in note.splitlines() if line]
    if changes:
        head.append(
            "# changed from the record: " + " ".join(f"{k}={v}" for k, v in changes.items())
        )
    body: dict[str, Any] = {}
    defaults = [{f"override /{g}": c} for g, c in _choices(rec).items()]
    if defaults:
        body["defaults"] = defaults
    body.update(config)
    return "\n".join(head) + "\n" + yaml.safe_dump(body, sort_keys=False, width=100)


def write_experiment(text: str, conf_dir: Path, name: str, *, force: bool = False) -> Path:
    """Write ``<conf_dir>/experiment/<name>.yaml``; refuse to replace one unless ``force``.

    The repo's own conf/ is source, not output: a pin for it goes to
    ``<output root>/experiment/``, which Hydra searches too, so ``experiment=<name>`` reruns it.
    """
    if not re.match(r"^[A-Za-z0-9_.-]+$", name):
        raise ValueError(f"--name={name!r}: letters, digits, '_', '.', '-' only")
    folder = conf_dir / "experiment"
    if Path(conf_dir).resolve() == REPO_CONF:
        folder = experiments_dir()
    path = folder / f"{name}.yaml"
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to replace it or pick another --name")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def default_name(rec: dict[str, Any]) -> str:
    """A file-safe experiment name from the trial's label, e.g. ``pick-nf4-dq-r16-lora-b4``."""
    label = rec.get("_label") or str(rec.get("trial_id", "trial"))[:8]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-").lower()
    return f"pick-{slug}"[:80]


def _choices(rec: dict[str, Any]) -> dict[str, str]:
    """Trial group choices in the root config's order (model, quant, lora, ...)."""
    picked = {
        g: str(c)
        for g, c in (rec.get("choices") or {}).items()
        if c not in (None, "null") and g not in NOT_PINNED and not g.startswith("hydra")
    }
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    return dict(sorted(picked.items(), key=lambda kv: order.get(kv[0], len(order))))
