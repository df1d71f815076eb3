"""The user's own lm-eval tasks (eval.include_path): checked before any model loads, fingerprinted
by content so the base-score cache never serves scores of an edited task, and headline scores
from each task's primary metric. No model is loaded here except where a trial runs."""

import json
from pathlib import Path

import pytest
from conftest import run_harness

from harness.errors import ConfigError
from harness.evaluate import fingerprint
from harness.evaluate.headline import headline, primary_metric
from harness.evaluate.items import items_from_samples
from harness.evaluate.registry import check_tasks

SUMS = """task: my_sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: "__TASK_DIR__/sums.jsonl"
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{q}}\\nAnswer:"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
"""


def write_folder(root: Path, rows: list[dict] | None = None, yaml_text: str = SUMS) -> Path:
    """A user task folder: one 4-way multiple-choice task over a JSON-lines file beside it."""
    root.mkdir(parents=True, exist_ok=True)
    rows = rows or [
        {"q": f"What is {a} plus 1?", "choices": [str(a + 1), str(a), str(a + 2), "7"], "label": 0}
        for a in range(6)
    ]
    (root / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "my_sums.yaml").write_text(yaml_text)
    return root


def check(folder: Path, tasks=("my_sums",), data_dir: Path | None = None) -> None:
    check_tasks(list(tasks), data_dir=data_dir or folder, embedded_dir=None, include_path=folder)


def test_a_valid_folder_passes_and_its_tasks_are_known(tmp_path):
    check(write_folder(tmp_path / "tasks"))


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("unknown", r"eval.tasks='nope'.*my_sums \(eval.include_path\)"),
        ("missing", r"task my_sums: data file .*sums.jsonl is missing"),
        ("not_json", r"sums.jsonl:3: not valid JSON"),
        ("no_field", r"task my_sums: bad data: .*sums.jsonl: row 2: field 'q' is missing"),
        ("bad_target", r"task my_sums: item 3 .*target 9 outside its 4 choices"),
        ("relative", r"relative data path"),
        ("shipped_name", r"defines qh_piqa, a shipped task's name"),
        ("no_folder", r"eval.include_path=.*not a folder"),
    ],
)
def test_bad_user_tasks_stop_with_one_clear_error(tmp_path, case, match):
    folder = write_folder(tmp_path / "tasks")
    tasks = ["my_sums"]
    rows = [json.loads(line) for line in (folder / "sums.jsonl").read_text().splitlines()]
    if case == "unknown":
        tasks = ["nope"]
    elif case == "missing":
        (folder / "sums.jsonl").unlink()
    elif case == "not_json":
        text = (folder / "sums.jsonl").read_text().splitlines()
        text[2] = '{"q": "broken'
        (folder / "sums.jsonl").write_text("\n".join(text) + "\n")
    elif case == "no_field":
        del rows[1]["q"]
        write_folder(folder, rows)
    elif case == "bad_target":
        rows[3]["label"] = 9
        write_folder(folder, rows)
    elif case == "relative":
        write_folder(folder, yaml_text=SUMS.replace("__TASK_DIR__/sums.jsonl", "sums.jsonl"))
    elif case == "shipped_name":
        (folder / "clash.yaml").write_text(SUMS.replace("task: my_sums", "task: qh_piqa"))
    elif case == "no_folder":
        folder = tmp_path / "absent"
    with pytest.raises(ConfigError, match=match):
        check(folder, tasks)


def test_a_malformed_row_stops_the_trial_before_the_model_loads(tmp_path):
    folder = write_folder(tmp_path / "tasks")
    (folder / "sums.jsonl").write_text('{"q": "1+1?", "choices": ["2"], "label": 0}\n{oops\n')
    proc = run_harness(
        ["train.max_steps=1", "eval.tasks=[my_sums]", f"eval.include_path={folder}",
         f"out_dir={tmp_path / 'trial'}"], timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: eval.include_path=") and "sums.jsonl:2" in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "trial" / "record.json").exists()


@pytest.mark.parametrize("edit", ["yaml", "data", "shipped_data"])
def test_editing_a_task_or_its_data_changes_the_cache_key(tmp_path, edit):
    folder = write_folder(tmp_path / "tasks")
    data_dir = tmp_path / "data"
    (data_dir / "lambada_openai").mkdir(parents=True)
    lambada = data_dir / "lambada_openai" / "lambada_openai.jsonl"
    lambada.write_text(json.dumps({"text": "the cat sat on the mat"}) + "\n")
    tasks = ["my_sums", "qh_lambada"]

    def key() -> str:
        files = fingerprint.scored_files(
            tasks, data_dir=data_dir, embedded_dir=None, include_path=folder
        )
        return fingerprint.digest(files)

    before = key()
    assert key() == before  # the same files give the same key
    if edit == "yaml":
        (folder / "my_sums.yaml").write_text(SUMS.replace("Answer:", "Reply:"))
    elif edit == "data":
        with open(folder / "sums.jsonl", "a") as f:
            f.write(json.dumps({"q": "2+2?", "choices": ["4", "5"], "label": 0}) + "\n")
    else:
        lambada.write_text(json.dumps({"text": "the dog sat on the mat"}) + "\n")
    assert key() != before


def test_the_headline_is_the_mean_of_primary_metrics():
    lm_eval = {
        "qh_arc_easy": {
            "acc": {"after": 0.30, "stderr_after": 0.03, "before": 0.2, "higher_is_better": True},
            "acc_norm": {
                "after": 0.40,
                "stderr_after": 0.04,
                "before": 0.3,
                "higher_is_better": True,
            },
        },  # fmt: skip
        "boolq_like": {
            "acc": {"after": 0.70, "stderr_after": 0.03, "before": 0.6, "higher_is_better": True}
        },
        "qh_wikitext2": {
            "word_perplexity": {"after": 30.0, "stderr_after": None, "higher_is_better": False}
        },
    }
    declared = {"qh_arc_easy": "acc_norm", "qh_wikitext2": "word_perplexity"}
    head = headline(lm_eval, declared)
    assert head["score"] == pytest.approx((0.40 + 0.70) / 2)  # acc_norm, not the first metric
    assert head["score_stderr"] == pytest.approx((0.04**2 + 0.03**2) ** 0.5 / 2)
    tasks = head["score_detail"]["tasks"]
    assert tasks["qh_arc_easy"]["metric"] == "acc_norm" and tasks["boolq_like"]["metric"] == "acc"
    assert tasks["qh_wikitext2"]["in_score"] is False  # a perplexity is not averaged with accs
    only_ppl = headline({"qh_wikitext2": lm_eval["qh_wikitext2"]}, declared)
    assert only_ppl["score"] == -30.0 and only_ppl["score_stderr"] is None
    assert primary_metric("g", {"exact_match_strict_match": {}}, "exact_match,strict-match") == (
        "exact_match_strict_match"
    )


def test_items_carry_every_numeric_per_item_metric():
    samples = {
        "t": [
            {"doc_id": 1, "filter": "none", "metrics": ["acc", "acc_norm"], "acc": 1.0,
             "acc_norm": 0.0},
            {"doc_id": 0, "filter": "strict-match", "metrics": ["exact_match"], "exact_match": 1},
            {"doc_id": 0, "filter": "none", "metrics": ["word_perplexity"],
             "word_perplexity": (-3.2, 4)},
        ]
    }  # fmt: skip
    assert items_from_samples(samples) == [
        {"task": "t", "doc_id": 0, "exact_match_strict_match": 1.0},
        {"task": "t", "doc_id": 1, "acc": 1.0, "acc_norm": 0.0},
    ]
