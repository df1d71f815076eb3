"""Data: embedded generator, Alpaca files, prompt formats, loss only on responses."""

import pytest

from harness.assets.embedded_data import SKILLS, generate_embedded
from harness.assets.embedded_model import ensure_embedded_model
from harness.config.schema import DataConfig
from harness.trial.data import format_example, load_examples, read_alpaca_file, tokenize
from harness.trial.model import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(ensure_embedded_model()))


def test_embedded_splits_never_overlap_and_are_deterministic():
    train, heldout = generate_embedded(2000, 200, seed=0)
    assert not {e["instruction"] for e in train} & {e["instruction"] for e in heldout}
    assert (train, heldout) == generate_embedded(2000, 200, seed=0)
    other_train, _ = generate_embedded(2000, 200, seed=1)
    assert not {e["instruction"] for e in other_train} & {e["instruction"] for e in heldout}
    assert len({e["instruction"].split()[0] for e in heldout}) == len(SKILLS)


def test_chat_template_and_loss_only_on_response(tokenizer):
    ex = {"instruction": "What is 2 + 3?", "input": "", "output": "5"}
    prompt, completion = format_example(ex, tokenizer, chat=True)
    assert "<|im_start|>assistant" in prompt and completion.startswith("5<|im_end|>")
    row = tokenize([ex], tokenizer, DataConfig())[0]
    response = [t for t, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m]
    assert tokenizer.decode(response).startswith("5<|im_end|>")
    assert row["completion_mask"][0] == 0 and row["completion_mask"][-1] == 1


def test_alpaca_prompt_for_models_without_chat_template(tokenizer):
    ex = {"instruction": "Add.", "input": "2 and 3", "output": "5"}
    prompt, completion = format_example(ex, tokenizer, chat=False)
    assert "### Instruction:\nAdd." in prompt and "### Input:\n2 and 3" in prompt
    assert prompt.endswith("### Response:\n") and completion == "5" + tokenizer.eos_token


def test_real_alpaca_subset_loads(data_dir):
    path = data_dir / "alpagasus" / "random_9k.json"
    assert len(read_alpaca_file(path)) == 9225  # 9,229 rows, 4 with an empty output skipped
    cfg = DataConfig(source="alpaca", path=str(path), num_heldout=50, seed=3)
    train, heldout = load_examples(cfg)
    assert len(train) == 9175 and len(heldout) == 50
    assert load_examples(cfg) == (train, heldout)  # the split is a pure function of the seed
    assert load_examples(DataConfig(source="alpaca", path=str(path), num_heldout=50))[1] != heldout
