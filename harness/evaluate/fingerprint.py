"""What a trial's scores were read from: the sha1 of every task file and every data file.

The base-score cache keys on it (an edited YAML, prompt or data row never returns stale "before"
scores), the record keeps it, and ``python -m harness.evaluate`` refuses to compare against a
record whose files have changed since. Files are named by where they come from, not by the
trial's folder: ``tasks/qh_arc_easy.yaml`` (shipped), ``user/my_task.yaml`` (the user's folder),
the data file's absolute path, or ``<embedded>/heldout.jsonl`` (written per trial).
"""

import hashlib
from pathlib import Path

import yaml

from harness.evaluate import registry, user_tasks

EMBEDDED_LABEL = "<embedded>"


def scored_files(
    tasks: list[str], *, data_dir: Path, embedded_dir: Path | None, include_path: Path | None
) -> dict[str, str]:
    """{file label: sha1 of its bytes} for the task sources and the data of ``tasks``.

    Args:
        tasks: The task names scored (``eval.tasks``).
        data_dir: The offline datasets (``eval.data_dir``).
        embedded_dir: Folder holding ``heldout.jsonl`` for ``qh_embedded``, or None.
        include_path: The user's task folder, or None.
    """
    files: dict[str, Path] = {f"tasks/{p.name}": p for p in _shipped_sources()}
    for name in sorted(set(tasks) & set(registry.harness_tasks())):
        for path in _shipped_data(name, data_dir=data_dir, embedded_dir=embedded_dir):
            files[_label(path, embedded_dir)] = Path(path)
    if include_path is not None:
        src = user_tasks.check_folder(include_path)
        for path in sorted(src.rglob("*")):
            if path.is_file() and path.suffix in (".yaml", ".yml", ".py"):
                files[f"user/{path.relative_to(src).as_posix()}"] = path
        for path in _user_data(src, data_dir):
            files[path] = Path(path)
    return {label: _sha1(path) for label, path in sorted(files.items())}


def digest(files: dict[str, str]) -> str:
    """One sha1 over the labelled file hashes."""
    text = "\n".join(f"{label}\0{sha}" for label, sha in sorted(files.items()))
    return hashlib.sha1(text.encode()).hexdigest()


def changed(recorded: dict[str, str], now: dict[str, str]) -> str | None:
    """The first file whose content differs between two fingerprints, as a short phrase."""
    for label in sorted(set(recorded) | set(now)):
        if label not in now:
            return f"{label} is gone"
        if label not in recorded:
            return f"{label} is new"
        if recorded[label] != now[label]:
            return f"{label} changed (sha1 {recorded[label][:10]} -> {now[label][:10]})"
    return None


def _shipped_sources() -> list[Path]:
    return sorted(registry.TASKS_DIR.glob("*.yaml")) + [registry.TASKS_DIR / "utils.py"]


def _shipped_data(name: str, *, data_dir: Path, embedded_dir: Path | None) -> list[str]:
    text = (registry.TASKS_DIR / f"{name}.yaml").read_text()
    if registry.EMBEDDED_DIR_TOKEN in text and embedded_dir is None:
        return []
    text = text.replace(registry.DATA_DIR_TOKEN, registry._yaml_quoted(data_dir))
    if embedded_dir is not None:
        text = text.replace(registry.EMBEDDED_DIR_TOKEN, registry._yaml_quoted(embedded_dir))
    cfg = yaml.load(text, Loader=registry._NoFunctionLoader)  # noqa: S506 - no code runs
    return registry._data_files(cfg.get("dataset_kwargs") or {})


def _user_data(src: Path, data_dir: Path) -> list[str]:
    """Data files named by any task YAML of the user's folder (placeholders replaced)."""
    paths = set()
    for path in sorted(src.rglob("*.yaml")):
        text = path.read_text()
        text = text.replace(user_tasks.TASK_DIR_TOKEN, user_tasks._quoted(src))
        text = text.replace(user_tasks.DATA_DIR_TOKEN, user_tasks._quoted(data_dir))
        cfg = yaml.load(text, Loader=registry._NoFunctionLoader)  # noqa: S506 - no code runs
        if isinstance(cfg, dict):
            paths.update(p for p in user_tasks.data_files(cfg) if Path(p).is_file())
    return sorted(paths)


def _label(path: str, embedded_dir: Path | None) -> str:
    if embedded_dir is not None:
        root = str(Path(embedded_dir).resolve())
        if path.startswith(root):
            return EMBEDDED_LABEL + path[len(root) :]
    return path


def _sha1(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()
