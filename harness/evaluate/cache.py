"""The base model's lm-eval scores, cached per base model, quant, engine, scored form, batch size,
seed and the content of every task and data file: a sweep scores its base once. One JSON file
shared by all trials, rewritten atomically under a file lock."""

import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.evaluate.registry import tasks_fingerprint

log = logging.getLogger(__name__)
Scores = dict[str, dict[str, dict[str, Any]]]


def base_scores_cached(key: dict[str, Any], compute: Callable[[], Any], *, cache_file: Path) -> Any:
    """Base-model scores from ``cache_file``, computed by ``compute()`` on a miss.

    Args:
        key: What the scores depend on: model identity (weights and their fingerprint), quant
            and engine settings, scored form, tasks, limit, num_fewshot, batch size, seed and the
            sha1 of every task and data file (harness/evaluate/fingerprint.py). The lm-eval
            version and a hash of the shipped task files are added here, so a changed YAML, data
            row or lm-eval never hits a stale entry.
        compute: Scores the base model, returning anything JSON can hold (the trial stores
            scores, per-item metrics and primary metrics); called only on a miss.
        cache_file: A JSON file ``{sha1: {"key": ..., "scores": ...}}`` shared by all trials;
            rewritten atomically under a file lock, so parallel trials never lose an entry.

    Returns:
        What ``compute`` returned, now or for an earlier trial with the same key.
    """
    full_key = {
        **key,
        "lm_eval_version": importlib.metadata.version("lm_eval"),
        "tasks_fingerprint": tasks_fingerprint(),
    }
    digest = hashlib.sha1(json.dumps(full_key, sort_keys=True, default=str).encode()).hexdigest()
    hit = _read_cache(cache_file).get(digest)
    if hit is not None:
        return hit["scores"]
    scores = compute()
    with _locked(cache_file):
        entries = _read_cache(cache_file)  # re-read: another trial may have added entries
        entries[digest] = {"key": full_key, "scores": scores}
        write_json_atomic(cache_file, entries)
    return scores


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:  # only a hand edit can do this: writes are atomic
        log.warning("ignoring unreadable score cache %s (%s); recomputing", path, e)
        return {}


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_json_atomic(path: Path, obj: Any) -> None:
    """A temp file beside ``path``, fsync, rename: readers see the old file or the new one."""
    from lm_eval.utils import handle_non_serializable

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=handle_non_serializable)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
