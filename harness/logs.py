"""Logs a person reads: the third-party messages that carry no news for a harness user are
dropped at the entry points (`python -m harness`, `.study`, `.report`, `.pick`, `.bench`).

Each filter names one message of one library, matched by its text: a new warning of the same
library still shows, and the harness's own warnings and errors are never touched. What goes, and
why it is no news here:

* bitsandbytes, on every CPU process: "Failed to load CPU gemm_4bit_forward from
  kernels-community ... trust_remote_code". The optional hub kernel is never fetched offline;
  bitsandbytes runs its own CPU kernel, which the harness measures.
* transformers: the FutureWarnings that `gradient_checkpointing`, `gradient_checkpointing_enable`
  and `is_gradient_checkpointing` are renamed `activation_checkpointing*` (three per trial): peft
  and TRL call the old names, not the harness.
* lm-eval, twice per evaluation: "`pretrained` model kwarg is not of type `str`" and "Passed an
  already-initialized model": the harness passes its in-memory model on purpose. Its INFO lines
  (seeds, task paths, gen_kwargs) stay out too; the trial prints its own lm-eval progress.
* Progress bars: datasets' bar per map (six per trial) always; where output goes to a file or
  a pipe (a bar there is a run of carriage returns), the model-loading bars go
  (`HF_HUB_DISABLE_PROGRESS_BARS`, read as transformers is imported) and lm-eval's request bars
  redraw at most every 30 s (`TQDM_MININTERVAL`). The trial prints its own progress lines
  (harness/trial/progress.py).
* Hydra, where the output root does not exist yet: "provider=hydra.searchpath in main, path=...
  is not available" (the root is searched for pinned experiments; none there yet is no error).
"""

import logging
import os
import re
import sys
import warnings

# (logger, message pattern) of log records dropped. A filter sits on the logger that makes the
# record; getLogger returns the same object before and after the library imports, so it holds.
DROPPED_RECORDS = (
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward"),
    ("lm_eval.models.huggingface", r"`pretrained` model kwarg is not of type `str`"),
    ("lm_eval.models.huggingface", r"Passed an already-initialized model through `pretrained`"),
)
# (category, message pattern) of Python warnings ignored
IGNORED_WARNINGS = (
    (FutureWarning, r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated"),
    (UserWarning, r"provider=hydra\.searchpath in main, path=.* is not available"),
    # train.profile_steps records one window, a single profiler cycle: nothing is cleared
    (UserWarning, r"Profiler clears events at the end of each cycle"),
)
SHOW_ALL_ENV = "HARNESS_ALL_WARNINGS"
QUIET_INFO = ("lm_eval",)  # libraries whose INFO lines repeat what the trial prints itself


class DropMessages(logging.Filter):
    """Drops the records whose message matches one of `patterns`."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_third_party() -> None:
    """Install the filters above; idempotent, so every entry point may call it. With
    HARNESS_ALL_WARNINGS=1 nothing is filtered (to see what a library says while debugging)."""
    if os.environ.get(SHOW_ALL_ENV, "") not in ("", "0"):
        return
    for category, pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    by_logger: dict[str, list[str]] = {}
    for name, pattern in DROPPED_RECORDS:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(patterns))
    for name in QUIET_INFO:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # a bar per map, every trial
    if not interactive():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_MININTERVAL", "30")


def interactive() -> bool:
    """A person watches stdout and stderr live (bars redraw), not a file or a pipe (lines)."""
    return sys.stdout.isatty() and sys.stderr.isatty()
