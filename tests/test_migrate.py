"""Records and command lines from before the engine group still rerun as they ran."""

import json
from pathlib import Path

from conftest import TINY, compose_cfg, run_harness

from harness.analysis.pin import experiment_yaml, hydra_overrides
from harness.config.migrate import (
    effective_engine,
    migrate_config,
    migrate_override,
    migrate_overrides,
    migrate_record,
)
from harness.config.schema import to_trial_config

RECORDS = Path(__file__).parent / "fixtures" / "records"
OLD = {
    "config": {
        "train": {
            "lr": 1e-4,
            "batch_size": 4,
            "kernels": "liger",
            "lora_kernel": "fused",
            "checkpointing": "offload",
            "checkpoint_fraction": 0.5,
            "expandable_segments": True,
            "frozen_dtype": "bf16",
        },
        "lora": {"r": 16},
    },  # fmt: skip
    "choices": {"engine": "lean", "train": "default"},
    "overrides": ["engine=lean", "train.kernels=liger", "train.expandable_segments=true"],
    "levers": {"num_layers": 32, "checkpointed_layers": 32},
}


def test_old_override_keys_become_engine_keys_and_dropped_keys_go():
    assert migrate_override("train.kernels=liger") == "engine.kernels=liger"
    assert migrate_override("+train.gc_freeze=true") == "+engine.gc_freeze=true"
    assert migrate_override("train.lr=1e-4") == "train.lr=1e-4"  # a train key stays
    assert migrate_override("train.expandable_segments=true") is None
    assert migrate_overrides(OLD["overrides"]) == ["engine=lean", "engine.kernels=liger"]


def test_an_old_record_config_gets_its_engine_with_the_values_its_code_ran():
    config = migrate_config(OLD["config"], OLD["choices"])
    assert config["train"] == {"lr": 1e-4, "batch_size": 4}
    engine = config["engine"]
    assert engine["name"] == "lean" and engine["kernels"] == "liger"
    assert engine["kept_layers"] == "spread" and engine["trim_recompute"] is False  # as it ran
    assert "expandable_segments" not in engine
    assert OLD["config"]["train"]["kernels"] == "liger"  # the record itself is never edited
    # offload's old default fraction 0.5 recomputed every layer: the fraction as it ran
    assert effective_engine(OLD)["checkpoint_fraction"] == 1.0
    to_trial_config(migrate_record(OLD)["config"])  # valid in today's schema


def test_a_current_record_passes_through_unchanged():
    cfg = to_trial_config(compose_cfg(["engine=fast"]))
    from dataclasses import asdict

    config = asdict(cfg)
    assert migrate_config(config) == config


def test_rerun_lines_and_pins_of_committed_old_records_compose_today():
    """pick's rerun lines and pinned experiments from records written with train.<lever> keys
    (and a train.compile key since removed) compose under today's schema."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    tried = 0
    for path in sorted(RECORDS.glob("*/*/record.json")):
        rec = json.loads(path.read_text())
        choices = {g: c for g, c in rec.get("choices", {}).items() if g != "experiment"}
        if not all((conf / g / f"{c}.yaml").is_file() for g, c in choices.items()):
            continue  # a group option since removed: not a key migration
        tried += 1
        line = hydra_overrides(rec, grid_keys=["train.kernels", "lora.r"])
        assert not any(item.startswith(("train.kernels", "train.compile")) for item in line)
        to_trial_config(compose_cfg(line))
        text = experiment_yaml(rec, name="old", command="pick")
        assert "engine:" in text and "expandable_segments" not in text
    assert tried >= 4


def test_an_old_key_on_the_command_line_runs_as_todays_key(tmp_path):
    proc = run_harness([*TINY, "train.max_steps=1", "train.gc_freeze=true", f"out_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "engine levers are engine.* keys now" in proc.stderr
    rec = json.loads((tmp_path / "record.json").read_text())
    assert (
        rec["config"]["engine"]["gc_freeze"] is True and "gc_freeze" not in rec["config"]["train"]
    )


def test_a_record_with_an_engine_group_takes_the_levers_it_predates_as_they_ran():
    """A record written with the engine group but before engine.cuda_graphs ran without graphs,
    whatever its preset sets today; the keys it has stay as they are."""
    from harness.config.migrate import migrate_config

    old = {"engine": {"name": "fast", "kernels": "liger", "checkpoint_fraction": 0.8125}}
    engine = migrate_config(old)["engine"]
    assert engine["cuda_graphs"] is False
    assert engine["kernels"] == "liger" and engine["checkpoint_fraction"] == 0.8125
