"""Parity: on the same saved model and task YAMLs, ``evaluate_lm`` equals lm-eval's command line.

This checks the harness's lm-eval glue against lm-eval's own CLI on a model both can load. That a
record's own numbers come back from the command the record prints (the 4-bit model as trained,
which lm-eval's CLI cannot load) is tests/test_scores_repro.py.

Default (CI, CPU): the embedded SmolLM2-135M plus a small random LoRA adapter, saved as an adapter
and as a merged model, 4 items of qh_arc_easy, qh_lambada (a continuous perplexity: any difference
in weights, dtype or prompt shows) and qh_embedded; values and stderrs must agree to 1e-6.

The same test runs larger on a GPU; every knob is an environment variable:

    HARNESS_PARITY_LIMIT=200 HARNESS_PARITY_OUT=parity_out \\
    HARNESS_PARITY_TASKS=qh_arc_easy,qh_hellaswag,qh_piqa,qh_winogrande,qh_lambada,qh_gsm8k \\
    pytest tests/test_lmeval_parity.py

    HARNESS_PARITY_LIMIT      items per task (int, or a fraction like 0.1)      default 4
    HARNESS_PARITY_TASKS      comma-separated names     default qh_arc_easy,qh_lambada,qh_embedded
    HARNESS_PARITY_OUT        dir for both sides' scores, lm-eval's raw output and the diff
    HARNESS_PARITY_MODEL      base model dir (default: the embedded model)
    HARNESS_PARITY_ADAPTER    a saved peft adapter to use instead of a random one (e.g. a trial's)
    HARNESS_PARITY_BATCH_SIZE batch size for both sides                        default 1
    HARNESS_PARITY_DTYPE      dtype both sides load the model in                default float32
    HARNESS_PARITY_EMBEDDED_DIR  folder with heldout.jsonl (default: two prompts written here)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.assets.embedded_model import ensure_embedded_model
from harness.evaluate.lmeval import evaluate_lm, scores_from_results
from harness.paths import shared_data_dir

LIMIT = float(os.environ.get("HARNESS_PARITY_LIMIT", "4"))
LIMIT = int(LIMIT) if LIMIT >= 1 else LIMIT
TASKS = os.environ.get("HARNESS_PARITY_TASKS", "qh_arc_easy,qh_lambada,qh_embedded").split(",")
BATCH_SIZE = int(os.environ.get("HARNESS_PARITY_BATCH_SIZE", "1"))
DTYPE = os.environ.get("HARNESS_PARITY_DTYPE", "float32")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = 1e-6
HELDOUT = [("What is the capital of France?", "Paris"), ("What is 2 + 3?", "5")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """The base dir, a peft adapter dir and the merged model dir, all on disk."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("parity")
    base = Path(os.environ.get("HARNESS_PARITY_MODEL") or ensure_embedded_model())
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, DTYPE))
    if adapter_env := os.environ.get("HARNESS_PARITY_ADAPTER"):
        adapter = Path(adapter_env)
        model = PeftModel.from_pretrained(model, adapter)
    else:
        adapter = root / "adapter"
        torch.manual_seed(0)
        # init_lora_weights=False draws B at random too (the default zeros it: a no-op adapter);
        # scaled down so the tuned model still writes words.
        config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(model, config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(0.05)
        model.save_pretrained(adapter)
    tokenizer = AutoTokenizer.from_pretrained(base)
    merged = root / "merged"
    model = model.merge_and_unload()
    model.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    return {
        "base": base,
        "adapter": adapter,
        "merged": merged,
        "own_answer": _greedy_answer(model, tokenizer, HELDOUT[0][0]),
    }


def _greedy_answer(model, tokenizer, question: str) -> str:
    """What the tuned model answers: makes one held-out item right, so exact match is not 0."""
    ids = _chat_prompt(tokenizer, question, tokenize=True)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1] :])
    return text.split("\n")[0].split("<|im_end|>")[0].strip()


def _chat_prompt(tokenizer, question: str, *, tokenize: bool = False):
    messages = [{"role": "user", "content": question}]
    if not tokenize:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]


