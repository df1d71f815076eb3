"""The yardsticks beside the engines: engine=unsloth (the peer) and the hand-written loop."""

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_harness

from harness.config.engine import EngineConfig
from harness.engine.process import process_patches
from harness.errors import ConfigError

UNSLOTH = importlib.util.find_spec("unsloth") is not None


def test_unsloth_takes_no_harness_lever() -> None:
    assert EngineConfig(backend="unsloth", checkpointing="offload").backend == "unsloth"
    with pytest.raises(ConfigError, match=r"engine\.kernels='liger': none: engine\.backend=unsl"):
        EngineConfig(backend="unsloth", kernels="liger")
    with pytest.raises(ConfigError, match=r"engine\.backend='unsloh': allowed: harness, unsloth"):
        EngineConfig(backend="unsloh")


def test_an_unsloth_trial_marks_its_process() -> None:
    """Unsloth patches transformers' classes for the whole process: the pool gives the next
    trial a process of its own (harness/sweep/pool.py needs_own_process)."""
    assert process_patches(EngineConfig(backend="unsloth")) == {"backend=unsloth"}
    assert process_patches(EngineConfig()) == frozenset()


def test_the_unsloth_preset_composes_and_is_refused_on_a_cpu_in_one_line() -> None:
    proc = run_harness([*TINY, "engine=unsloth", "train.device=cpu"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert lines == [
        "error: engine.backend='unsloth': needs CUDA (so do engine.checkpointing); on cpu: harness"
    ], proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_loop_refuses_bad_input_before_loading(tmp_path: Path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "harness.benchmark.loop", *TINY, "lora.r=0"]
    proc = subprocess.run([*cmd, f"out_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: lora.r=0: must be an integer > 0"
    ], proc.stderr
    assert not (tmp_path / "record.json").exists()


def test_the_committed_unsloth_rows_ran_unsloth() -> None:
    """The table's unsloth rows are Unsloth's: its version and recompute mode in the record,
    the same first-step loss as plain on the same data (one random-weight model, one batch)."""
    run = REPO / "benchmarks" / "records" / "presets" / "20261206T072105Z-h100-80gb-hbm3"
    unsloth = json.loads((run / "unsloth" / "record.json").read_text())
    plain = json.loads((run / "plain" / "record.json").read_text())
    assert unsloth["levers"]["backend"] == "unsloth" and unsloth["levers"]["unsloth"] == "2026.10.9"
    assert unsloth["levers"]["checkpointing"] == "unsloth"
    first = [r["loss"]["curve"][0]["loss"] for r in (unsloth, plain)]
    assert abs(first[0] - first[1]) < 0.01, first
