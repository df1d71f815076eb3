"""Hydra `-m` grids through the real entry point: the summary CSV and table, failures recorded
while the sweep goes on, the failure-rate limit, and the pieces they are built from."""

import pandas as pd
import pytest
from conftest import TINY, load_json, run_harness

from harness.analysis.frame import override_items
from harness.sweep.callbacks import sweep_keys
from harness.sweep.grid import FailureLimit, summary_frame, swept_keys

NO_REPORT = "hydra.callbacks.sweep_summary.report=false"


def test_rank_grid_on_the_embedded_model_writes_its_summary(tmp_path):
    """A rank grid on the REAL 4-bit SmolLM2 path: 3 trials, one summary row each."""
    sweep = tmp_path / "sweep"
    proc = run_harness(
        [
            "-m",
            "lora.r=4,16,64",
            "train.max_steps=2",
            "train.batch_size=2",
            "data.num_train=16",
            "data.num_heldout=4",
            "data.max_seq_len=64",
            "eval.tasks=[]",
            "train.save_adapter=false",
            "train.timing_warmup_steps=1",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frame = pd.read_csv(sweep / "summary.csv")
    assert list(frame["lora.r"]) == [4, 16, 64] and set(frame["status"]) == {"success"}
    assert frame["params_trainable"].is_monotonic_increasing  # the rank really changed
    assert {"loss_eval", "loss_tokens_per_s", "peak_rss_gib", "time_load_s"} <= set(frame)
    assert frame["loss_eval"].notna().all()
    # trials 2 and 3 swap adapters on the pooled NF4 base instead of reloading it
    assert frame["time_load_s"].iloc[1:].max() < frame["time_load_s"].iloc[0]
    assert "lora.r" in proc.stdout and f"summary: {sweep / 'summary.csv'}" in proc.stdout
    try:
        import harness.report  # noqa: F401
    except ImportError:
        return
    assert (sweep / "report" / "report.html").is_file()


def test_oom_and_nan_trials_are_rows_and_the_grid_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_harness(
        [
            "-m",
            "train.callbacks=[faults.OomAtStep2],[faults.NanAtStep2],[]",
            *TINY,
            "train.max_steps=2",
            f"hydra.sweep.dir={sweep}",
            NO_REPORT,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frame = pd.read_csv(sweep / "summary.csv", keep_default_na=False)  # "nan" is a value here
    assert [c.count("faults.") for c in frame["train.callbacks"]] == [1, 1, 0]
    assert list(frame["status"]) == ["oom", "failed", "success"]
    assert "non-finite" in frame["error"][1] and "out of memory" in frame["error"][0]
    assert load_json(sweep / "0" / "record.json")["oom"]["phase"] == "train"
    assert not (sweep / "report").exists()


def test_failure_rate_limit_stops_a_grid_where_everything_fails(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_harness(
        [
            "-m",
            "lora.r=4,8,16,32",
            *TINY,
            "train.max_steps=2",
            "train.callbacks=[faults.OomAtStep2]",
            f"hydra.sweep.dir={sweep}",
            NO_REPORT,
            "hydra.callbacks.sweep_summary.max_consecutive_failures=2",
        ]
    )
    assert proc.returncode == 3
    assert "stopped by the failure-rate limit: the last 2 trials all failed" in proc.stderr
    frame = pd.read_csv(sweep / "summary.csv")
    assert list(frame["lora.r"]) == [4, 8] and set(frame["status"]) == {"oom"}
    assert not (sweep / "2").exists()


def test_failure_limit_rules():
    limit = FailureLimit(consecutive=3, rate=0.5, min_trials=4)
    assert limit.check(["oom", "failed"]) is None
    assert "last 3" in limit.check(["success", "oom", "failed", "failed"])
    assert limit.check(["failed", "pruned", "failed", "success"]) is None  # 2 of 4: not > 50%
    assert "3 of 5" in limit.check(["failed", "success", "failed", "success", "failed"])
    assert FailureLimit(consecutive=0, rate=1.0).check(["failed"] * 9) is None  # both off


def test_summary_columns_come_from_the_overrides():
    recs = [
        {
            "overrides": ["lora.r=4", "quant=nf4", "train.max_steps=3", "out_dir=/x"],
            "status": "success",
            "loss": {"eval": 1.5},
            "choices": {"quant": "nf4"},
            "_dir": "a",
        },
        {
            "overrides": ["lora.r=16", "train.max_steps=3"],
            "status": "oom",
            "error": "OOM",
            "choices": {"quant": "fp4"},
            "config": {"lora": {"r": 16}},
            "_dir": "b",
        },
    ]
    assert override_items(recs[0]["overrides"]) == {
        "lora.r": "4",
        "quant": "nf4",
        "train.max_steps": "3",
    }
    assert swept_keys(recs) == ["lora.r", "quant"]  # constant keys are not columns
    frame = summary_frame(recs)
    assert list(frame["quant"]) == ["nf4", "fp4"]  # a default choice read from the record
    assert list(frame["status"]) == ["success", "oom"] and frame["loss_eval"][0] == 1.5
    assert list(frame["record_dir"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["lora.r=4,16,64", "train.max_steps=3"], ["lora.r"]),
        (["quant=nf4,fp4", "quant.double_quant=true,false"], ["quant", "quant.double_quant"]),
        (["+x=1,2", "lora.r=range(4,9,4)"], ["x", "lora.r"]),
    ],
)
def test_sweep_keys(overrides, keys):
    assert sweep_keys(overrides) == keys


def test_pooled_base_trains_like_a_fresh_one(tmp_path):
    """Job 2 reuses job 1's NF4 base after its held-out evals: it must train exactly like job 1,
    from the same adapter init (seeded per trial, not by whatever ran before in the process).
    The embedded model: bitsandbytes' CPU repack at eval, which corrupted later training,
    applies to its shapes (not to tiny-llama's)."""
    sweep = tmp_path / "sweep"
    proc = run_harness(
        [
            "-m",
            "lora.dropout=0.0,0.0",
            "train.max_steps=2",
            "train.batch_size=2",
            "data.num_train=8",
            "data.num_heldout=2",
            "data.max_seq_len=64",
            "eval.tasks=[]",
            "train.save_adapter=false",
            "train.eval_every_steps=1",
            f"hydra.sweep.dir={sweep}",
            NO_REPORT,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh, pooled = (load_json(sweep / str(i) / "record.json") for i in (0, 1))
    assert pooled["timings_s"]["load"] < fresh["timings_s"]["load"]  # it really was reused
    assert fresh["pool"] == {"base_reused": False, "data_reused": False}
    assert pooled["pool"] == {"base_reused": True, "data_reused": True}  # TRL's packed rows too
    curves = [[p["loss"] for p in r["loss"]["curve"] + r["loss"]["eval_curve"]]
              for r in (fresh, pooled)]  # fmt: skip
    assert len(curves[0]) >= 4 and curves[1] == pytest.approx(curves[0], rel=1e-4)


def test_joblib_launcher_grid_writes_the_same_summary(tmp_path):
    """`hydra/launcher=joblib` (pip install hydra-joblib-launcher): jobs in worker processes,
    the summary still written once by the parent."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = run_harness(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "lora.r=4,8",
            *TINY,
            "train.max_steps=2",
            f"hydra.sweep.dir={sweep}",
            NO_REPORT,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frame = pd.read_csv(sweep / "summary.csv")
    assert list(frame["lora.r"]) == [4, 8] and set(frame["status"]) == {"success"}


def test_pool_memo_stays_bounded():
    from harness.sweep.pool import BasePool

    pool = BasePool()
    for k in range(7):
        with pool.lease("base") as lease:
            lease.memo.setdefault(("rows", k), [k])
    assert len(pool.memo) == 4 and ("rows", 0) not in pool.memo


def test_pool_hands_a_base_only_to_a_trial_of_the_same_engine():
    """The engine's levers are modules put in place when the model is built: a base built for
    one engine goes only to a trial of the same engine (nothing is undone); another engine's
    trial gets None (it loads its own) and the old base is let go first."""
    from harness.config.engine import EngineConfig
    from harness.config.schema import ModelConfig, QuantConfig
    from harness.sweep.pool import BasePool

    pool, m, q = BasePool(), ModelConfig(), QuantConfig()
    plain, fast = EngineConfig(), EngineConfig(name="fast", frozen_dtype="bf16")
    with pool.lease(pool.key(m, q, "cpu", plain)) as lease:
        assert lease.base is None
    pool.entry = (pool.key(m, q, "cpu", plain), "base-for-plain")
    with pool.lease(pool.key(m, q, "cpu", fast)) as lease:
        assert lease.base is None and pool.entry is None
    pool.entry = (pool.key(m, q, "cpu", plain), "base-for-plain")
    with pool.lease(pool.key(m, q, "cpu", plain)) as lease:
        assert lease.base == "base-for-plain" and pool.hits == 1
    assert BasePool(enabled=False).enabled is False


def test_a_finished_trial_leaves_no_module_of_its_model_alive(tmp_path):
    """HF's Trainer registers every nn.Embedding with bitsandbytes' process-wide optimizer manager
    (8-bit optimizers: 32-bit states for embeddings); the manager held them for the life of the
    process, so each trial that loaded its own base left its embedding table behind (H200: 1.96
    GiB at the peak of every later trial in a sweep process). The 4-bit tiny model, real 8-bit
    optimizer: once the trial and its pooled base are gone, so is its embedding."""
    import gc
    import weakref

    import torch
    from conftest import compose_cfg

    from harness.config.schema import to_trial_config
    from harness.sweep.pool import BasePool
    from harness.trial.pipeline import run_trial

    pool = BasePool()
    cfg = to_trial_config(compose_cfg([*TINY, "train.device=cpu", "optim=adamw_8bit"]))
    rec = run_trial(cfg, tmp_path / "a", pool=pool)
    assert rec["status"] == "success" and rec["optimizer"]["used"] == "adamw_8bit"
    base = pool.entry[1]
    tables = [weakref.ref(m) for m in base.modules() if isinstance(m, torch.nn.Embedding)]
    assert tables
    del base
    pool.entry = None  # what the next trial's lease does for another base
    gc.collect()
    assert [ref() for ref in tables] == [None] * len(tables)


def test_a_replicate_axis_is_aggregated_per_setting(tmp_path):
    """`-m lora.r=4,8 train.seed=0,1`: four trials, two settings of two seeds each; the sweep
    writes and prints each setting's mean, spread and n on its ranking metric (held-out loss)."""
    sweep = tmp_path / "sweep"
    proc = run_harness(
        ["-m", "lora.r=4,8", "train.seed=0,1", *TINY, "train.max_steps=2",
         f"hydra.sweep.dir={sweep}", NO_REPORT]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pd.read_csv(sweep / "summary.csv")
    settings = pd.read_csv(sweep / "settings.csv")
    assert len(trials) == 4 and list(settings["n"]) == [2, 2]
    for r, row in zip((4, 8), settings.itertuples(), strict=True):
        losses = trials.loc[trials["lora.r"] == r, "loss_eval"]
        assert row.mean == pytest.approx(losses.mean()) and row.sd == pytest.approx(losses.std())
        assert row.lo < row.mean < row.hi
    assert "per setting, held-out loss over seeds" in proc.stdout