@pytest.fixture(scope="module")
def embedded_dir(saved, tmp_path_factory) -> Path:
    if env := os.environ.get("HARNESS_PARITY_EMBEDDED_DIR"):
        return Path(env)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(saved["base"])
    out = tmp_path_factory.mktemp("embedded")
    answers = [saved["own_answer"], HELDOUT[1][1]]
    with open(out / "heldout.jsonl", "w") as f:
        for (question, _), answer in zip(HELDOUT, answers, strict=True):
            text = _chat_prompt(tokenizer, question)
            f.write(json.dumps({"text": text, "answer": answer}) + "\n")
    return out


@pytest.mark.parametrize("form", ["adapter", "merged"])
def test_harness_scores_equal_lm_eval_cli(form, saved, embedded_dir, tmp_path):
    data_dir = shared_data_dir()
    if not (data_dir / "arc").is_dir():
        pytest.skip(f"offline datasets not found in {data_dir} (set HARNESS_DATA_DIR)")
    out = Path(os.environ.get("HARNESS_PARITY_OUT") or tmp_path) / form
    pretrained = saved["merged"] if form == "merged" else saved["base"]
    peft = saved["adapter"] if form == "adapter" else None

    ours = _harness_scores(pretrained, peft, data_dir, embedded_dir, work_dir=out / "harness")
    theirs = _cli_scores(pretrained, peft, include=out / "harness" / "lm_eval_tasks", out=out)

    diffs = _differences(ours, theirs)
    _write(out / "parity.json", {"form": form, "limit": LIMIT, "device": DEVICE, "diffs": diffs})
    _write(out / "harness_scores.json", ours)
    _write(out / "cli_scores.json", theirs)
    assert set(ours) == set(TASKS) and set(theirs) == set(TASKS)
    assert not diffs["mismatches"], json.dumps(diffs, indent=2)


def _harness_scores(pretrained, peft, data_dir, embedded_dir, *, work_dir):
    """Load the saved model as lm-eval's HFLM does (from_pretrained, then PeftModel), score it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=getattr(torch, DTYPE))
    model = model.to(DEVICE)
    if peft is not None:
        model = PeftModel.from_pretrained(model, peft)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    return evaluate_lm(
        model,
        tokenizer,
        TASKS,
        data_dir=data_dir,
        embedded_dir=embedded_dir,
        limit=LIMIT,
        batch_size=BATCH_SIZE,
        seed=0,
        work_dir=work_dir,
    )


def _cli_scores(pretrained, peft, *, include: Path, out: Path) -> dict:
    """``python -m lm_eval`` on the YAMLs the harness just materialized."""
    model_args = f"pretrained={pretrained},dtype={DTYPE}" + (f",peft={peft}" if peft else "")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args]
    cmd += ["--include_path", str(include), "--tasks", ",".join(TASKS), "--limit", str(LIMIT)]
    cmd += ["--batch_size", str(BATCH_SIZE), "--device", DEVICE, "--seed", "0"]
    cmd += ["--output_path", str(out / "cli")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, f"lm_eval failed:\n{proc.stderr[-4000:]}"
    (out / "cli").mkdir(parents=True, exist_ok=True)
    (out / "cli" / "stderr.log").write_text(proc.stderr)
    (results_file,) = (out / "cli").rglob("results_*.json")
    return scores_from_results(json.loads(results_file.read_text()))


def _differences(ours: dict, theirs: dict) -> dict:
    compared, mismatches = [], []
    for task in sorted(set(ours) | set(theirs)):
        for metric in sorted(set(ours.get(task, {})) | set(theirs.get(task, {}))):
            a, b = ours.get(task, {}).get(metric), theirs.get(task, {}).get(metric)
            row = {"task": task, "metric": metric, "harness": a, "cli": b}
            compared.append(row)
            if a is None or b is None or not _close(a["value"], b["value"]):
                mismatches.append(row)
            elif not _close(a["stderr"], b["stderr"]):
                mismatches.append(row)
    return {"compared": compared, "mismatches": mismatches}


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
