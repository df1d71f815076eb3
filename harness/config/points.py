"""Every point of a command checked before anything trains, each error in one line.

`python -m harness -m lora.r=8,0` stops before point 0 trains: the grid is expanded exactly as
Hydra's BasicSweeper expands it, and each point is composed and validated with the real schema.
Hydra's own rejections (an unknown option, an unknown key, a value of the wrong type) become the
same one line as the schema's: `error: <field>=<value>: <what is allowed>`.
"""

import dataclasses
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig, open_dict
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from harness.config.schema import TRIAL_GROUPS, to_trial_config
from harness.config.suggest import ROOT_KEYS, closest_option, did_you_mean
from harness.errors import ConfigError

MULTIRUN_FLAGS = ("-m", "--multirun")
# Hydra flags that take a value (`--cfg job`, `-p lora`); `--info` takes one optionally
VALUE_FLAGS = ("--cfg", "-c", "--package", "-p")
INFO_VALUES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
# flags after which the command composes no config of ours, or another config: Hydra answers
OWN_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                    "--hydra-help", "--version", "--shell-completion", "-sc", "--help", "-h",
                    "--experimental-rerun")  # fmt: skip
TYPE_WORDS = {"integer": "an integer", "float": "a number"}
NO_EXPERIMENT = "no such pinned experiment in <output root>/experiment/ or conf/experiment/"


def command_points(args: list[str]) -> list[list[str]] | None:
    """The override list of every job `python -m harness ARGS` would compose, `--cfg job` and
    `--info` included; None where ARGS name another config or a flag that composes none."""
    overrides, multirun, i = [], False, 0
    while i < len(args):
        a = args[i]
        if a.split("=", 1)[0] in OWN_CONFIG_FLAGS:
            return None
        if a in MULTIRUN_FLAGS:
            multirun = True
        elif a in VALUE_FLAGS:
            i += 1
        elif a in ("--info", "-i"):
            i += 1 if i + 1 < len(args) and args[i + 1] in INFO_VALUES else 0
        elif not a.startswith("-"):
            overrides.append(a)
        i += 1
    if not multirun:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return BasicSweeper.split_arguments(parsed, None)[0]


def check_points(conf_dir: str, points: list[list[str]]) -> str | None:
    """Compose and validate every point; None if all pass, else the one line that says why not.

    A grid of 100 points costs about a second: one Hydra init, one compose per point.
    """
    from harness.config.describe import group_options

    swept = _swept_keys(points)
    pinned = group_options(Path(conf_dir), "experiment")
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        for i, point in enumerate(points):
            line = _pinned_error(point, pinned) or _point_error(point)
            if line is None:
                continue
            if len(points) == 1:
                return line
            at = " ".join(o for o in point if o.split("=", 1)[0] in swept)
            return f"grid point {i} of {len(points)} ({at}): {line}"
    return None


def _pinned_error(point: list[str], pinned: list[str]) -> str | None:
    """An unknown `experiment=<name>`: the group is optional, so Hydra would run the defaults."""
    name = _value_of("experiment", point)
    if name in ("?", "null") or name in pinned:
        return None
    return f"experiment={name}: {NO_EXPERIMENT}; pinned: {', '.join(pinned) or 'none yet'}"


def _point_error(point: list[str]) -> str | None:
    try:
        dcfg: DictConfig = compose("config", overrides=point, return_hydra_config=True)
        with open_dict(dcfg):
            del dcfg["hydra"]
        unknown = [k for k in dcfg if k not in (*TRIAL_GROUPS, *ROOT_KEYS)]
        if unknown:  # `+trian.lr=1` composes: the schema's root would silently drop it
            key = _override_key(str(unknown[0]), point)
            return f"{key}={_value_of(key, point)}: no such key{did_you_mean(key)}"
        to_trial_config(dcfg)
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        return error_line(e, point)
    except TypeError as e:  # `+lora.foo=1` passes compose; the dataclass refuses the key
        name = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if not name:
            raise
        keys = [o.partition("=")[0].lstrip("+~") for o in point]
        key = next((k for k in keys if k.endswith(f".{name.group(1)}")), name.group(1))
        return f"{key}={_value_of(key, point)}: no such key{did_you_mean(key)}"
    return None


def error_line(e: Exception, overrides: list[str]) -> str:
    """`<field>=<value>: <what is allowed>` for a schema or Hydra config error."""
    if isinstance(e, ConfigError):
        return str(e)
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options:
        group, _, value = e.missing_cfg_file.rpartition("/")
        near = closest_option(value, list(e.options))
        hint = f"did you mean {group}={near}? " if near else ""
        return f"{group}={value}: no such {group} config; {hint}available: {', '.join(e.options)}"
    if isinstance(e, OverrideParseException):
        return f"{e.override}: cannot parse ({_first_line(e.message)})"
    cause = e.__cause__ if isinstance(e, ConfigCompositionException) else e
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = str(cause.full_key)
        if isinstance(cause, ConfigAttributeError | ConfigKeyError):
            key = _override_key(key, overrides)  # `trian.lr=1` fails at `trian`: name it whole
            why = _allowed(cause).replace("no such key", f"no such key{did_you_mean(key)}", 1)
            return f"{key}={_value_of(key, overrides)}: {why}"
        return f"{key}={_value_of(key, overrides)}: {_allowed(cause)}"
    return _first_line(str(e))


def _allowed(e: OmegaConfBaseException) -> str:
    if isinstance(e, ConfigAttributeError | ConfigKeyError):
        kind = getattr(e, "object_type", None)
        if dataclasses.is_dataclass(kind):
            keys = ", ".join(f.name for f in dataclasses.fields(kind))
            parent = str(getattr(e, "full_key", "")).rpartition(".")[0] or "the top level"
            return f"no such key; keys under {parent}: {keys}"
        return "no such key"
    if isinstance(e, MissingMandatoryValue):
        return "must be set (it has no default)"
    msg = _first_line(str(e))
    if isinstance(e, ValidationError):
        if "not a valid bool" in msg:
            return "must be true or false"
        typed = re.search(r"could not be converted to (\w+)", msg)
        if typed:
            kind = typed.group(1).lower()
            return f"must be {TYPE_WORDS.get(kind, kind)}"
    return msg


def _override_key(key: str, overrides: list[str]) -> str:
    """The key as the command line spelt it: `trian.lr` where the config names only `trian`."""
    for o in overrides:
        k = o.partition("=")[0].lstrip("+~")
        if k == key or k.startswith(f"{key}."):
            return k
    return key


def _value_of(key: str, overrides: list[str]) -> str:
    for o in overrides:
        k, sep, v = o.partition("=")
        if sep and k.lstrip("+~") == key:
            return v
    return "?"


def _swept_keys(points: list[list[str]]) -> set[str]:
    seen: dict[str, set[str]] = {}
    for point in points:
        for o in point:
            k, _, v = o.partition("=")
            seen.setdefault(k, set()).add(v)
    return {k for k, vals in seen.items() if len(vals) > 1}


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
