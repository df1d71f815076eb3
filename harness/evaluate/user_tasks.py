"""The user's own lm-eval tasks (``eval.include_path``): a folder of task YAMLs, checked before any
model loads and scored exactly like the shipped ones.

A data path in a user YAML is absolute, or starts with ``__TASK_DIR__`` (the folder itself) or
``__DATA_DIR__`` (``eval.data_dir``). The harness writes a copy of the folder with real paths into
the trial (``lm_eval_tasks/user/``), which lm-eval's own command line reads as well.
"""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.evaluate.tasks import utils as task_utils

USER_SUBDIR = "user"
TASK_DIR_TOKEN = "__TASK_DIR__"
DATA_DIR_TOKEN = "__DATA_DIR__"
FIELD = "eval.include_path"
_COPIED = (".yaml", ".yml", ".py")
# dataset_path values that read local files through `datasets`' packaged loaders
_FILE_LOADERS = ("json", "csv", "parquet", "text", "arrow")


def check_folder(include_path: str | Path) -> Path:
    """The folder, resolved; ConfigError unless it is a folder holding at least one task YAML."""
    path = Path(include_path).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(FIELD, str(include_path), "a folder of lm-eval task YAMLs; not a folder")
    if not any(path.rglob("*.yaml")):
        raise ConfigError(FIELD, str(include_path), "a folder of lm-eval task YAMLs; none found")
    return path


def copy_user_tasks(include_path: Path, out_dir: Path, *, data_dir: Path) -> Path:
    """Copy the folder's YAMLs (placeholders replaced) and Python files into ``out_dir/user``."""
    src = check_folder(include_path)
    dest = out_dir / USER_SUBDIR
    shutil.rmtree(dest, ignore_errors=True)
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.suffix not in _COPIED:
            continue
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".py":
            target.write_bytes(path.read_bytes())
            continue
        text = path.read_text()
        text = text.replace(TASK_DIR_TOKEN, _quoted(src)).replace(DATA_DIR_TOKEN, _quoted(data_dir))
        target.write_text(text)
    return dest


def user_task_names(include_path: str | Path) -> list[str]:
    """Every task, group and tag name the folder defines (lm-eval's own index of it)."""
    from lm_eval.tasks import TaskManager

    src = check_folder(include_path)
    return TaskManager(include_path=str(src), include_defaults=False).all_tasks


def check_user_tasks(names: list[str], include_path: str | Path, *, data_dir: Path) -> None:
    """Pre-flight for the user's tasks, before any model loads: every data file of every task in
    the folder exists and parses (JSON lines row by row), and lm-eval renders every item of the
    tasks in ``names`` (prompt, target, choices; a multiple-choice target within its choices).

    Raises:
        ConfigError: ``eval.include_path``, naming the task and the file, line or item.
    """
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    with tempfile.TemporaryDirectory() as tmp:
        folder = copy_user_tasks(Path(include_path), Path(tmp), data_dir=data_dir)
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        for name, entry in sorted(manager.task_index.items()):
            if entry.yaml_path is not None and entry.kind.name == "TASK":
                cfg = _load(load_yaml, entry.yaml_path, name)
                for path in data_files(cfg):
                    _check_file(name, path, cfg.get("dataset_path"))
        try:
            tasks = manager.load(list(names))["tasks"]
        except Exception as e:  # noqa: BLE001 - lm-eval's own refusal of a task config
            raise ConfigError(FIELD, str(include_path), f"lm-eval cannot load {names}: "
                              f"{type(e).__name__}: {_first_line(e)}") from None  # fmt: skip
        for name, task in tasks.items():
            _render_every_item(name, task, include_path)


def data_files(cfg: dict[str, Any]) -> list[str]:
    """Every local file a task config names: ``dataset_kwargs`` ``data_files`` and ``*_file``."""
    kwargs = cfg.get("dataset_kwargs") or {}
    files = kwargs.get("data_files") or {}
    if isinstance(files, dict):
        paths = [p for v in files.values() for p in (v if isinstance(v, list) else [v])]
    else:
        paths = list(files) if isinstance(files, list) else [files]
    return [str(p) for p in paths + [v for k, v in kwargs.items() if k.endswith("_file")]]


def _check_file(task: str, path: str, loader: str | None) -> None:
    where = f"task {task}: data file {path}"
    if not Path(path).is_absolute():
        raise ConfigError(FIELD, path, f"task {task}: a relative data path; use an absolute "
                          f"path, {TASK_DIR_TOKEN}/... or {DATA_DIR_TOKEN}/...")  # fmt: skip
    if not Path(path).is_file():
        raise ConfigError(FIELD, path, f"{where} is missing")
    try:
        if path.endswith(".jsonl") or (loader == "json" and not path.endswith(".json")):
            _same_fields(path, task_utils.read_jsonl(path))
        elif path.endswith(".json"):
            rows = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(rows, list | dict):
                raise ValueError(f"{path}: expected a JSON array of objects")
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(FIELD, path, f"task {task}: bad data: {e}") from None


def _same_fields(path: str, rows: list[dict[str, Any]]) -> None:
    """Every row has the first row's fields: `datasets` would fill a missing one with null and
    the prompt would read "None"."""
    first = [k for k, v in rows[0].items() if v is not None]
    for lineno, row in enumerate(rows, start=1):
        missing = [k for k in first if row.get(k) is None]
        if missing:
            raise ValueError(f"{path}: row {lineno}: field {missing[0]!r} is missing or null "
                             f"(the first row has {', '.join(first)})")  # fmt: skip


def _render_every_item(name: str, task: Any, include_path: str | Path) -> None:
    """lm-eval's own rendering of each item: a missing field or a bad target fails here."""
    multiple_choice = task.OUTPUT_TYPE == "multiple_choice"
    for i, doc in enumerate(task.eval_docs):
        try:
            task.doc_to_text(doc)
            target = task.doc_to_target(doc)
            if target is None:
                raise ValueError("no target")
            if multiple_choice:
                choices = task.doc_to_choice(doc)
                if isinstance(target, int) and not 0 <= target < len(choices):
                    raise ValueError(f"target {target} outside its {len(choices)} choices")
        except Exception as e:  # noqa: BLE001 - any failure is a bad row of the user's data
            raise ConfigError(FIELD, str(include_path), f"task {name}: item {i} ({str(doc):.80}): "
                              f"{type(e).__name__}: {_first_line(e)}") from None  # fmt: skip


def _load(load_yaml, path: Path, name: str) -> dict[str, Any]:
    try:
        return load_yaml(path, resolve_func=False)
    except Exception as e:  # noqa: BLE001 - a YAML that does not parse
        raise ConfigError(FIELD, str(path), f"task {name}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else ""


def _quoted(path: Path) -> str:
    """A path for the inside of a double-quoted YAML string (JSON escapes are valid there)."""
    return json.dumps(str(Path(path).resolve()))[1:-1]
