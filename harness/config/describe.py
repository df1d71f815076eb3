"""`python -m harness --help`: the groups and keys, read from the schema, not written twice.

Each key's line is built from what the code already holds: its default from the composed default
config (what a bare `python -m harness` runs), what is allowed from the key's own check in
`__post_init__` (the message a bad value would get), and its meaning from the comment beside (or
above) the field in the dataclass.
"""

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
from pathlib import Path

from harness.config.schema import TRIAL_GROUPS, TrialConfig
from harness.errors import ConfigError
from harness.paths import experiments_dir

WIDTH = 100
USAGE = """\
usage: python -m harness [group=option ...] [group.key=value ...]

  python -m harness                        one QLoRA trial of the embedded SmolLM2-135M
  python -m harness lora.r=8 quant=fp4     the same with other settings
  python -m harness -m lora.r=4,16,64      a grid: one trial per point, summary + report at the end
  python -m harness experiment=<name>      rerun a setting pinned by `python -m harness.pick`
  python -m harness --help <group>         every key of one group, in full
  python -m harness --cfg job [overrides]  print the composed config; --hydra-help: Hydra's flags

Records, sweeps, studies, reports and pinned experiments go under the output root:
$HARNESS_OUTPUT_ROOT, default ./outputs. Studies: python -m harness.study --help."""
# values the checks refuse, by the type of the default (a bool has no check)
PROBES = {str: "?", int: -1, float: -1.0}
TYPE_WORDS = {str: "text", int: "an integer", float: "a number"}


def group_options(conf_dir: Path, group: str) -> list[str]:
    """The options of a config group: conf/<group>/*.yaml (and pinned experiments)."""
    dirs = [conf_dir / group] + ([experiments_dir()] if group == "experiment" else [])
    return sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})


def field_notes(cls: type) -> dict[str, str]:
    """{field: its comment}: the comment on the field's line, else the comment lines above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type == tokenize.COMMENT]  # fmt: skip
    inline = {t.start[0]: _text(t) for t in tokens if not t.line.lstrip().startswith("#")}
    alone = {t.start[0]: _text(t) for t in tokens if t.line.lstrip().startswith("#")}
    notes = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        line, above = node.lineno, []
        while line - 1 - len(above) in alone:
            above.insert(0, alone[line - 1 - len(above)])
        notes[node.target.id] = inline.get(line) or " ".join(above)
    return notes


def _text(token: tokenize.TokenInfo) -> str:
    return token.string.lstrip("#").strip()


def allowed(cls: type, group: str, name: str, default: object, kind: object = None) -> str:
    """What the key's own check allows: the words of the error a bad value gets, else its type."""
    if isinstance(default, bool):
        return "true | false"
    if isinstance(default, list):
        return "a list"
    if default is None:  # `int | None = None`: the type is in the annotation
        kinds = [k for k in TYPE_WORDS if k in getattr(kind, "__args__", ())]
        words = _checked(cls, group, name, -1) or (TYPE_WORDS[kinds[0]] if kinds else "a value")
        return words if "null" in words else f"{words} or null"
    words = _checked(cls, group, name, PROBES.get(type(default)))
    return words or TYPE_WORDS.get(type(default), "a value")


def _checked(cls: type, group: str, name: str, probe: object) -> str | None:
    """The words of the error the key's check gives `probe`; None where nothing refuses it."""
    if probe is not None:
        try:
            cls(**{name: probe})
        except ConfigError as e:
            if e.field == f"{group}.{name}":
                text = e.allowed.removeprefix("must be ").removeprefix("allowed: ")
                return text.replace(", ", " | ") if e.allowed.startswith("allowed:") else text
        except (TypeError, ValueError):
            pass
    return None


def key_rows(defaults: dict, group: str) -> list[tuple[str, str, str, str]]:
    """(key, default, allowed, meaning) of every key of one trial group."""
    cls = {f.name: f.type for f in dataclasses.fields(TrialConfig)}[group]
    notes = field_notes(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = (defaults.get(group) or {}).get(f.name)
        allow = allowed(cls, group, f.name, default, f.type)
        rows.append(
            (f"{group}.{f.name}", _value(default), allow, _meaning(notes.get(f.name), allow))
        )
    return rows


def render(conf_dir: Path, defaults: dict, choices: dict, group: str | None = None) -> str:
    """The help text: usage, groups and the keys of every group but the engine's (one line
    each); with `group`, that group's keys with their whole meaning."""
    if group is not None:
        return _group_page(conf_dir, defaults, choices, group)
    lines = [USAGE, "", "Groups (group=option; * the default):"]
    for g in (*TRIAL_GROUPS, "experiment"):
        opts = [f"{o}*" if o == choices.get(g) else o for o in group_options(conf_dir, g)]
        lines.append(_fit(f"  {g:<11}{', '.join(opts) or '(none yet)'}"))
    lines += ["", "Keys (group.key=value): default, what is allowed, meaning. Engine levers: "
              "--help engine."]  # fmt: skip
    for g in TRIAL_GROUPS:
        if g == "engine":
            continue
        lines += [_fit(_key_line(*row)) for row in key_rows(defaults, g)]
    return "\n".join(lines)


def _meaning(note: str | None, allow: str) -> str:
    """The comment without the allowed values it repeats (`nf4 | fp4 | none: ...`)."""
    note = note or ""
    words = allow.removesuffix(" or null")
    if " | " in words and note.startswith(words):
        note = note[len(words) :].lstrip(" :|")
    return note


def _group_page(conf_dir: Path, defaults: dict, choices: dict, group: str) -> str:
    opts = ", ".join(group_options(conf_dir, group))
    lines = [f"{group}: options {opts} (default {choices.get(group)})", ""]
    for key, default, allow, note in key_rows(defaults, group):
        lines.append(_key_line(key, default, allow, ""))
        lines += textwrap.wrap(note, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def _key_line(key: str, default: str, allow: str, note: str) -> str:
    text = f"  {key:<26} {default:<14} {allow}"
    return f"{text}. {note}" if note else text


def _value(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def _fit(line: str) -> str:
    """One line each: long meanings are cut (the group page has them whole)."""
    return line if len(line) <= WIDTH else re.sub(r"\s+\S*$", "", line[: WIDTH - 1]) + "…"
