"""The benchmark runner and table generator (harness.bench): the tables from real committed
records, the runner's checks of a benchmark file, and its one-process-per-configuration launch."""

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, TINY

from harness.benchmark.run import run_suite
from harness.benchmark.spec import load_bench_file
from harness.benchmark.table import render_suite, rewrite_doc

RECORDS = REPO / "benchmarks" / "records"
PRESETS = sorted((RECORDS / "presets").iterdir())  # two committed runs, oldest first
DOC = """# Benchmarks
Hand-written text stays.
<!-- table:presets -->
stale rows
<!-- /table -->
Between the tables.
<!-- table:nothing -->
<!-- /table -->
"""


def _bench(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.bench", *args], cwd=cwd, capture_output=True, text=True
    )


def _copy_run(src: Path, root: Path, names: list[str]) -> Path:
    """A run of `names` only: their committed records and a manifest that lists them."""
    dst = root / "presets" / src.name
    manifest = json.loads((src / "run.json").read_text())
    manifest["configurations"] = [c for c in manifest["configurations"] if c["name"] in names]
    for name in names:
        (dst / name).mkdir(parents=True)
        shutil.copyfile(src / name / "record.json", dst / name / "record.json")
    (dst / "run.json").write_text(json.dumps(manifest))
    return dst


@pytest.fixture
def two_runs(tmp_path: Path) -> Path:
    """plain, fast and lean_top4_slim_cap8.2 of one run; plain and that lean of a later one."""
    root = tmp_path / "records"
    _copy_run(PRESETS[0], root, ["plain", "fast", "lean_top4_slim_cap8.2"])
    _copy_run(PRESETS[1], root, ["plain", "lean_top4_slim_cap8.2"])
    return root


def test_table_rows_carry_ratios_within_their_own_run(two_runs: Path) -> None:
    rows = [r.split(" | ") for r in render_suite(two_runs, "presets").splitlines()[2:]]
    assert [r[0].strip("| ") for r in rows] == [PRESETS[1].name] * 2 + [PRESETS[0].name] * 3
    by = {(r[0].strip("| "), r[1]): r for r in rows}
    # the earlier run: fast 12,493 / plain 5,778 tokens/s; 14.13 / 16.56 GiB reserved
    fast = by[(PRESETS[0].name, "`fast`")]
    assert fast[2:11] == [
        "NVIDIA H200",
        "12,493",
        "`plain`",
        "2.16x",
        "14.13",
        "0.854x",
        "-",
        "-",
        "74.3%",
    ]  # fmt: skip  (no reference loop in that run: no ratio to it)
    assert fast[11] == "50 (5) |"
    # the same configuration against each run's own plain: 11,867 / 5,778 and 11,710 / 5,943
    assert by[(PRESETS[0].name, "`lean_top4_slim_cap8.2`")][5] == "2.05x"
    assert by[(PRESETS[1].name, "`lean_top4_slim_cap8.2`")][5] == "1.97x"
    assert by[(PRESETS[1].name, "`plain`")][4:8] == ["-", "1.00x", "16.56", "1.000x"]


def test_each_row_carries_its_ratio_to_the_reference_loop_of_its_run() -> None:
    """The H100 run with plain, the hand-written loop, Unsloth and the presets in one call."""
    run = RECORDS / "presets" / "20261206T072105Z-h100-80gb-hbm3"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _copy_run(run, root, ["plain", "loop", "unsloth", "fast", "lean"])
        rows = [r.split(" | ") for r in render_suite(root, "presets").splitlines()[2:]]
    by = {r[1]: r for r in rows}
    # fast 11,962 / loop 7,256 tokens/s; 14.70 / 23.01 GiB reserved
    assert by["`fast`"][3:10] == [
        "11,962",
        "`plain`",
        "2.26x",
        "14.70",
        "0.888x",
        "1.65x",
        "0.639x",
    ]
    assert by["`loop`"][8:10] == ["1.00x", "1.000x"] and by["`plain`"][8] == "0.73x"
    assert by["`unsloth`"][3] == "8,812" and by["`lean`"][8] == "1.53x"


