"""Every group option composes and validates; every bad input is refused early and clearly."""

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_cfg, run_harness

from harness.config.schema import to_trial_config
from harness.errors import ConfigError
from harness.trial.preflight import check_quant
from harness.trial.train import choose_optimizer

NEEDS_PATH = {"local": "/tmp", "gguf": "/tmp/x.gguf", "hub": "org/model", "alpaca": "/tmp/a.json"}


def group_options() -> list[tuple[str, str]]:
    return [
        (g.name, f.stem)
        for g in sorted((REPO / "conf").iterdir())
        if g.is_dir() and g.name != "experiment"
        for f in sorted(g.glob("*.yaml"))
    ]


@pytest.mark.parametrize("group,option", group_options())
def test_every_group_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if option in NEEDS_PATH:
        overrides.append(f"{group}.path={NEEDS_PATH[option]}")
    cfg = to_trial_config(compose_cfg(overrides))
    assert getattr(cfg, group if group != "engine" else "train") is not None  # engine sets train.*
    header = (REPO / "conf" / group / f"{option}.yaml").read_text().splitlines()[0]
    assert header.startswith("#"), "every YAML opens with a header comment"


def test_defaults_are_the_seeds_recipe():
    cfg = to_trial_config(compose_cfg())
    assert (cfg.quant.type, cfg.quant.double_quant, cfg.quant.compute_dtype) == (
        "nf4",
        True,
        "bf16",
    )
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32.0, 0.05)
    assert cfg.lora.targets == "all-linear" and cfg.optim.name == "paged_adamw_8bit"
    assert cfg.model.source == "embedded" and cfg.data.source == "embedded"


def test_explicit_target_list_and_variants_compose():
    cfg = to_trial_config(compose_cfg(["lora.targets=[q_proj,v_proj]", "lora.variant=dora+rslora"]))
    assert cfg.lora.targets == ["q_proj", "v_proj"] and cfg.lora.variant == "dora+rslora"


BAD = [
    (["quant=nf5"], "quant"),
    (["lora.r=0"], "lora.r=0"),
    (["lora.alpha=0"], "lora.alpha=0"),
    (["lora.dropout=1.0"], "lora.dropout=1.0"),
    (["lora.targets=[q_proj,nope_proj]"], "lora.targets='nope_proj'"),
    (["lora.variant=qlora"], "lora.variant='qlora'"),
    (["data.max_seq_len=0"], "data.max_seq_len=0"),
    (["train.max_steps=0"], "train.max_steps=0"),
    (
        ["train.device=cuda"] if not torch.cuda.is_available() else ["train.device=tpu"],
        "train.device",
    ),
    (["data=alpaca", "data.path=/nonexistent/alpaca.json"], "/nonexistent/alpaca.json"),
    (["model=local", "model.path=/nonexistent/model"], "model.path='/nonexistent/model'"),
    (["optim=adamw_torch", "optim.name=lion"], "optim.name='lion'"),
    (["engine.host_layers=2"], "engine.host_layers=2"),  # full recompute: none to take
    (["engine.checkpointing=selective", "engine.host_layers=99"], "at most the 15 of 30 layers"),
    (["engine.trim_recompute=true"], "engine.trim_recompute=True"),  # needs lora_kernel=fused
    (["train.callbacks=[nope.Nope]"], "train.callbacks='nope.Nope'"),
    (["train.lr=inf"], "train.lr=inf"),
    (["eval.num_fewshot=-1"], "eval.num_fewshot=-1"),
    (["data.max_seq_len=4"], "data.max_seq_len=4: an integer >= 64"),
    (["model=tiny-llama", "eval.tasks=[nope]"], "eval.tasks='nope'"),  # random weights too
]


@pytest.mark.parametrize("overrides,needle", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_is_refused_before_loading(overrides, needle, tmp_path):
    proc = run_harness([*overrides, f"out_dir={tmp_path / 'trial'}"], timeout=300)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Loading weights" not in proc.stderr + proc.stdout  # refused before any model load
    assert not (tmp_path / "trial" / "record.json").exists()


def _config_only_dir(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return ["model=local", f"model.path={tmp_path / 'm'}"], "a dir holding weights"


def _binary_data(tmp_path):
    (tmp_path / "d.json").write_bytes(bytes(range(256)))
    return ["data=alpaca", f"data.path={tmp_path / 'd.json'}"], "is not UTF-8"


def _text_as_gguf(tmp_path):
    (tmp_path / "x.gguf").write_text("not a model\n")
    return ["model=gguf", f"model.path={tmp_path / 'x.gguf'}"], "no GGUF magic bytes"


@pytest.mark.parametrize("make", [_config_only_dir, _binary_data, _text_as_gguf])
def test_bad_files_are_refused_before_loading(make, tmp_path):
    overrides, needle = make(tmp_path)
    proc = run_harness([*overrides, f"out_dir={tmp_path / 'trial'}"], timeout=300)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "trial").exists()


def test_malformed_data_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = [{"instruction": "a", "input": "", "output": "b"}] * 3
    bad.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"instruction": "x", "outp\n')
    proc = run_harness(["data=alpaca", f"data.path={bad}", f"out_dir={tmp_path / 't'}"])
    assert proc.returncode == 2
    assert f"{bad}:4" in proc.stderr and "Traceback" not in proc.stderr


def test_json_array_error_names_the_line(tmp_path):
    from harness.trial.data import read_alpaca_file

    bad = tmp_path / "bad.json"
    bad.write_text(
        '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": 3, "output": "c"}\n]'
    )
    with pytest.raises(ConfigError, match=r"bad.json:3"):
        read_alpaca_file(bad)


def test_quant_the_device_cannot_run_is_refused():
    import bitsandbytes.functional as F

    cfg = to_trial_config(compose_cfg(["quant=fp4"]))
    # bitsandbytes caches its double-quant code map on the device of its first use; a trial probes
    # the device it loads on, but this test's meta device would leave a cache no later load of
    # this process can use: put the cache back as it was
    cached = dict(F.name2qmap)
    try:
        with pytest.raises(ConfigError, match=r"quant.type='fp4'.*cannot run"):
            check_quant(cfg.quant, "meta")  # no bitsandbytes backend computes on the meta device
    finally:
        F.name2qmap.clear()
        F.name2qmap.update(cached)


def test_optimizer_that_cannot_run_fails_or_falls_back_explicitly():
    cfg = to_trial_config(compose_cfg(["optim.on_unsupported=fail"]))
    with pytest.raises(ConfigError, match=r"optim.name='paged_adamw_8bit': cannot run on cpu"):
        choose_optimizer(cfg.optim, "cpu")
    paged = to_trial_config(compose_cfg()).optim
    chosen = choose_optimizer(paged, "cpu")
    assert chosen["used"] == "adamw_8bit" and "need CUDA" in chosen["fallback_reason"]
    ok = to_trial_config(compose_cfg(["optim=adamw_torch"]))
    assert choose_optimizer(ok.optim, "cpu") == {
        "requested": "adamw_torch", "used": "adamw_torch", "fallback_reason": None,
    }  # fmt: skip


def test_record_schema_fields_are_documented():
    doc = (Path(REPO) / "harness" / "trial" / "record.py").read_text()
    for key in ("throughput", "memory", "peak_vram_reserved_gib", "lm_eval", "env", "choices"):
        assert key in doc
