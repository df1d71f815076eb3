"""The real trial routine, end to end, on the CPU: records, failures as results, atomic writes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY, load_json, requires_cuda, run_harness

from harness.trial.record import write_record


def test_embedded_4bit_trial_records_every_field(tmp_path):
    """The REAL pipeline: SmolLM2-135M quantized to NF4 by bitsandbytes on the CPU, LoRA, TRL."""
    out = tmp_path / "trial"
    proc = run_harness(
        ["train.max_steps=4", "train.batch_size=2", "data.num_train=64", "data.num_heldout=8",
         "eval.limit=4", "train.generations=1", f"out_dir={out}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = load_json(out / "record.json")
    assert rec["status"] == "success" and rec["error"] is None
    assert rec["model"]["name"] == "smollm2-135m" and rec["model"]["random_weights"] is False
    assert rec["config"]["quant"]["type"] == "nf4" and rec["choices"]["quant"] == "nf4"
    assert 0 < rec["params"]["trainable"] < rec["params"]["total"]
    assert 130e6 < rec["params"]["total"] < 140e6  # 4-bit weights counted as logical params
    tp = rec["throughput"]
    assert tp["timed_steps"] == 2 and tp["warmup_steps"] == 2 and len(tp["step_times_s"]) == 4
    assert 0 < tp["loss_tokens_per_s"] < tp["padded_tokens_per_s"]
    assert tp["step_time_median_s"] > 0 and tp["samples_per_s"] > 0
    assert (
        0 <= tp["gc_pause_s"] < sum(tp["step_times_s"][2:]) and tp["gc_full_collections_train"] >= 0
    )
    assert rec["memory"]["kind"] == "cpu_rss"
    assert set(rec["memory"]["phases"]) == {"load", "train", "eval"}
    assert all(p["peak_rss_gib"] > 0.1 for p in rec["memory"]["phases"].values())
    assert rec["peak_vram_reserved_gib"] is None  # never report RSS as VRAM
    assert [p["step"] for p in rec["loss"]["curve"]] == [1, 2, 3, 4]
    assert rec["loss"]["eval"] > 0 and rec["loss"]["eval_perplexity"] > 1
    em = rec["lm_eval"]["qh_embedded"]["exact_match"]
    assert {"before", "after", "delta", "stderr_after"} <= set(em)
    assert em["delta"] == pytest.approx(em["after"] - em["before"])
    assert rec["score"] == em["after"]
    assert rec["optimizer"]["requested"] == "paged_adamw_8bit" and rec["optimizer"]["used"]
    env = rec["env"]
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "trl", "lm_eval"):
        assert env[pkg], pkg
    assert len(env["git_commit"] or "") == 40 and isinstance(env["git_dirty"], bool)
    assert (out / rec["artifacts"]["adapter_dir"] / "adapter_model.safetensors").is_file()
    assert rec["generations"][0]["base"] is not None and "tuned" in rec["generations"][0]
    assert rec["timings_s"]["total"] >= rec["timings_s"]["train"] > 0
    assert rec["levers"]["chunked_loss"] is True  # TRL's fused LM head: no [tokens, vocab] logits


def test_injected_oom_becomes_an_oom_record(tmp_path):
    proc = run_harness([*TINY, "train.callbacks=[faults.OomAtStep2]", f"out_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = load_json(tmp_path / "record.json")
    assert rec["status"] == "oom" and "out of memory" in rec["error"]
    assert rec["oom"]["phase"] == "train" and rec["oom"]["peak_rss_gib"] > 0
    assert "train" in rec["memory"]["phases"]


def test_nan_loss_stops_and_is_recorded(tmp_path):
    proc = run_harness(
        [*TINY, "train.max_steps=6", "train.callbacks=[faults.NanAtStep2]", f"out_dir={tmp_path}"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = load_json(tmp_path / "record.json")
    assert rec["status"] == "failed" and "non-finite" in rec["error"]
    assert len(rec["loss"]["curve"]) < 6  # stopped early


def test_collapsed_training_is_diverged_not_success(tmp_path):
    # lr=1e6 pins the tiny model's loss at ln(49152) = 10.80267 from step 2 with zero gradient
    proc = run_harness([*TINY, "train.max_steps=4", "train.lr=1e6", f"out_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = load_json(tmp_path / "record.json")
    assert rec["status"] == "diverged" and "ln(vocab_size)=10.80267" in rec["error"], rec["error"]
    assert rec["loss"]["curve"][-1]["grad_norm"] == 0.0
    assert not rec.get("lm_eval") and rec.get("score") is None


def test_ordinary_tiny_training_is_not_diverged(tmp_path):
    proc = run_harness([*TINY, f"out_dir={tmp_path}"])  # starts near ln(vocab) too, but learns
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = load_json(tmp_path / "record.json")
    assert rec["status"] == "success", rec.get("error")
    assert all(p["grad_norm"] > 0 for p in rec["loss"]["curve"])


def test_variants_quant_and_merge_run(tmp_path):
    proc = run_harness(
        [*TINY, "quant=fp4", "quant.double_quant=false", "lora.variant=dora+rslora",
         "lora.targets=[q_proj,v_proj]", "optim=adamw_torch", "train.merge=true",
         "train.save_adapter=true", f"out_dir={tmp_path}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = load_json(tmp_path / "record.json")
    assert rec["status"] == "success", rec["error"]
    assert (tmp_path / "merged" / "config.json").is_file()
    merged_cfg = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert merged_cfg.get("dtype", merged_cfg.get("torch_dtype")) == "bfloat16"


def test_unquantized_reference_runs(tmp_path):
    proc = run_harness([*TINY, "quant=none", "train.checkpointing=none", f"out_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_json(tmp_path / "record.json")["status"] == "success"


def test_records_are_append_only(tmp_path):
    write_record({"status": "success"}, tmp_path)
    with pytest.raises(FileExistsError):
        write_record({"status": "failed"}, tmp_path)
    assert load_json(tmp_path / "record.json")["status"] == "success"


WRITER = """
import sys
from pathlib import Path
from harness.trial.record import write_record
write_record({"status": "success", "blob": "x" * 400_000_000}, Path(sys.argv[1]))
"""


def test_killed_write_leaves_no_partial_record(tmp_path):
    """SIGKILL mid-write (a 400 MB record takes seconds to serialize): no record.json at all."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    deadline = time.time() + 60
    while not list(tmp_path.glob(".record-*.tmp")) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".record-*.tmp")), "the writer never started"
    assert not (tmp_path / "record.json").exists()