def test_regenerating_the_doc_replaces_the_marked_sections_and_is_deterministic(
    two_runs: Path, tmp_path: Path
) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(DOC)
    assert rewrite_doc(doc, two_runs)
    first = doc.read_bytes()
    assert not rewrite_doc(doc, two_runs)  # nothing left to change
    assert doc.read_bytes() == first
    text = first.decode()
    assert "stale rows" not in text and "| `fast` | NVIDIA H200 | 12,493 |" in text
    assert text.startswith("# Benchmarks\nHand-written text stays.\n<!-- table:presets -->\n|")
    assert "<!-- /table -->\nBetween the tables.\n" in text
    assert "<!-- table:nothing -->\nNo records under `benchmarks/records/nothing/`.\n<!--" in text
    proc = _bench("--table", "--out", str(two_runs), "--doc", str(doc))
    assert proc.returncode == 0 and doc.read_bytes() == first, proc.stderr


def test_the_committed_tables_are_current() -> None:
    """BENCHMARKS.md's tables are what `python -m harness.bench --table` makes of the records."""
    text = (REPO / "BENCHMARKS.md").read_text()
    for suite in ("presets", "shapes", "levers"):
        table = render_suite(RECORDS, suite)
        assert f"<!-- table:{suite} -->\n{table}<!-- /table -->" in text, suite


def test_a_reference_outside_its_run_is_refused(two_runs: Path, tmp_path: Path) -> None:
    run = two_runs / "presets" / PRESETS[1].name
    shutil.rmtree(run / "plain")
    manifest = json.loads((run / "run.json").read_text())
    manifest["configurations"] = manifest["configurations"][1:]  # its reference, plain, dropped
    (run / "run.json").write_text(json.dumps(manifest))
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(DOC)
    proc = _bench("--table", "--out", str(two_runs), "--doc", str(doc))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {run / 'run.json'}: reference 'plain' is not in this run"
    ]


BAD_FILES = {
    "bad_yaml.yaml": ("configurations: [\n  - name: plain\n", "not valid YAML at line"),
    "unknown_key.yaml": (
        "configurations:\n  - name: plain\n    overides: [engine=plain]\n",
        "unknown key configurations[0].overides: allowed: name, overrides, reference, runner",
    ),
    "bad_runner.yaml": (
        "configurations:\n  - name: plain\n    overrides: [engine=plain]\n    runner: lopo\n",
        "configurations[0].runner='lopo': allowed: trial, loop",
    ),
    "late_reference.yaml": (
        "configurations:\n  - name: fast\n    overrides: [engine=fast]\n    reference: plain\n"
        "  - name: plain\n    overrides: [engine=plain]\n",
        "configurations[0].reference='plain': allowed: an earlier configuration",
    ),
    "runner_key.yaml": (
        "configurations:\n  - name: plain\n    overrides: [engine=plain, out_dir=/tmp/x]\n",
        "'out_dir=/tmp/x': allowed: any key but",
    ),
    "unknown_lever.yaml": (
        "configurations:\n  - name: plain\n    overrides: [engine=plain, engine.no_such=1]\n",
        "configuration 'plain': Could not override 'engine.no_such'",
    ),
    "bad_value.yaml": (
        "configurations:\n  - name: plain\n    overrides: [engine=plain, engine.kernels=ligr]\n",
        "configuration 'plain': engine.kernels='ligr': allowed: none, liger",
    ),
}


