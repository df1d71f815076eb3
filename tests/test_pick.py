"""pick: the right row on a crafted table, clean refusals, overrides and pinned experiments."""

import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml

from harness.analysis.decide import decide, pick_measured
from harness.analysis.frame import records_frame
from harness.analysis.pick import main
from harness.analysis.pin import experiment_yaml, hydra_overrides, override_value, write_experiment
from harness.analysis.sources import load_records

RECORDS = Path(__file__).parent / "fixtures" / "records"
H100 = RECORDS / "h100-llama3-8b"
CONF = Path(__file__).resolve().parents[1] / "conf"


def crafted(rows: list[tuple]) -> list[dict]:
    """Records with (name, status, peak GiB, score, tokens/s) and nothing else."""
    return [
        {"trial_id": n, "status": st, "peak_vram_reserved_gib": peak, "score": score,
         "throughput": {"loss_tokens_per_s": tps}, "config": {"lora": {"r": i}},
         "overrides": [f"lora.r={i}"]}
        for i, (n, st, peak, score, tps) in enumerate(rows)
    ]  # fmt: skip


TABLE = crafted([
    ("big-best", "success", 30.0, 0.90, 1000),
    ("edge-out", "success", 21.9, 0.80, 1500),  # 21.9 * 1.1 = 24.09 > 24
    ("edge-in", "success", 21.8, 0.70, 1200),  # 21.8 * 1.1 = 23.98 <= 24
    ("small-fast", "success", 12.0, 0.60, 3000),
    ("tiny", "success", 8.0, 0.50, 900),
    ("oom", "oom", 23.0, None, None),
    ("failed", "failed", None, None, None),
    ("cpu", "success", None, 0.95, 300),  # no VRAM figure: never picked for a budget
])  # fmt: skip


@pytest.mark.parametrize(
    ("objective", "budget", "expected"),
    [("score", 24, "edge-in"), ("throughput", 24, "small-fast"), ("memory", 24, "tiny"),
     ("score", 80, "big-best"), ("score", 13.3, "small-fast"), ("score", 8.8, "tiny")],
)  # fmt: skip
def test_pick_returns_the_right_row(objective: str, budget: float, expected: str) -> None:
    frame = records_frame(TABLE)
    row = pick_measured(frame, budget, objective=objective, margin=0.10)
    assert row is not None and row["trial"] == expected


def test_pick_refuses_when_nothing_fits() -> None:
    frame = records_frame(TABLE)
    assert pick_measured(frame, 8.7, margin=0.10) is None  # 8.0 * 1.1 = 8.8
    # No model shape in the crafted records: nothing can be predicted either.
    assert decide(load_records(TABLE), frame, 8.7) is None


def test_cli_measured_pick(capsys: pytest.CaptureFixture) -> None:
    assert main(["--budget-gib", "24", str(H100)]) == 0
    out = capsys.readouterr().out
    # t11 (liger, 15.4 GiB, score 0.572) and t10 (13.3 GiB, 0.570) are within noise (stderrs
    # ~0.012 each): the cheaper t10 is picked, and the line says why; t00 needs 28.8 GiB.
    assert "Ranked by score (higher is better; the lm-eval tasks the sweep named)" in out
    assert "MEASURED: nf4 dq r16 lora b1 ckpt:full no-liger  [t10]" in out
    assert "are within noise (nf4 dq r16 lora b4 ckpt:full liger - nf4 dq r16 lora b1" in out
    assert "picking nf4 dq r16 lora b1 ckpt:full no-liger: 2.1 GiB less peak memory" in out
    assert "score 0.570 (95% CI 0.546-0.594)" in out
    assert "lora.r=16" in out and "quant=nf4" in out and "train.batch_size=1" in out


def test_cli_nothing_fits_names_the_closest(capsys: pytest.CaptureFixture) -> None:
    assert main(["--budget-gib", "4", str(H100)]) == 1
    out = capsys.readouterr().out
    assert "No measured setting fits" in out and "closest:" in out and "[t10]" in out
    assert "NOTHING FITS 4.0 GiB" in out and "smallest predicted" in out
    assert "Traceback" not in out


