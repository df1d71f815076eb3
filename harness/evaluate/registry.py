"""The lm-eval tasks a trial scores: ship them, write them out for a data dir, check them early.

The task YAMLs in ``harness/tasks/`` point at data through two placeholders, ``__DATA_DIR__``
(``eval.data_dir``) and ``__EMBEDDED_DIR__`` (where the harness writes the embedded model's
held-out set). ``materialize_tasks`` writes a copy with real paths that both ``TaskManager`` and
lm-eval's command line read (``--include_path``), so the two score the very same YAML. The
user's own tasks (``eval.include_path``, harness/evaluate/user_tasks.py) are written beside them.
"""

import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError
from harness.evaluate import user_tasks
from harness.evaluate.tasks import utils as task_utils

TASKS_DIR = Path(__file__).parent / "tasks"
DATA_DIR_TOKEN = "__DATA_DIR__"
EMBEDDED_DIR_TOKEN = "__EMBEDDED_DIR__"
TASK_PREFIX = "qh_"
MC_FIELDS = {"query": str, "choices": list, "gold": int}

# Row checks per task: called with the YAML's resolved dataset_kwargs, they parse every file the
# task reads and raise ValueError("<file>:<line>: <reason>") on the first bad row.
_CHECKS: dict[str, Callable[[dict[str, Any]], object]] = {
    "qh_arc_easy": lambda kw: _check_json(kw, MC_FIELDS),
    "qh_arc_challenge": lambda kw: _check_json(kw, MC_FIELDS),
    "qh_hellaswag": lambda kw: task_utils.read_hellaswag(kw["data_file"]),
    "qh_piqa": lambda kw: task_utils.read_piqa(kw["data_file"], kw["labels_file"]),
    "qh_winogrande": lambda kw: _check_json(
        kw, {"context_options": list, "continuation": str, "gold": int}
    ),
    "qh_lambada": lambda kw: _check_json(kw, {"context": str, "continuation": str}),
    "qh_wikitext2": lambda kw: task_utils.read_wikitext(kw["data_file"]),
    "qh_gsm8k": lambda kw: _check_json(kw, {"question": str, "answer": str}),
    "qh_embedded": lambda kw: _check_json(kw, {"text": str, "answer": str}),
}


def harness_tasks() -> list[str]:
    """Names of the tasks shipped in ``harness/tasks/``, sorted."""
    return sorted(path.stem for path in TASKS_DIR.glob(f"{TASK_PREFIX}*.yaml"))


