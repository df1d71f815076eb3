"""Every score a record holds comes back from the one command the record prints.

A real 4-bit trial of the embedded SmolLM2-135M on the CPU (2 steps), scored on LAMBADA (a
continuous perplexity: any difference in weights, dtypes or prompts shows) and a user task; then
``rec["eval"]["reproduce"]`` rebuilds the scored form from the trial's folder in a fresh process.
Values and stderrs, before and after, must equal the record's to 1e-6, for the 4-bit form and
for the merged 16-bit form.
"""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, load_json, run_harness
from test_user_tasks import write_folder

from harness.evaluate.items import read_items

TOLERANCE = 1e-6
TRIAL = ["train.max_steps=2", "train.batch_size=2", "data.num_train=16", "data.num_heldout=4",
         "eval.limit=3", "eval.tasks=[qh_lambada,my_sums]"]  # fmt: skip


@pytest.mark.parametrize("form", ["4bit", "merged"])
def test_recorded_scores_equal_the_printed_command(form, data_dir, tmp_path):
    folder = write_folder(tmp_path / "tasks")
    out = tmp_path / "trial"
    proc = run_harness([*TRIAL, f"eval.include_path={folder}", f"eval.scored_form={form}",
                        f"out_dir={out}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = load_json(out / "record.json")
    assert rec["status"] == "success", rec.get("error")
    ev = rec["eval"]
    assert ev["scored_form"] == form and ev["batch_size"] == 8 and ev["batch_size_auto"] is True
    assert ev["include_path"] == str(folder.resolve()) and "user/my_sums.yaml" in ev["files"]
    if form == "merged":
        assert rec["artifacts"]["merged_dir"] == "merged" and "merged 16-bit" in ev["scored_model"]
    else:
        assert ev["adapter_dtypes"] == ["bfloat16"]  # what TRL trains a 4-bit model's LoRA in
    # what ran: the weights folder, the model's class, the prompt format and why
    assert rec["model"]["model_class"] == "LlamaForCausalLM"
    assert Path(rec["model"]["weights_dir"]).is_dir()
    assert rec["prompt"] == {
        "format": "chat",
        "why": "data.prompt_format=auto: the tokenizer has a chat template",
    }
    # the headline: each task's primary metric (LAMBADA acc, my_sums acc_norm), averaged
    detail = rec["score_detail"]["tasks"]
    assert {t: d["metric"] for t, d in detail.items()} == {
        "qh_lambada": "acc",
        "my_sums": "acc_norm",
    }
    lm = rec["lm_eval"]
    want = (lm["qh_lambada"]["acc"]["after"] + lm["my_sums"]["acc_norm"]["after"]) / 2
    assert rec["score"] == pytest.approx(want) and rec["score_detail"]["scored_form"] == form
    assert rec["score_stderr"] is not None
    # per-item results for both phases: 3 items per task
    items = read_items(out / ev["items"])
    assert {(r["phase"], r["task"]) for r in items} == {
        (p, t) for p in ("after", "before") for t in ("qh_lambada", "my_sums")
    }
    assert len(items) == 12 and all(isinstance(r["doc_id"], int) for r in items)
    assert all(set(r) >= {"acc", "acc_norm"} for r in items if r["task"] == "my_sums")

    # the command the record prints, run as a user would
    cmd = shlex.split(ev["reproduce"])
    assert cmd[:3] == ["python", "-m", "harness.evaluate"]
    repro = subprocess.run([sys.executable, *cmd[1:]], cwd=REPO, capture_output=True, text=True,
                           timeout=900)  # fmt: skip
    assert repro.returncode == 0, repro.stdout[-2000:] + repro.stderr[-2000:]
    assert "16 of 16 values equal the record" in repro.stdout
    got = json.loads((out / "reproduced" / "scores.json").read_text())
    for task, metrics in lm.items():
        for metric, m in metrics.items():
            for phase in ("after", "before"):
                theirs = got[phase][task][metric]
                assert theirs["value"] == pytest.approx(m[phase], abs=TOLERANCE), (task, metric)
                assert theirs["stderr"] == pytest.approx(m[f"stderr_{phase}"], abs=TOLERANCE)
    assert read_items(out / "reproduced" / "eval_items.jsonl") == items


def test_a_changed_data_file_is_refused_not_compared(data_dir, tmp_path):
    """Scores of other files are not the record's: the command says which file changed, exit 2."""
    folder = write_folder(tmp_path / "tasks")
    out = tmp_path / "trial"
    proc = run_harness([*TRIAL, "eval.tasks=[my_sums]", "eval.base_scores=false",
                        f"eval.include_path={folder}", f"out_dir={out}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(folder / "sums.jsonl", "a") as f:
        f.write(json.dumps({"q": "2+2?", "choices": ["4", "5"], "label": 0}) + "\n")
    repro = subprocess.run([sys.executable, "-m", "harness.evaluate", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert repro.returncode == 2
    last = repro.stderr.strip().splitlines()[-1]
    assert last.startswith("error: trial_dir=") and "since the trial scored it" in last
    assert f"{folder / 'sums.jsonl'} changed (sha1 " in last and "Traceback" not in repro.stderr
