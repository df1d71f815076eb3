"""lm-eval integration: every shipped task scores on the CPU; bad input stops before any model.

Real lm-eval, real embedded SmolLM2-135M (float32: faster than bf16 on most CPUs), 2 items per task.
"""

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from harness.assets.embedded_model import ensure_embedded_model
from harness.errors import ConfigError
from harness.evaluate.cache import base_scores_cached
from harness.evaluate.headline import primary_metric
from harness.evaluate.lmeval import (
    evaluate_lm,
    merge_before_after,
    resolve_batch_size,
    scores_from_results,
)
from harness.evaluate.registry import TASKS_DIR, check_tasks, harness_tasks, materialize_tasks
from harness.paths import shared_data_dir

# metric -> higher_is_better, per task: the names the trial record relies on.
EXPECTED = {
    "qh_arc_easy": {"acc": True, "acc_norm": True},
    "qh_arc_challenge": {"acc": True, "acc_norm": True},
    "qh_hellaswag": {"acc": True, "acc_norm": True},
    "qh_piqa": {"acc": True, "acc_norm": True},
    "qh_winogrande": {"acc": True},
    "qh_lambada": {"perplexity": False, "acc": True},
    "qh_wikitext2": {"word_perplexity": False, "byte_perplexity": False, "bits_per_byte": False},
    "qh_gsm8k": {"exact_match_strict_match": True, "exact_match_flexible_extract": True},
    "qh_embedded": {"exact_match": True},
}
QUESTIONS = ["What is the capital of France?", "Name a primary colour."]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "arc" / "arc_easy.jsonl").is_file():
        pytest.skip(f"offline datasets not found in {path} (set HARNESS_DATA_DIR)")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_embedded_model())


@pytest.fixture(scope="module")
def lm(tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ensure_embedded_model(), dtype=torch.float32)
    return model, tokenizer


def write_heldout(tokenizer, out_dir: Path, answers: list[str] | None = None) -> Path:
    """A heldout.jsonl in the embedded model's chat format, as the trial pipeline writes it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    answers = answers or ["Paris", "Red"]
    with open(out_dir / "heldout.jsonl", "w") as f:
        for question, answer in zip(QUESTIONS, answers, strict=True):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
            f.write(json.dumps({"text": text, "answer": answer}) + "\n")
    return out_dir


def score(model, tokenizer, tasks, data_dir, tmp_path, **kwargs):
    """evaluate_lm with the test defaults: 2 items, batch 1, no embedded dir."""
    kwargs = {"embedded_dir": None, "limit": 2, "batch_size": 1, **kwargs}
    return evaluate_lm(
        model, tokenizer, tasks, data_dir=data_dir, work_dir=tmp_path / "work", **kwargs
    )


def test_every_yaml_has_header_version_and_directions():
    assert harness_tasks() == sorted(EXPECTED)
    for name in harness_tasks():
        text = (TASKS_DIR / f"{name}.yaml").read_text()
        assert text.startswith("# "), f"{name}: a YAML opens with a header comment"
        loader = type("L", (yaml.SafeLoader,), {})
        loader.add_constructor("!function", lambda loader, node: node.value)
        cfg = yaml.load(text, Loader=loader)  # noqa: S506
        assert cfg["task"] == name
        assert cfg["metadata"]["version"] >= 1.0
        declared = cfg["metadata"]["primary_metric"]  # the headline metric, in lm-eval's naming
        assert declared.split(",")[0] in {m["metric"] for m in cfg["metric_list"]}
        assert all(isinstance(m["higher_is_better"], bool) for m in cfg["metric_list"])


def test_materialize_fills_placeholders(tmp_path, data_dir):
    out = materialize_tasks(tmp_path / "t", data_dir=data_dir, embedded_dir=tmp_path / "emb")
    assert (out / "utils.py").is_file()
    texts = {p.name: p.read_text() for p in out.glob("*.yaml")}
    assert len(texts) == len(EXPECTED)
    assert not any("__DATA_DIR__" in t or "__EMBEDDED_DIR__" in t for t in texts.values())
    assert str(data_dir.resolve() / "arc" / "arc_easy.jsonl") in texts["qh_arc_easy.yaml"]
    # Without an embedded dir the embedded task has nothing to read, so it is left out.
    out = materialize_tasks(tmp_path / "t", data_dir=data_dir, embedded_dir=None)
    assert not (out / "qh_embedded.yaml").exists()


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_task_scores_on_cpu(task, lm, data_dir, tmp_path):
    model, tokenizer = lm
    embedded_dir = write_heldout(tokenizer, tmp_path / "emb")
    # One WikiText article is already ~1.3k tokens; 2 items of anything else. GSM8K's 5 shots
    # make a ~900-token prompt; 1 shot still draws from the train file and saves ~60% of the time.
    limit = 1 if task == "qh_wikitext2" else 2
    shots = 1 if task == "qh_gsm8k" else None
    scores = score(
        model, tokenizer, [task], data_dir, tmp_path, embedded_dir=embedded_dir, limit=limit,
        num_fewshot=shots,
    )  # fmt: skip
    assert list(scores) == [task]
    assert {m: s["higher_is_better"] for m, s in scores[task].items()} == EXPECTED[task]
    for metric, result in scores[task].items():
        assert math.isfinite(result["value"]), metric
        assert result["stderr"] is None or result["stderr"] >= 0
    if task == "qh_wikitext2":
        ppl, bpb = scores[task]["byte_perplexity"]["value"], scores[task]["bits_per_byte"]["value"]
        assert ppl > 1 and bpb == pytest.approx(math.log2(ppl))
    elif task != "qh_lambada":
        assert all(0 <= s["value"] <= 1 for s in scores[task].values())
    assert primary_metric(task, scores[task]) in scores[task]
    raw = json.loads((tmp_path / "work" / "lm_eval_results.json").read_text())
    assert raw["n-samples"][task]["effective"] == limit
    assert raw["n-shot"][task] == (shots or 0)


def test_embedded_exact_match_ignores_surrounding_whitespace(lm, data_dir, tmp_path):
    """The model's own greedy answers, padded with spaces, score 1.0."""
    model, tokenizer = lm
    answers = []
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=24, do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1] :])
        answers.append(f"  {text.split(chr(10))[0].split('<|im_end|>')[0].strip()} ")
    embedded_dir = write_heldout(tokenizer, tmp_path, answers)
    scores = score(model, tokenizer, ["qh_embedded"], data_dir, tmp_path, embedded_dir=embedded_dir)
    assert scores["qh_embedded"]["exact_match"]["value"] == 1.0