@requires_cuda
def test_cuda_trial_reports_vram_not_rss(tmp_path):
    proc = run_harness([*TINY, "train.device=cuda", f"out_dir={tmp_path}"])
    rec = load_json(tmp_path / "record.json")
    assert proc.returncode == 0 and rec["memory"]["kind"] == "cuda"
    assert rec["peak_vram_reserved_gib"] >= rec["peak_vram_allocated_gib"] > 0
    assert rec["optimizer"]["used"] == "paged_adamw_8bit"


def test_trial_refuses_an_out_dir_that_holds_a_record_before_any_work(tmp_path):
    """Records are append-only: a trial pointed at a used dir fails at once (it could not keep
    its result), and the existing record is untouched."""
    from conftest import compose_cfg

    from harness.config.schema import to_trial_config
    from harness.trial.pipeline import run_trial

    (tmp_path / "record.json").write_text('{"status": "success"}')
    cfg = to_trial_config(compose_cfg([*TINY, "train.device=cpu"]))
    with pytest.raises(FileExistsError, match="append-only"):
        run_trial(cfg, tmp_path)
    assert os.listdir(tmp_path) == ["record.json"]  # no trainer dir, adapter or log: no work ran
    assert json.loads((tmp_path / "record.json").read_text()) == {"status": "success"}


def test_the_default_trial_runs_where_triton_is_not_installed(tmp_path):
    """`bash .ci/setup` (no test extra) installs no triton: the plain engine must not import it.
    The trial runs with `triton` marked missing in sys.modules, as Python sees an absent package
    (importlib.util.find_spec answers None, an import fails)."""
    out = tmp_path / "t"
    run = ("import runpy, sys; sys.modules['triton'] = None; "
           "sys.argv = ['harness', *sys.argv[1:]]; "
           "runpy.run_module('harness', run_name='__main__', alter_sys=True)")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", run, *TINY, "train.max_steps=1", f"out_dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((out / "record.json").read_text())
    assert rec["status"] == "success", (out / "error.txt").read_text()[-2000:]
