"""Readers for the offline files whose layout lm-eval's `json` loader cannot take as is.

lm-eval imports this file by path from the materialized task folder (``!function utils.x``), so it
must stand alone: no ``harness`` imports, and ``datasets`` / ``lm_eval`` only inside the loaders.
The ``read_*`` functions are also the harness's pre-flight check: they raise ``ValueError`` with
``<file>:<line>: <reason>`` for the first bad row, before any model is loaded.
"""

import json
import re
from pathlib import Path
from typing import Any

# A WikiText article starts at a level-1 heading line " = Title = " (level 2 is " = = Sub = = ").
_WIKITEXT_TITLE = re.compile(r" = [^=].* = ")
HELLASWAG_LINES = 6  # "label: context", gold index, then 4 endings


def read_jsonl(path: str | Path, fields: dict[str, type] | None = None) -> list[dict[str, Any]]:
    """Parse a JSON-lines file, checking that each row has ``fields`` with the given types.

    Args:
        path: The ``.jsonl`` file.
        fields: Required keys and their types (``int`` excludes ``bool``); None skips the check.

    Returns:
        The rows, blank lines skipped.

    Raises:
        ValueError: ``<path>:<line>: <reason>`` for the first row that does not parse or fit.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {row!r:.60}")
            for key, kind in (fields or {}).items():
                value = row.get(key)
                if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                    raise ValueError(
                        f"{path}:{lineno}: field {key!r} must be {kind.__name__}, got {value!r:.60}"
                    )
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def read_hellaswag(path: str | Path) -> list[dict[str, Any]]:
    """Parse llama.cpp's HellaSwag text layout: 6 lines per item.

    Line 1 is ``activity_label: ctx`` (ctx = ctx_a + " " + ctx_b, as in the jsonl), line 2 the gold
    ending's index, lines 3-6 the four endings.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or len(lines) % HELLASWAG_LINES:
        raise ValueError(
            f"{path}: {len(lines)} lines, expected a non-zero multiple of {HELLASWAG_LINES}"
        )
    rows = []
    for start in range(0, len(lines), HELLASWAG_LINES):
        ctx, label, *endings = lines[start : start + HELLASWAG_LINES]
        if label.strip() not in {"0", "1", "2", "3"}:
            raise ValueError(f"{path}:{start + 2}: gold label must be 0-3, got {label!r:.60}")
        rows.append({"ctx": ctx, "endings": endings, "label": int(label)})
    return rows


def read_piqa(data_file: str | Path, labels_file: str | Path) -> list[dict[str, Any]]:
    """Parse PIQA's ``valid.jsonl`` and join the labels file (one 0/1 per line, same order)."""
    rows = read_jsonl(data_file, {"goal": str, "sol1": str, "sol2": str})
    with open(labels_file, encoding="utf-8") as f:
        labels = [line.strip() for line in f if line.strip()]
    if len(labels) != len(rows):
        raise ValueError(f"{labels_file}: {len(labels)} labels for {len(rows)} rows of {data_file}")
    for lineno, (row, label) in enumerate(zip(rows, labels, strict=True), start=1):
        if label not in {"0", "1"}:
            raise ValueError(f"{labels_file}:{lineno}: label must be 0 or 1, got {label!r:.60}")
        row["label"] = int(label)
    return rows


def read_wikitext(path: str | Path) -> list[dict[str, str]]:
    """Split the raw WikiText-2 test file into one document (``page``) per article.

    lm-eval's ``wikitext`` reads EleutherAI/wikitext_document_level, which also has one page per
    article. This raw copy lacks the blank `` `` rows between paragraphs and uses CRLF, so pages
    here are the article's lines joined by "\\n": the same text less the empty rows.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    pages: list[list[str]] = []
    for line in lines:
        if _WIKITEXT_TITLE.fullmatch(line) or not pages:
            pages.append([])
        if line.strip():
            pages[-1].append(line)
    docs = [{"page": "\n".join(page) + "\n"} for page in pages if page]
    if not docs:
        raise ValueError(f"{path}: no text")
    return docs


def _dataset(split: str, rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


# lm-eval calls custom_dataset(**metadata, **dataset_kwargs): metadata (version, model args...)
# lands in **_ and is ignored.
def load_hellaswag(data_file: str, **_: Any) -> Any:
    """custom_dataset for qh_hellaswag: the validation split as a DatasetDict."""
    return _dataset("validation", read_hellaswag(data_file))


def load_piqa(data_file: str, labels_file: str, **_: Any) -> Any:
    """custom_dataset for qh_piqa: the validation split as a DatasetDict."""
    return _dataset("validation", read_piqa(data_file, labels_file))


def load_wikitext(data_file: str, **_: Any) -> Any:
    """custom_dataset for qh_wikitext2: the test split, one doc per article."""
    return _dataset("test", read_wikitext(data_file))


def process_hellaswag(dataset: Any) -> Any:
    """lm-eval's hellaswag ``process_docs``, on the text layout's fields.

    lm-eval builds the query as ``label: ctx_a + " " + ctx_b.capitalize()``. The text layout holds
    ctx_a and ctx_b already joined, so ctx_b keeps its lower-case first letter here.
    """
    from lm_eval.tasks.hellaswag.utils import preprocess

    def _doc(doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "query": preprocess(doc["ctx"]),
            "choices": [preprocess(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(_doc)