def test_cli_predicts_when_only_smaller_variants_fit(capsys: pytest.CaptureFixture) -> None:
    # Nothing measured fits 12 GiB (t10: 13.3 GiB + 10%); t11 (liger) at batch 1 is predicted to.
    assert main(["--budget-gib", "12", str(H100)]) == 0
    out = capsys.readouterr().out
    assert "PREDICTED (memory model, not measured)" in out
    assert "train.batch_size=1" in out and "held-out error" in out


def test_cli_cpu_records_cannot_be_picked_by_vram(capsys: pytest.CaptureFixture) -> None:
    assert main(["--budget-gib", "24", str(RECORDS / "cpu-smollm2")]) == 0
    out = capsys.readouterr().out
    assert "none of the 4 trials has a CUDA peak" in out and "PREDICTED" in out


def test_cli_model_never_run_is_predicted(capsys: pytest.CaptureFixture) -> None:
    assert main(["--budget-gib", "80", str(H100), "--model", "llama3-70b"]) == 0
    out = capsys.readouterr().out
    assert "PREDICTED" in out and "for model llama3-70b" in out and "model=llama3-70b" in out
    # 70B QLoRA as loaded here needs ~50 GiB + 10% even at batch 1 with liger: not 48 GiB.
    assert main(["--budget-gib", "48", str(H100), "--model", "llama3-70b"]) == 1


def test_cli_seeds_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["--table"]) == 0
    out = capsys.readouterr().out
    for size in ("| 1B", "| 3B", "| 7-8B", "| 13B", "| 33B", "| 70B"):
        assert size in out
    assert "80 GB |" in out and "full FT / LoRA / QLoRA" in out
    row_8b = next(line for line in out.splitlines() if line.startswith("| 7-8B"))
    cells = [c.strip() for c in row_8b.split("|")[4:-1]]  # 8, 12, 16, 24, 40, 48, 80 GB
    assert cells[1] == "✗ ✗ ✗"  # 12 GB: QLoRA of an 8B needs ~13.8 GiB (+10%) as loaded here
    assert cells[2] == "✗ ✗ ✓"  # 16 GB: QLoRA only
    assert cells[-1] == "✗ ✓ ✓"  # 80 GB: full FT of 8B needs ~124 GiB at 16 B/param