def test_quantized_peft_model_in_train_mode_scores_in_memory(data_dir, tokenizer, tmp_path):
    """The trial's own case: a 4-bit base with a LoRA adapter, mid-training, scored as is; the
    model's mode and the global RNG come back as they were."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    base = AutoModelForCausalLM.from_pretrained(
        ensure_embedded_model(), quantization_config=quant, dtype=torch.float32
    )
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.train()
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    tasks = ["qh_arc_easy", "qh_lambada"]
    scores = score(model, tokenizer, tasks, data_dir, tmp_path, batch_size="auto")  # 1 on a CPU
    assert model.training, "evaluation must hand the model back in train mode"
    assert torch.rand(1) == expected_draw, "lm-eval's reseeding must not leak into the trial"
    assert set(scores) == set(tasks)
    assert scores["qh_lambada"]["perplexity"]["value"] > 1


def test_check_tasks_accepts_all_shipped_tasks_quickly(data_dir, tokenizer, tmp_path):
    embedded_dir = write_heldout(tokenizer, tmp_path)
    start = time.perf_counter()
    check_tasks(harness_tasks(), data_dir=data_dir, embedded_dir=embedded_dir)
    elapsed = time.perf_counter() - start
    assert elapsed < 5, f"pre-flight took {elapsed:.1f}s; it reads every row, budget ~2 s"


def test_unknown_task_names_the_known_ones(data_dir):
    with pytest.raises(ConfigError) as err:
        check_tasks(["qh_arc_eassy"], data_dir=data_dir, embedded_dir=None)
    assert err.value.field == "eval.tasks" and "qh_arc_eassy" in str(err.value)
    assert "qh_arc_easy" in str(err.value)


def test_lm_eval_own_task_names_pass_through(data_dir):
    check_tasks(["arc_easy", "hellaswag"], data_dir=data_dir, embedded_dir=None)
    with pytest.raises(ConfigError, match="no_such_benchmark"):
        check_tasks(["no_such_benchmark"], data_dir=data_dir, embedded_dir=None)


def test_missing_data_file_names_task_and_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        check_tasks(["qh_piqa"], data_dir=tmp_path, embedded_dir=None)
    msg = str(err.value)
    assert err.value.field == "eval.data_dir"
    assert "qh_piqa" in msg and str(tmp_path.resolve() / "piqa" / "valid.jsonl") in msg


def test_embedded_task_is_checked_once_its_file_exists(data_dir, lm, tmp_path):
    # None: the trial writes heldout.jsonl after pre-flight, so there is nothing to check yet.
    check_tasks(["qh_embedded"], data_dir=data_dir, embedded_dir=None)
    with pytest.raises(ConfigError, match=r"qh_embedded.*heldout.jsonl is missing"):
        check_tasks(["qh_embedded"], data_dir=data_dir, embedded_dir=tmp_path)
    (tmp_path / "heldout.jsonl").write_text('{"text": "Q: 1+1\\nA:"}\n')
    with pytest.raises(ConfigError, match=r"heldout.jsonl:1: field 'answer'"):
        check_tasks(["qh_embedded"], data_dir=data_dir, embedded_dir=tmp_path)
    model, tokenizer = lm
    with pytest.raises(ConfigError, match="embedded_dir"):
        score(model, tokenizer, ["qh_embedded"], data_dir, tmp_path)


ARC_ROW = '{"query": "Q", "choices": ["a"], "gold": 0}\n'
BAD_ROWS = [  # task, file, content, what the message must point at
    ("qh_arc_easy", "arc/arc_easy.jsonl", ARC_ROW + "{oops\n", ":2:"),
    ("qh_arc_easy", "arc/arc_easy.jsonl", ARC_ROW.replace("0}", '"0"}'), ":1:"),
    ("qh_lambada", "lambada_openai/lambada_openai.jsonl", '{"context": "a"}\n', "continuation"),
    ("qh_hellaswag", "hellaswag/hellaswag_val_full.txt", "ctx\nx\na\nb\nc\nd\n", ":2:"),
    ("qh_gsm8k", "gsm8k/test.jsonl", '["not", "an", "object"]\n', ":1:"),
]


@pytest.mark.parametrize(("task", "relpath", "content", "where"), BAD_ROWS)
def test_bad_row_names_task_file_and_line(task, relpath, content, where, data_dir, tmp_path):
    bad = tmp_path / "data"
    folder = relpath.split("/")[0]  # the task's own folder: other files must stay valid
    shutil.copytree(data_dir / folder, bad / folder, ignore=shutil.ignore_patterns("*.bz2"))
    (bad / relpath).write_text(content)
    with pytest.raises(ConfigError) as err:
        check_tasks([task], data_dir=bad, embedded_dir=None)
    msg = str(err.value)
    assert task in msg and str(bad.resolve() / relpath) in msg and where in msg


def test_piqa_labels_must_align(data_dir, tmp_path):
    bad = tmp_path / "data"
    (bad / "piqa").mkdir(parents=True)
    shutil.copy(data_dir / "piqa" / "valid.jsonl", bad / "piqa")
    (bad / "piqa" / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(ConfigError, match=r"qh_piqa.*2 labels for 1838 rows"):
        check_tasks(["qh_piqa"], data_dir=bad, embedded_dir=None)


def test_base_scores_are_computed_once_per_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"qh_arc_easy": {"acc": {"value": 0.25, "stderr": 0.1, "higher_is_better": True}}}

    cache = tmp_path / "base_scores.json"
    key = {"model": "smollm2", "quant": {"bits": 4, "double_quant": True}, "limit": 2}
    first = base_scores_cached(key, compute, cache_file=cache)
    again = base_scores_cached(dict(reversed(key.items())), compute, cache_file=cache)
    assert first == again and len(calls) == 1
    base_scores_cached({**key, "quant": {"bits": 16}}, compute, cache_file=cache)
    assert len(calls) == 2
    entries = json.loads(cache.read_text())
    assert len(entries) == 2 and all("lm_eval_version" in e["key"] for e in entries.values())


def test_merge_before_after_shape():
    before = {"t": {"acc": {"value": 0.5, "stderr": 0.1, "higher_is_better": True}}}
    after = {
        "t": {
            "acc": {"value": 0.75, "stderr": 0.05, "higher_is_better": True},
            "ppl": {"value": 3.0, "stderr": None, "higher_is_better": False},
        }
    }
    merged = merge_before_after(before, after)
    assert merged["t"]["acc"] == {
        "before": 0.5,
        "after": 0.75,
        "delta": 0.25,
        "stderr_before": 0.1,
        "stderr_after": 0.05,
        "higher_is_better": True,
    }
    assert merged["t"]["ppl"]["before"] is None and merged["t"]["ppl"]["delta"] is None
    assert merged["t"]["ppl"]["higher_is_better"] is False


def test_scores_from_results_names_filters_and_drops_bad_stderr():
    results = {
        "results": {
            "g": {
                "alias": "g",
                "exact_match,strict-match": 0.5,
                "exact_match_stderr,strict-match": "N/A",
                "acc,none": 1.0,
                "acc_stderr,none": float("nan"),
            }
        },
        "higher_is_better": {"g": {"exact_match": True, "acc": True}},
    }
    assert scores_from_results(results) == {
        "g": {
            "exact_match_strict_match": {"value": 0.5, "stderr": None, "higher_is_better": True},
            "acc": {"value": 1.0, "stderr": None, "higher_is_better": True},
        }
    }


def test_bad_batch_size_and_limit_are_config_errors(lm, data_dir, tmp_path):
    model, tokenizer = lm
    assert resolve_batch_size("auto", model) == 1  # the CPU never reports OOM to probe with
    assert resolve_batch_size(8, model) == 8
    with pytest.raises(ConfigError, match="eval.batch_size"):
        resolve_batch_size(0, model)
    with pytest.raises(ConfigError, match="eval.limit"):
        score(model, tokenizer, ["qh_arc_easy"], data_dir, tmp_path, limit=2.5)
