"""Instruction data: read or generate examples, format prompts, tokenize (loss on responses only).

An example is {"instruction", "input", "output"} (Alpaca). Prompts use the model's own chat
template when it has one, else the Alpaca prompt (base models). Labels cover the response only:
each tokenized row carries `completion_mask` (1 on response tokens), which TRL's SFTTrainer uses.
"""

import json
import logging
import random
from pathlib import Path
from typing import Any

from harness.assets.embedded_data import generate_embedded
from harness.config.schema import DataConfig
from harness.errors import ConfigError

log = logging.getLogger(__name__)

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


def read_alpaca_file(path: Path) -> list[dict[str, str]]:
    """Read an Alpaca-format JSON array or JSONL file, checking every row.

    Raises ConfigError naming the file and the line of the first bad row.
    """
    if not path.is_file():
        raise ConfigError("data.path", str(path), "no such file (Alpaca JSON or JSONL expected)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        why = f"an Alpaca JSON or JSONL text file; byte {e.start} is not UTF-8"
        raise ConfigError("data.path", str(path), why) from None
    rows: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        rows = _json_array_rows(text, path)
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ConfigError(
                    "data.path", f"{path}:{lineno}", f"malformed JSON line: {e.msg}"
                ) from None
    examples, skipped = [], 0
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise ConfigError("data.path", where, "each row needs a string 'instruction'")
        if not isinstance(row.get("output"), str):
            raise ConfigError("data.path", where, "each row needs a string 'output'")
        if not isinstance(row.get("input", ""), str):
            raise ConfigError("data.path", where, "'input' must be a string when present")
        if not row["output"].strip():
            skipped += 1  # e.g. 4 of the 9,229 Alpaca rows: nothing to learn, no loss tokens
            continue
        examples.append(
            {
                "instruction": row["instruction"],
                "input": row.get("input", ""),
                "output": row["output"],
            }
        )
    if skipped:
        log.warning("%s: skipped %d rows with an empty output", path, skipped)
    if not examples:
        raise ConfigError("data.path", str(path), "no examples in file")
    return examples


def _json_array_rows(text: str, path: Path) -> list[tuple[int, Any]]:
    """Parse a JSON array element by element, keeping each element's line number."""
    decoder, rows = json.JSONDecoder(), []
    pos, line = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    while True:
        start = pos
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", start, pos)
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ConfigError(
                "data.path", f"{path}:{e.lineno}", f"malformed JSON: {e.msg}"
            ) from None
        rows.append((line, row))
        line += text.count("\n", pos, end)
        pos = end
    if pos >= len(text):
        raise ConfigError("data.path", f"{path}:{line}", "malformed JSON: unterminated array")
    return rows


def load_examples(dcfg: DataConfig) -> tuple[list[dict], list[dict]]:
    """(train, held-out) examples. Held-out never overlaps train."""
    if dcfg.source == "embedded":
        return generate_embedded(dcfg.num_train, dcfg.num_heldout, seed=dcfg.seed)
    if dcfg.source == "alpaca":
        examples = read_alpaca_file(Path(dcfg.path))
    else:
        examples = _read_hub(dcfg)
    random.Random(dcfg.seed).shuffle(examples)
    if dcfg.max_examples:
        examples = examples[: dcfg.max_examples]
    if len(examples) <= dcfg.num_heldout:
        raise ConfigError(
            "data.num_heldout", dcfg.num_heldout, f"must be < the {len(examples)} examples read"
        )
    return examples[dcfg.num_heldout :], examples[: dcfg.num_heldout]


def _read_hub(dcfg: DataConfig) -> list[dict]:
    from datasets import load_dataset

    ds = load_dataset(dcfg.path, split=dcfg.split)
    missing = {"instruction", "output"} - set(ds.column_names)
    if missing:
        raise ConfigError("data.path", dcfg.path, f"dataset lacks Alpaca columns {sorted(missing)}")
    return [
        {"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]}
        for r in ds
    ]


def prompt_format(tokenizer, dcfg: DataConfig) -> tuple[str, str]:
    """("chat" | "alpaca", why): auto takes the model's chat template when it has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if dcfg.prompt_format == "auto":
        if has_template:
            return "chat", "data.prompt_format=auto: the tokenizer has a chat template"
        return "alpaca", "data.prompt_format=auto: the tokenizer has no chat template"
    if dcfg.prompt_format == "chat" and not has_template:
        raise ConfigError("data.prompt_format", "chat", "this tokenizer has no chat template")
    return dcfg.prompt_format, f"data.prompt_format={dcfg.prompt_format}"


def uses_chat_template(tokenizer, dcfg: DataConfig) -> bool:
    """auto: the model's chat template when it has one."""
    return prompt_format(tokenizer, dcfg)[0] == "chat"


def format_example(example: dict, tokenizer, *, chat: bool) -> tuple[str, str]:
    """(prompt, completion) strings. The completion ends with the turn/sequence end token."""
    user = example["instruction"] + (f"\n\n{example['input']}" if example.get("input") else "")
    if chat:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(
            [
                {"role": "user", "content": user},
                {"role": "assistant", "content": example["output"]},
            ],
            tokenize=False,
        )
        if not full.startswith(prompt):
            raise ValueError("chat template renders the prompt differently with a reply")
        return prompt, full[len(prompt) :]
    has_input = bool(example.get("input"))
    prompt = ALPACA_PROMPT.format(
        ctx=", paired with an input that provides further context" if has_input else "",
        instruction=example["instruction"],
        input_block=f"### Input:\n{example['input']}\n\n" if has_input else "",
    )
    return prompt, example["output"] + (tokenizer.eos_token or "")


def tokenize(examples: list[dict], tokenizer, dcfg: DataConfig) -> list[dict[str, list[int]]]:
    """input_ids + completion_mask per example, truncated to max_seq_len (examples whose
    prompt alone fills the window are dropped: they would carry no loss). Prompts and
    completions are tokenized separately, each list in one batched tokenizer call."""
    chat = uses_chat_template(tokenizer, dcfg)
    pairs = [format_example(ex, tokenizer, chat=chat) for ex in examples]
    prompts = _ids(tokenizer, [p for p, _ in pairs], add_special_tokens=not chat)
    completions = _ids(tokenizer, [c for _, c in pairs], add_special_tokens=False)
    rows = []
    for p, c in zip(prompts, completions, strict=True):
        ids = (p + c)[: dcfg.max_seq_len]
        mask = ([0] * len(p) + [1] * len(c))[: dcfg.max_seq_len]
        if sum(mask):
            rows.append({"input_ids": ids, "completion_mask": mask})
    if not rows:
        raise ConfigError("data.max_seq_len", dcfg.max_seq_len, "every prompt fills the window")
    return rows


def _ids(tokenizer, texts: list[str], *, add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]


def heldout_task_rows(examples: list[dict], tokenizer, dcfg: DataConfig) -> list[dict[str, str]]:
    """Rows of the exact-match generation task: the prompt as trained on, and the answer."""
    chat = uses_chat_template(tokenizer, dcfg)
    return [
        {"text": format_example(ex, tokenizer, chat=chat)[0], "answer": ex["output"].strip()}
        for ex in examples
    ]
