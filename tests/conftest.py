"""Tests compose the REAL config (conf/) and shrink it; they run the real entry point."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from harness.cli import CONF_DIR
from harness.config.schema import register_configs

REPO = Path(__file__).resolve().parents[1]
# tests/faults.py reaches the trials the tests start (`train.callbacks=[faults.OomAtStep2]`)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p
)
# A trial that takes seconds on 2 CPU cores: 2-layer random llama, a few steps, no lm-eval.
TINY = [
    "model=tiny-llama",
    "data.num_train=32",
    "data.num_heldout=8",
    "data.max_seq_len=64",
    "train.max_steps=3",
    "train.warmup_steps=0",
    "train.timing_warmup_steps=1",
    "eval.tasks=[]",
    "train.save_adapter=false",
]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def compose_cfg(overrides: list[str] | None = None):
    """The composed DictConfig, exactly as `python -m harness` would see it."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def run_harness(args: list[str], *, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m harness ARGS` from the repo root; returns the finished process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture
def data_dir() -> Path:
    from harness.paths import shared_data_dir

    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"offline datasets not found at {path} (set HARNESS_DATA_DIR)")
    return path


def lora_b_random(model, std: float = 0.02):
    """peft starts lora_B at zero; random B makes the adapter branch matter in a test."""
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=std)
    return model.train()


def loss_and_grads(model, ids):
    """(loss, {name: grad}) of one causal-LM step on `ids`, gradients of trainable params."""
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def llama3_8b_record_model() -> dict:
    """A record's `model` block for the llama3-8b shape (what the memory model reads)."""
    from harness.memory.model import LLAMA3_8B

    keys = ("hidden_size", "num_layers", "intermediate_size", "vocab_size", "num_heads",
            "num_kv_heads")  # fmt: skip
    return {k: getattr(LLAMA3_8B, k) for k in keys}
