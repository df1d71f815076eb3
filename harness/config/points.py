"""Every point of a command checked before anything trains, each error in one line.

`python -m harness -m lora.r=8,0` stops before point 0 trains: the grid is expanded exactly as
Hydra's BasicSweeper expands it, and each point is composed and validated with the real schema.
Hydra's own rejections (an unknown option, an unknown key, a value of the wrong type) become the
same one line as the schema's: `error: <field>=<value>: <what is allowed>`.
"""

import dataclasses
import re

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

from harness.config.schema import to_trial_config
from harness.errors import ConfigError

MULTIRUN_FLAGS = ("-m", "--multirun")
TYPE_WORDS = {"integer": "an integer", "float": "a number"}


def command_points(args: list[str]) -> list[list[str]] | None:
    """The override list of every job `python -m harness ARGS` would run; None where ARGS carry a
    flag other than -m (--help, --cfg job, ...): Hydra answers those itself."""
    flags = [a for a in args if a.startswith("-")]
    if any(f not in MULTIRUN_FLAGS for f in flags):
        return None
    overrides = [a for a in args if not a.startswith("-")]
    if not flags:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return BasicSweeper.split_arguments(parsed, None)[0]


def check_points(conf_dir: str, points: list[list[str]]) -> str | None:
    """Compose and validate every point; None if all pass, else the one line that says why not.

    A grid of 100 points costs about a second: one Hydra init, one compose per point.
    """
    swept = _swept_keys(points)
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        for i, point in enumerate(points):
            line = _point_error(point)
            if line is None:
                continue
            if len(points) == 1:
                return line
            at = " ".join(o for o in point if o.split("=", 1)[0] in swept)
            return f"grid point {i} of {len(points)} ({at}): {line}"
    return None


def _point_error(point: list[str]) -> str | None:
    try:
        dcfg: DictConfig = compose("config", overrides=point, return_hydra_config=True)
        with open_dict(dcfg):
            del dcfg["hydra"]
        to_trial_config(dcfg)
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        return error_line(e, point)
    except TypeError as e:  # `+lora.foo=1` passes compose; the dataclass refuses the key
        name = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if not name:
            raise
        keys = [o.partition("=")[0].lstrip("+~") for o in point]
        key = next((k for k in keys if k.endswith(f".{name.group(1)}")), name.group(1))
        return f"{key}={_value_of(key, point)}: no such key"
    return None


def error_line(e: Exception, overrides: list[str]) -> str:
    """`<field>=<value>: <what is allowed>` for a schema or Hydra config error."""
    if isinstance(e, ConfigError):
        return str(e)
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options:
        group, _, value = e.missing_cfg_file.rpartition("/")
        return f"{group}={value}: no such {group} config; available: {', '.join(e.options)}"
    if isinstance(e, OverrideParseException):
        return f"{e.override}: cannot parse ({_first_line(e.message)})"
    cause = e.__cause__ if isinstance(e, ConfigCompositionException) else e
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = str(cause.full_key)
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