def tasks_fingerprint() -> str:
    """sha1 over the shipped YAMLs and utils.py: part of every cache key for scores."""
    digest = hashlib.sha1()
    for path in sorted(TASKS_DIR.glob("*.yaml")) + [TASKS_DIR / "utils.py"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def materialize_tasks(
    out_dir: Path, *, data_dir: Path, embedded_dir: Path | None, include_path: Path | None = None
) -> Path:
    """Write the task YAMLs (placeholders replaced) and utils.py into ``out_dir``.

    Args:
        out_dir: Folder to write; created if needed, files in it are overwritten.
        data_dir: The offline datasets (``eval.data_dir``).
        embedded_dir: Folder holding ``heldout.jsonl`` for ``qh_embedded``; None leaves that
            task out, since it has nothing to read.
        include_path: The user's task folder (``eval.include_path``), copied into ``user/``.

    Returns:
        The include path for ``TaskManager(include_path=...)`` and ``lm_eval --include_path``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(TASKS_DIR.glob(f"{TASK_PREFIX}*.yaml")):
        text = path.read_text()
        if EMBEDDED_DIR_TOKEN in text and embedded_dir is None:
            (out_dir / path.name).unlink(missing_ok=True)
            continue
        text = text.replace(DATA_DIR_TOKEN, _yaml_quoted(data_dir))
        if embedded_dir is not None:
            text = text.replace(EMBEDDED_DIR_TOKEN, _yaml_quoted(embedded_dir))
        (out_dir / path.name).write_text(text)
    (out_dir / "utils.py").write_bytes((TASKS_DIR / "utils.py").read_bytes())
    if include_path is not None:
        user_tasks.copy_user_tasks(Path(include_path), out_dir, data_dir=data_dir)
    return out_dir


def check_tasks(
    tasks: list[str], *, data_dir: Path, embedded_dir: Path | None, include_path: Path | None = None
) -> None:
    """Pre-flight, before any model is loaded: every task is known and its data reads cleanly.

    Reads every row of every file the harness's tasks need (~0.3 s for all of them). A name
    without the ``qh_`` prefix is looked up among lm-eval's own tasks (~10 s, once per process);
    their data comes from the hub at evaluation time and cannot be checked here.

    Args:
        tasks: Task names (``eval.tasks``).
        data_dir: The offline datasets (``eval.data_dir``).
        embedded_dir: Folder holding ``heldout.jsonl``; None when the harness writes it only
            later in the trial, which skips the check of ``qh_embedded``'s rows.
        include_path: The user's task folder: its tasks are checked by ``user_tasks``.

    Raises:
        ConfigError: ``eval.tasks`` for an unknown name; ``eval.data_dir`` naming the task and
            file for a missing file or a bad row (``eval.tasks`` for ``qh_embedded``'s file).
    """
    if not tasks:
        raise ConfigError("eval.tasks", tasks, "at least one task")
    theirs = check_task_names(tasks, include_path)
    for name in set(tasks) & set(harness_tasks()):
        _check_data(name, data_dir=data_dir, embedded_dir=embedded_dir)
    if theirs:
        user_tasks.check_user_tasks(theirs, include_path, data_dir=data_dir)


def check_task_names(tasks: list[str], include_path: Path | None = None) -> list[str]:
    """Every name is a shipped task, one of the user's folder or one of lm-eval's (no data
    read); else ConfigError. Returns the names the user's folder defines."""
    ours = set(harness_tasks())
    users = set(user_tasks.user_task_names(include_path)) if include_path else set()
    clash = sorted(ours & users)
    if clash:
        raise ConfigError("eval.include_path", str(include_path),
                          f"defines {clash[0]}, a shipped task's name; rename it")  # fmt: skip
    for name in tasks:
        if name in ours or name in users:
            continue
        if name.startswith(TASK_PREFIX) or name not in _lm_eval_task_names():
            mine = f", {', '.join(sorted(users))} (eval.include_path)" if users else ""
            raise ConfigError(
                "eval.tasks",
                name,
                f"known: {', '.join(sorted(ours))}{mine}, or a task name of lm-eval's own",
            )
    return [name for name in tasks if name in users]


def _check_data(name: str, *, data_dir: Path, embedded_dir: Path | None) -> None:
    text = (TASKS_DIR / f"{name}.yaml").read_text()
    if EMBEDDED_DIR_TOKEN in text:
        if embedded_dir is None:
            return  # written by the harness after pre-flight, from already-checked train data
        field, value, root = "eval.tasks", name, embedded_dir
    else:
        field, value, root = "eval.data_dir", str(data_dir), data_dir
    text = text.replace(DATA_DIR_TOKEN, _yaml_quoted(data_dir))
    text = text.replace(EMBEDDED_DIR_TOKEN, _yaml_quoted(root))
    kwargs = yaml.load(text, Loader=_NoFunctionLoader)["dataset_kwargs"]
    for path in _data_files(kwargs):
        if not Path(path).is_file():
            raise ConfigError(field, value, f"task {name}: data file {path} is missing")
    try:
        _CHECKS[name](kwargs)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(field, value, f"task {name}: bad data: {e}") from None


def _data_files(kwargs: dict[str, Any]) -> list[str]:
    """Every file a task's dataset_kwargs names: ``data_files`` values and ``*_file`` keys."""
    files = kwargs.get("data_files", {})
    paths = list(files.values()) if isinstance(files, dict) else [files]
    return paths + [v for k, v in kwargs.items() if k.endswith("_file")]


def _check_json(kwargs: dict[str, Any], fields: dict[str, type]) -> None:
    for path in _data_files(kwargs):
        task_utils.read_jsonl(path, fields)


@functools.cache
def _lm_eval_task_names() -> frozenset[str]:
    """Every task, group and tag name lm-eval ships: indexing its ~15k YAMLs takes ~10 s."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)


def _yaml_quoted(path: Path) -> str:
    """A path for the inside of a double-quoted YAML string (JSON escapes are valid there)."""
    return json.dumps(str(Path(path).resolve()))[1:-1]


class _NoFunctionLoader(yaml.SafeLoader):
    """Reads a task YAML without importing its ``!function`` code: the check needs only data."""


_NoFunctionLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