def test_write_experiment_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    args = ["--budget-gib", "24", str(H100), "--write-experiment", "--name", "e24",
            "--conf-dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    path = tmp_path / "experiment" / "e24.yaml"
    text = path.read_text()
    assert text.startswith("# @package _global_\n# Pinned by `python -m harness.pick")
    assert "rerun: python -m harness experiment=e24" in text
    body = yaml.safe_load(text)
    assert body["defaults"][:2] == [{"override /model": "llama3-8b"}, {"override /quant": "nf4"}]
    assert body["lora"]["r"] == 16 and body["train"]["batch_size"] == 1  # t10: the tie's cheapest
    path.write_text("mine")
    assert main(args) == 2 and path.read_text() == "mine"
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0 and path.read_text() == text


def test_overrides_spell_grid_and_quote() -> None:
    rec = load_records(H100 / "t02")[0]
    ov = hydra_overrides(rec, ["lora.r", "quant.double_quant"], {"train.batch_size": 1})
    assert ov[:2] == ["model=llama3-8b", "quant=fp4"]
    assert {"lora.r=16", "quant.double_quant=true", "train.batch_size=1"} <= set(ov)
    assert override_value([1, "a b"]) == "[1,'a b']" and override_value(None) == "null"


@pytest.mark.skipif(
    not (CONF / "config.yaml").is_file() or "experiment" not in (CONF / "config.yaml").read_text(),
    reason="conf/config.yaml with an `optional experiment` default not present yet",
)
def test_pinned_experiment_composes_to_the_same_config(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from harness.config.schema import register_configs, to_trial_config

    register_configs()
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf, ignore=shutil.ignore_patterns("experiment"))
    overrides = ["quant=fp4", "lora.r=8", "train.batch_size=2"]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        choices = dict(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
        want = asdict(to_trial_config(cfg))
        rec = {"config": want, "choices": choices, "overrides": overrides, "_path": "r.json"}
        write_experiment(experiment_yaml(rec, name="pinned", command="pick"), conf, "pinned")
        got = asdict(to_trial_config(compose("config", overrides=["experiment=pinned"])))
        assert got == want
        # a record written before a lever existed is pinned as its code ran, not as the preset
        # it named now sets that lever (engine=fast: kept_layers=top, gc_freeze, causal_padding,
        # cuda_graphs)
        fast = compose("config", overrides=["engine=fast"], return_hydra_config=True)
        old = dict(choices, engine=dict(fast.hydra.runtime.choices)["engine"])
        with open_dict(fast):
            del fast["hydra"]
        old_cfg = asdict(to_trial_config(fast))
        old_cfg["train"].update(old_cfg.pop("engine"))  # engine levers under train, as then
        for key in ("causal_padding", "kept_layers", "gc_freeze", "cuda_graphs", "name"):
            del old_cfg["train"][key]
        rec = {"config": old_cfg, "choices": old, "overrides": ["engine=fast"], "_path": "o.json"}
        write_experiment(experiment_yaml(rec, name="older", command="pick"), conf, "older")
        got = to_trial_config(compose("config", overrides=["experiment=older"])).engine
    assert (got.causal_padding, got.kept_layers, got.gc_freeze) == (False, "spread", False)
    assert not got.cuda_graphs
    assert got.kernels == "liger" and got.checkpoint_fraction == fast.engine.checkpoint_fraction


def _llama3_8b_record(train: dict) -> dict:
    """A successful llama3-8b b4-shaped record with this train config (nf4, seq 2048)."""
    from conftest import llama3_8b_record_model

    return {
        "trial_id": "t",
        "status": "success",
        "score": 0.5,
        "model": llama3_8b_record_model(),
        "throughput": {"loss_tokens_per_s": 100.0},
        "config": {"train": train, "quant": {"type": "nf4"}, "data": {"max_seq_len": 2048}},
    }


def test_a_prediction_that_exceeds_the_records_memory_cap_is_not_picked() -> None:
    """Under train.memory_cap_gib, tensors past the cap are an OOM whatever the budget."""
    from harness.analysis.decide import pick_predicted

    train = {"checkpointing": "full", "batch_size": 1, "memory_cap_gib": None}
    rec = _llama3_8b_record(train)
    free = pick_predicted([rec], 80.0)
    assert free is not None and free.kind == "predicted"
    train["memory_cap_gib"] = free.peak_gib + 5.0  # room: the same answer
    assert pick_predicted([rec], 80.0).peak_gib == pytest.approx(free.peak_gib)
    train["memory_cap_gib"] = 2.0  # below the 4-bit weights alone: every variant would OOM
    assert pick_predicted([rec], 80.0) is None


def test_spread_kept_layers_get_a_top_variant_that_fits_where_they_do_not() -> None:
    """Slim kept layers hold less than one layer's recompute working set, so spread they peak in
    backward (the kept layers below the first recompute, plus it) and at the top at the loss:
    a budget between the two is met by the same setting with train.kept_layers=top, the same math
    and speed, before any slower variant (full recompute, a smaller batch)."""
    from harness.analysis.decide import need_gib, pick_predicted
    from harness.memory.model import predict_peak_gib, setting_from_record, shape_from_record

    train = {"checkpointing": "selective", "checkpoint_fraction": 0.8125, "batch_size": 4,
             "slim_activations": True, "lora_kernel": "fused", "kernels": "liger",
             "frozen_dtype": "bf16"}  # fmt: skip
    rec = _llama3_8b_record(train)
    shape, setting = shape_from_record(rec["model"]), setting_from_record(rec)
    spread = predict_peak_gib(shape, setting)["total"]
    top = predict_peak_gib(shape, replace(setting, kept_layers="top"))["total"]
    assert top < spread
    budget = need_gib((top + spread) / 2, 0.10)
    choice = pick_predicted([rec], budget)
    assert choice is not None and choice.changes == {"engine.kept_layers": "top"}
    assert choice.peak_gib == pytest.approx(top)
    train["kept_layers"] = "top"  # already at the top: no such variant, the next cheaper one
    assert pick_predicted([rec], budget).changes != {"engine.kept_layers": "top"}
