"""train.profile_steps: the profiler's window in a real trial, the figures it derives from a trace,
its exclusion from tokens/s, its settings' checks and its benchmark-table columns."""

import gzip
import json
import shutil

import pytest
from conftest import REPO, TINY, compose_cfg, load_json, run_harness

from harness.benchmark.table import render_suite
from harness.config.schema import to_trial_config
from harness.errors import ConfigError
from harness.trial.measure import throughput
from harness.trial.profile import CUDA_FIELDS, TRACE_NAME, busy_us, cpu_ops, summarize


def test_a_cpu_trial_records_its_profiled_steps_and_leaves_them_untimed(tmp_path):
    proc = run_harness([*TINY, "train.max_steps=4", "train.profile_steps=2", f"out_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = load_json(tmp_path / "record.json")
    assert rec["status"] == "success"
    prof = rec["profile"]
    assert (prof["first_step"], prof["steps"], prof["timed"]) == (2, 2, False)
    assert prof["wall_ms_per_step"] > 0 and prof["cpu_ops_per_step"] > 0
    assert all(prof[k] is None for k in CUDA_FIELDS)  # no device timeline: not measured, not 0
    assert prof["top_kernels"] and all(k["ms_per_step"] > 0 for k in prof["top_kernels"])
    assert any(k["name"].startswith("aten::") for k in prof["top_kernels"])  # CPU ops
    tp = rec["throughput"]  # step 1 warms up, steps 2-3 are profiled, step 4 alone is timed
    assert (tp["warmup_steps"], tp["profiled_steps"], tp["timed_steps"]) == (1, 2, 1)
    assert tp["step_time_median_s"] == pytest.approx(tp["step_times_s"][3], abs=1e-4)
    assert prof["trace"] == rec["artifacts"]["profile_trace"] == TRACE_NAME
    with gzip.open(tmp_path / TRACE_NAME, "rt") as f:
        events = json.load(f)["traceEvents"]
    assert any(e.get("cat") == "cpu_op" for e in events)


def test_busy_time_is_the_union_of_overlapping_intervals():
    # [0, 15) from two overlapping kernels, [20, 31) from one holding a nested one and one that
    # starts where it ends; an interval inside another adds nothing
    intervals = [(25, 26), (20, 30), (5, 15), (0, 10), (30, 31), (2, 3)]
    assert busy_us(intervals) == 15 + 11
    assert busy_us([]) == 0 and busy_us([(4, 4)]) == 0


def _span(cat, name, ts, dur, tid=1):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}


def test_cpu_ops_nest_by_time_per_thread():
    ops = [
        _span("cpu_op", "aten::linear", 0, 100),
        _span("cpu_op", "aten::addmm", 10, 60),  # inside linear: not top-level
        _span("cpu_op", "aten::relu", 100, 20),  # starts where linear ends: top-level
        _span("cpu_op", "MmBackward0", 0, 50, tid=2),  # another thread: its own tree
        _span("cpu_op", "aten::mm", 5, 40, tid=2),  # under a non-aten node: top-level
    ]
    top_level, table = cpu_ops(ops)
    assert top_level == 3
    assert table["aten::linear"] == [1, 40] and table["aten::addmm"] == [1, 60]
    assert table["MmBackward0"] == [1, 10] and table["aten::mm"] == [1, 40]


def test_cuda_figures_from_a_trace():
    """Two steps: 3 kernels (two overlap on two streams), a memcpy, launches of each kind."""
    events = [
        _span("kernel", "gemm", 1000, 300, tid=7),
        _span("kernel", "gemm", 1200, 300, tid=8),  # overlaps the first: [1000, 1500) busy
        _span("kernel", "relu", 3000, 100, tid=7),
        _span("gpu_memcpy", "Memcpy HtoD", 4000, 100, tid=7),
        _span("cuda_runtime", "cudaLaunchKernel", 900, 5),
        _span("cuda_runtime", "cudaLaunchKernelExC", 950, 5),
        _span("cuda_driver", "cuLaunchKernel", 960, 5),
        _span("cuda_runtime", "cudaGraphLaunch", 970, 5),
        _span("cuda_runtime", "cudaMemcpyAsync", 980, 5),  # not a launch
        _span("cpu_op", "aten::linear", 800, 200),
        _span("cpu_op", "aten::addmm", 850, 100),
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0},
    ]
    out = summarize(events, steps=2, wall_s=0.004, cuda=True)
    assert out["wall_ms_per_step"] == 2.0
    assert out["gpu_busy_ms_per_step"] == pytest.approx((500 + 100 + 100) / 1e3 / 2)
    assert out["gpu_busy_fraction"] == pytest.approx(0.35 / 2.0)
    assert out["kernel_launches_per_step"] == 1.5 and out["cpu_ops_per_step"] == 0.5
    assert out["cuda_runtime_launch_calls_per_step"] == 1.5
    assert out["graph_launches_per_step"] == 0.5
    gemm, relu = out["top_kernels"]  # device kernels only, by time
    assert gemm == {"name": "gemm", "calls_per_step": 1.0, "ms_per_step": 0.3}
    assert relu["name"] == "relu"