@pytest.mark.parametrize("name", [*BAD_FILES, "missing.yaml"])
def test_a_bad_benchmark_file_exits_2_with_one_line_naming_it(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    text, expected = BAD_FILES.get(name, (None, "no such file"))
    if text is not None:
        path.write_text(text)
    proc = _bench(str(path), "--out", str(tmp_path / "records"))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and expected in lines[0]
    assert not (tmp_path / "records").exists()  # refused before any run folder


def test_the_committed_benchmark_files_compose() -> None:
    for name in ("presets", "shapes", "levers"):
        proc = _bench(f"benchmarks/{name}.yaml", "--check")
        assert proc.returncode == 0, proc.stderr


def test_only_adds_the_references_in_file_order() -> None:
    bench = load_bench_file(REPO / "benchmarks" / "levers.yaml")
    assert [c.name for c in bench.select(["fast_host6_cap14.2"])] == [
        "plain", "fast", "fast_host6", "fast_host6_cap14.2",
    ]  # fmt: skip
    assert bench.select(None) == bench.configurations


FAKE_TRIAL = """
import json, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:])
with open(args["log"], "a") as f:
    f.write(args["lora.r"] + "\\n")
if args["lora.r"] != "0":
    rec = json.loads(Path(args["record"]).read_text())
    Path(args["out_dir"], "record.json").write_text(json.dumps(rec))
"""


def test_each_configuration_runs_in_its_own_process_into_an_append_only_run(
    tmp_path: Path,
) -> None:
    """A stand-in for `python -m harness`: the runner's launch, order and layout, no trial."""
    script = tmp_path / "fake_trial.py"
    script.write_text(FAKE_TRIAL)
    record, log = PRESETS[0] / "plain" / "record.json", tmp_path / "order.log"
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(f"""\
        shared: [log={log}, record={record}, train.device=cpu]
        configurations:
          - {{name: plain, overrides: [lora.r=16]}}
          - {{name: r8, overrides: [lora.r=8]}}
          - {{name: broken, overrides: [lora.r=0]}}
        """))  # fmt: skip
    bench = load_bench_file(path)
    launcher = [sys.executable, str(script)]
    run_dir, missing = run_suite(bench, bench.configurations, root=tmp_path, launcher=launcher)
    assert log.read_text().split() == ["16", "8", "0"]  # one process each, in file order
    assert missing == ["broken"]
    assert run_dir.parent == tmp_path / "suite" and run_dir.name.endswith("Z-cpu")
    manifest = json.loads((run_dir / "run.json").read_text())
    assert [(c["name"], c["reference"]) for c in manifest["configurations"]] == [
        ("plain", None), ("r8", "plain"), ("broken", "plain"),
    ]  # fmt: skip
    assert sorted(p.name for p in run_dir.iterdir()) == ["plain", "r8", "run.json"]
    copied = json.loads((run_dir / "r8" / "record.json").read_text())
    assert copied == json.loads(record.read_text())


def test_the_runner_runs_real_trials_on_the_cpu(tmp_path: Path) -> None:
    """`python -m harness.bench` end to end: two tiny trials, each its own process."""
    path = tmp_path / "tiny.yaml"
    shared = [*TINY, "train.max_steps=2", "train.device=cpu"]
    path.write_text(
        json.dumps(
            {
                "shared": shared,
                "configurations": [
                    {"name": "plain", "overrides": ["engine=plain"]},
                    {"name": "plain_r4", "overrides": ["engine=plain", "lora.r=4"]},
                    {"name": "loop", "overrides": [], "runner": "loop"},
                ],
            }
        )  # fmt: skip
    )
    proc = _bench(str(path), "--out", str(tmp_path / "records"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = (tmp_path / "records" / "tiny").iterdir()
    for name, r in (("plain", 16), ("plain_r4", 4)):
        rec = json.loads((run_dir / name / "record.json").read_text())
        assert rec["status"] == "success" and rec["config"]["lora"]["r"] == r
    assert "| `plain_r4` | cpu |" in proc.stdout  # the suite's table, printed
    loop = json.loads((run_dir / "loop" / "record.json").read_text())  # the hand-written loop
    assert loop["status"] == "success" and loop["runner"] == "loop"
    assert loop["throughput"]["timed_steps"] == 1 and loop["throughput"]["padded_tokens_per_s"] > 0
    assert len(loop["loss"]["curve"]) == 2 and loop["params"]["trainable"] > 0
    manifest = json.loads((run_dir / "run.json").read_text())
    assert [c["runner"] for c in manifest["configurations"]] == ["trial", "trial", "loop"]
