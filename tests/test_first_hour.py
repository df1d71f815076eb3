"""What a new user meets first: quiet logs with progress, outputs under one root that git ignores,
help generated from the schema, and one line naming the key a misspelt one meant."""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_harness

from harness.analysis.html import markdown_tables_html
from harness.config.suggest import closest_key
from harness.logs import quiet_third_party
from harness.sweep.grid import TrialClock

# what the filters drop (harness/logs.py); each was printed by a trial before them
NOISE = (
    "gemm_4bit_forward",
    "trust_remote_code",
    "gradient_checkpointing",
    "FutureWarning",
    "`pretrained` model kwarg",
    "already-initialized model",
    "{'loss'",  # HF's per-log dicts
)


def test_a_trial_prints_progress_and_none_of_the_library_noise(tmp_path: Path) -> None:
    """The real 4-bit SmolLM2 with lm-eval: every filtered message would show here."""
    proc = run_harness([
        "train.max_steps=3", "train.warmup_steps=0", "train.timing_warmup_steps=1",
        "data.num_heldout=4", "eval.limit=1", "eval.base_scores=false",
        "train.save_adapter=false", f"out_dir={tmp_path / 'trial'}",
    ])  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for noise in NOISE:
        assert noise not in out, noise
    steps = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["1/3", "2/3", "3/3"]
    assert all("loss " in s and "loss-tok/s" in s and "ETA " in s for s in steps)
    assert "held-out eval at step 3: loss " in proc.stdout
    assert "lm-eval (after) on qh_embedded: done in " in proc.stdout


def test_the_filters_drop_only_the_named_messages(caplog) -> None:
    quiet_third_party()
    lm = logging.getLogger("lm_eval.models.huggingface")
    with caplog.at_level(logging.WARNING):
        lm.warning("`pretrained` model kwarg is not of type `str`. Many other ...")
        lm.warning("a new lm-eval warning")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: ..."
        )
        logging.getLogger("harness").warning("the harness's own warning")
    assert [r.getMessage() for r in caplog.records] == [
        "a new lm-eval warning",
        "the harness's own warning",
    ]


def test_outputs_land_under_the_root_and_a_clone_stays_clean(tmp_path: Path) -> None:
    """Quick start, a sweep, a report and a pin, run in a fresh clone: every file lands under
    outputs/, a pin reruns by name from there, and `git status` shows nothing."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    for part in ("harness", "conf"):  # the code under test, committed or not (`-m` imports cwd's)
        shutil.copytree(REPO / part, clone / part, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(REPO / ".gitignore", clone / ".gitignore")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(clone)]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "tree", "--allow-empty"], check=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HARNESS_OUTPUT_ROOT", None)

    def run(*args: str) -> str:
        proc = subprocess.run([sys.executable, *args], cwd=clone, env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        return proc.stdout

    tiny = [*TINY, "train.max_steps=2"]
    run("-m", "harness", *tiny)
    run(
        "-m",
        "harness",
        "-m",
        *tiny,
        "lora.r=4,8",
        "hydra.sweep.dir=outputs/sweeps/s",
        "hydra.callbacks.sweep_summary.report=false",
    )  # the report command below builds it
    run("-m", "harness.report", "outputs/sweeps/s", "--no-svg")
    out = run("-m", "harness.pick", "--budget-gib", "24", "outputs/sweeps/s",
              "--write-experiment", "--name", "first-hour")  # fmt: skip
    assert "wrote outputs/experiment/first-hour.yaml" in out
    assert not (REPO / "conf" / "experiment" / "first-hour.yaml").exists()
    assert "r: 8" in run("-m", "harness", "experiment=first-hour", "--cfg", "job")  # by name
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    assert status.stdout == ""
    outputs = clone / "outputs"
    assert len(list((outputs / "runs").glob("*/record.json"))) == 1
    assert (outputs / "sweeps" / "s" / "summary.csv").is_file()
    page = (outputs / "reports" / "s" / "report.html").read_text()
    fits = page[page.index("What fits where") :]
    assert "<pre>" not in fits and "<table>" in fits


def test_help_lists_each_key_with_its_default_and_what_is_allowed() -> None:
    proc = run_harness(["--help"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    r = next(line for line in lines if line.split()[:1] == ["lora.r"])
    assert r.split()[1] == "16" and "an integer > 0" in r and "rank" in r
    variant = next(line for line in lines if line.split()[:1] == ["lora.variant"])
    assert "lora | rslora | dora | dora+rslora" in variant
    assert any(line.split()[:2] == ["quant", "fp4,"] and "nf4*" in line for line in lines)
    assert all(len(line) <= 100 for line in lines)
    engine = run_harness(["--help", "engine"])
    assert engine.returncode == 0 and "engine.checkpointing" in engine.stdout
    assert "none | full | selective | offload" in engine.stdout


@pytest.mark.parametrize(
    "args",
    [["lora.rank=8"], ["+lora.rank=8"], ["--cfg", "job", "lora.rank=8"], ["-m", "lora.rank=4,8"]],
)
def test_a_misspelt_key_names_the_closest_in_one_line(args: list[str]) -> None:
    proc = run_harness(args)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "lora.rank=" in proc.stderr and "did you mean lora.r?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_other_misspellings_are_caught_before_anything_runs() -> None:
    from harness.cli import CONF_DIR
    from harness.config.points import check_points
    from harness.config.schema import register_configs

    register_configs()
    assert "did you mean train.lr?" in check_points(CONF_DIR, [["+trian.lr=1"]])
    assert "did you mean optim=adamw_8bit?" in check_points(CONF_DIR, [["optim=adamw_8bt"]])
    assert "no such pinned experiment" in check_points(CONF_DIR, [["experiment=nope"]])
    near = {k: closest_key(k) for k in ("lora.lr", "train.max_step", "lora.zzz", "outdir")}
    assert near == {"lora.lr": "train.lr", "train.max_step": "train.max_steps",
                    "lora.zzz": None, "outdir": "out_dir"}  # fmt: skip


def test_trial_clock_says_how_many_are_left() -> None:
    clock = TrialClock(3)
    assert clock.start("lora.r=4") == "trial 1 of 3 (lora.r=4)"
    clock.started_at -= 120  # the first trial took 2 min
    clock.end()
    assert clock.start("lora.r=16") == "trial 2 of 3 (lora.r=16), ~4 min left"
    clock.end(ran=False)  # kept from an earlier run: no time, not counted
    assert clock.start() == "trial 3 of 3, ~2 min left"


def test_markdown_tables_become_html_tables() -> None:
    html = markdown_tables_html("Cell = full / LoRA.\n\n| a | b |\n|---|---|\n| 1 <x> | ✓ |")
    assert html.startswith("<p>Cell = full / LoRA.</p>\n<table>")
    assert "<th>a</th><th>b</th>" in html and "<td>1 &lt;x&gt;</td><td>✓</td>" in html
    assert "---" not in html