def test_profiled_steps_are_left_out_of_tokens_per_s():
    times, ones = [9.0, 5.0, 5.0, 1.0, 3.0], [1] * 5
    tp = throughput(times, ones, ones, ones, warmup=1, profiled=2)
    assert (tp["warmup_steps"], tp["profiled_steps"], tp["timed_steps"]) == (1, 2, 2)
    assert tp["step_time_median_s"] == 2.0
    # nothing after the window: the last (profiled) step is timed, and the record says so
    tp = throughput(times[:3], ones, ones, ones, warmup=1, profiled=2)
    assert (tp["profiled_steps"], tp["timed_steps"]) == (1, 1)
    assert "profiled_steps" not in throughput(times, ones, ones, ones, warmup=1)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["train.profile_steps=-1"], "train.profile_steps=-1: must be an integer >= 0 (0 = off)"),
        (["train.profile_steps=1.5"], "train.profile_steps=1.5: must be an integer"),
        (
            ["train.max_steps=4", "train.timing_warmup_steps=2", "train.profile_steps=3"],
            "train.profile_steps=3: at most 2: the steps train.max_steps=4 leaves after "
            "train.timing_warmup_steps=2",
        ),
    ],
)
def test_bad_profile_steps_exit_2_with_one_line(overrides, needle, tmp_path):
    proc = run_harness([*overrides, f"out_dir={tmp_path / 'trial'}"], timeout=300)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "trial").exists()


def test_profile_steps_may_take_every_step_after_the_warm_up():
    cfg = to_trial_config(compose_cfg(["train.max_steps=4", "train.profile_steps=2"]))
    assert cfg.train.profile_steps == 2
    with pytest.raises(ConfigError, match="at most 2"):
        to_trial_config(compose_cfg(["train.max_steps=4", "train.profile_steps=3"]))


def test_the_table_gains_profile_columns_only_where_a_record_has_a_profile(tmp_path):
    src = sorted((REPO / "benchmarks" / "records" / "presets").iterdir())[0]
    run = tmp_path / "presets" / src.name
    manifest = json.loads((src / "run.json").read_text())
    manifest["configurations"] = [c for c in manifest["configurations"]
                                  if c["name"] in ("plain", "fast")]  # fmt: skip
    for name in ("plain", "fast"):
        (run / name).mkdir(parents=True)
        shutil.copyfile(src / name / "record.json", run / name / "record.json")
    (run / "run.json").write_text(json.dumps(manifest))
    before = render_suite(tmp_path, "presets")
    assert "GPU busy" not in before
    rec = load_json(run / "fast" / "record.json")
    rec["profile"] = {"gpu_busy_fraction": 0.4567, "cuda_runtime_launch_calls_per_step": 1203.6,
                      "graph_launches_per_step": 2.0}  # fmt: skip
    (run / "fast" / "record.json").write_text(json.dumps(rec))
    lines = render_suite(tmp_path, "presets").splitlines()
    assert lines[0].endswith("| GPU busy | launches/step |")
    rows = {r.split(" | ")[1]: r for r in lines[2:]}
    assert rows["`fast`"].endswith("| 46% | 1,206 |") and rows["`plain`"].endswith("| - | - |")
    assert [r.rsplit(" | ", 2)[0] for r in lines[2:]] == [
        r.removesuffix(" |") for r in before.splitlines()[2:]
    ]  # the other columns unchanged


def test_help_describes_profile_steps():
    proc = run_harness(["--help", "train"])
    assert proc.returncode == 0
    line = next(x for x in proc.stdout.splitlines() if "train.profile_steps" in x)
    assert "an integer >= 0 (0 = off)" in line and "0" in line.split()
    assert "torch.profiler" in proc.stdout
