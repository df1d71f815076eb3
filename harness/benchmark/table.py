"""BENCHMARKS.md's tables, generated from the committed benchmark records.

Records sit at `<root>/<suite>/<run-id>/<configuration>/record.json`, beside the run's manifest
`<root>/<suite>/<run-id>/run.json` (configurations in order, each with its reference). A table
section of the document lies between `<!-- table:<suite> -->` and `<!-- /table -->`; everything
between the two markers is replaced. Ratios are taken only within one run (one device call).
The output depends on the records alone: regenerating gives the same bytes.
"""

import json
import re
from pathlib import Path
from typing import Any

from harness.benchmark.spec import BenchFileError

MANIFEST = "run.json"
RECORD = "record.json"
SECTION = re.compile(
    r"(<!-- table:(?P<suite>[A-Za-z0-9_.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S
)
HEADER = (
    "run", "configuration", "device", "tokens/s", "against", "tokens/s ×",
    "reserved GiB", "reserved ×", "tokens/s × loop", "reserved × loop", "MFU", "steps (warm-up)",
)  # fmt: skip
PROFILE_HEADER = ("GPU busy", "launches/step")  # only where a record of the table was profiled


def load_run(run_dir: Path) -> tuple[dict, dict[str, dict | None]]:
    """A run's manifest and its records by configuration name (None: no record)."""
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
        names = [c["name"] for c in manifest["configurations"]]
        records = {n: _read(run_dir / n / RECORD) for n in names}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BenchFileError(f"{run_dir}: unreadable run ({type(e).__name__}: {e})") from None
    return manifest, records


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_dirs(root: Path, suite: str) -> list[Path]:
    """The suite's runs, newest first (run-ids start with their UTC start time)."""
    suite_dir = root / suite
    if not suite_dir.is_dir():
        return []
    runs = [p for p in suite_dir.iterdir() if (p / MANIFEST).is_file()]
    return sorted(runs, key=lambda p: p.name, reverse=True)


def render_suite(root: Path, suite: str) -> str:
    """The markdown table of one suite: a row per configuration of each run; with the profile
    columns where any of its records has a `profile` (train.profile_steps)."""
    rows, profiles = [], []
    for run_dir in run_dirs(root, suite):
        manifest, records = load_run(run_dir)
        # the hand-written reference loop (runner: loop) beside each reference: the second
        # yardstick of every configuration measured against that reference
        loops = {c.get("reference"): c["name"] for c in manifest["configurations"]
                 if c.get("runner") == "loop"}  # fmt: skip
        for config in manifest["configurations"]:
            loop = records.get(loops.get(config.get("reference") or config["name"], ""))
            ref = config.get("reference")
            if ref is not None and ref not in records:
                raise BenchFileError(f"{run_dir / MANIFEST}: reference {ref!r} is not in this run")
            rows.append(
                _row(
                    run_dir.name,
                    config["name"],
                    records[config["name"]],
                    ref,
                    records.get(ref),
                    loop,
                )
            )
            profiles.append((records[config["name"]] or {}).get("profile"))
    if not rows:
        return f"No records under `benchmarks/records/{suite}/`.\n"
    header = HEADER
    if any(profiles):
        header = (*HEADER, *PROFILE_HEADER)
        rows = [[*row, *_profile_cells(prof)] for row, prof in zip(rows, profiles, strict=True)]
    lines = [_line(header), _line(["---"] * len(header)), *(_line(r) for r in rows)]
    return "\n".join(lines) + "\n"


def _line(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _row(
    run_id: str, name: str, rec: dict | None, ref_name: str | None, ref: dict | None,
    loop: dict | None = None,
):  # fmt: skip
    head = [run_id, f"`{name}`"]
    if rec is None:
        return [*head, "-", "no record", *["-"] * (len(HEADER) - 4)]
    tp, status = rec.get("throughput") or {}, rec.get("status")
    tokens, reserved = _tokens(rec), _reserved(rec)
    mfu = tp.get("mfu")
    steps = ((rec.get("config") or {}).get("train") or {}).get("max_steps")
    return [
        *head,
        _device(rec),
        f"{tokens:,.0f}" if tokens else str(status),
        f"`{ref_name}`" if ref_name else "-",
        _ratio(tokens, _tokens(ref), ref_name, 2),
        f"{reserved:.2f}" if reserved is not None else "-",
        _ratio(reserved, _reserved(ref), ref_name, 3),
        _ratio(tokens, _tokens(loop), "loop", 2) if loop else "-",
        _ratio(reserved, _reserved(loop), "loop", 3) if loop else "-",
        f"{100 * mfu:.1f}%" if mfu and tokens else "-",
        f"{steps} ({tp.get('warmup_steps', '-')})" if steps else "-",
    ]


def _profile_cells(profile: dict | None) -> list[str]:
    """A profiled record's GPU busy share and the launches its host issued per step (kernel
    launch calls, a CUDA graph's launch counting one: what bounds a launch-bound step); else "-"."""
    prof = profile or {}
    busy, calls = prof.get("gpu_busy_fraction"), prof.get("cuda_runtime_launch_calls_per_step")
    launches = None if calls is None else calls + (prof.get("graph_launches_per_step") or 0)
    return [
        f"{100 * busy:.0f}%" if busy is not None else "-",
        f"{launches:,.0f}" if launches is not None else "-",
    ]


def _device(rec: dict) -> str:
    """The GPU's name; `cpu` for a CPU trial (its record names the architecture)."""
    device = rec.get("device") or {}
    return (device.get("name") if device.get("type") == "cuda" else device.get("type")) or "-"


def _tokens(rec: dict | None) -> float | None:
    """Every token of the batch per second over the timed steps; None unless it succeeded."""
    if not rec or rec.get("status") != "success":
        return None
    return (rec.get("throughput") or {}).get("padded_tokens_per_s")


def _reserved(rec: dict | None) -> float | None:
    """The train phase's peak reserved GiB (CUDA records only)."""
    if not rec:
        return None
    train = ((rec.get("memory") or {}).get("phases") or {}).get("train") or {}
    return train.get("peak_reserved_gib", rec.get("peak_vram_reserved_gib"))


def _ratio(value: float | None, ref: float | None, ref_name: str | None, digits: int) -> str:
    if ref_name is None:
        return f"{1:.{digits}f}x" if value else "-"
    return f"{value / ref:.{digits}f}x" if value and ref else "-"


def rewrite_doc(doc: Path, root: Path) -> bool:
    """Replace every table section of `doc` with its suite's table. Returns whether it changed."""
    if not doc.is_file():
        raise BenchFileError(f"{doc}: no such file")
    text = doc.read_text()
    if not SECTION.search(text):
        raise BenchFileError(
            f"{doc}: no table sections: allowed: <!-- table:SUITE --> ... <!-- /table -->"
        )

    def fill(m: re.Match) -> str:
        return m.group(1) + render_suite(root, m.group("suite")) + m.group(4)

    new = SECTION.sub(fill, text)
    if new != text:
        doc.write_text(new)
    return new != text


def record_summary(rec: dict[str, Any] | None) -> str:
    """One line on a record, for the runner's log."""
    if rec is None:
        return "no record"
    tokens, reserved = _tokens(rec), _reserved(rec)
    parts = [str(rec.get("status"))]
    if tokens:
        parts.append(f"{tokens:,.0f} tokens/s")
    if reserved is not None:
        parts.append(f"{reserved:.2f} GiB reserved")
    return ", ".join(parts)
