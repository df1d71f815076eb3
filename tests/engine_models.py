"""Tiny adapted models for the engine's tests, built the way a trial builds them: peft attaches the
adapter with the engine's LoRA layers registered (build.lora_modules), then build() puts the rest
of the levers in place. Two models made with the same seed have the same weights, so a test
compares an engine against the plain stack on twins."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import lora_b_random, loss_and_grads

from harness.config.engine import EngineConfig
from harness.engine import build as engine
from harness.engine.layers import decoder_layers


def tiny_peft(ecfg: EngineConfig | None = None, *, dropout: float = 0.0, seed: int = 0,
              tied: bool = True, layers: int = 2, checkpointing: bool = False):  # fmt: skip
    """A llama (2 layers, fp32) with a peft LoRA adapter on every Linear, in train mode; the
    fused LoRA layers where `ecfg` asks for them. `checkpointing`: HF's recompute enabled, as
    attach_adapter does for any engine.checkpointing but none."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from harness.assets.shapes import shape_config

    torch.manual_seed(seed)
    hf_config = shape_config("tiny-llama")
    hf_config.tie_word_embeddings = tied
    hf_config.num_hidden_layers = layers
    base = AutoModelForCausalLM.from_config(hf_config)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")
    custom = engine.lora_modules(ecfg or EngineConfig())
    if custom:
        cfg._register_custom_module(custom)
    model = get_peft_model(base, cfg)
    if checkpointing:
        enable_checkpointing(model)
    return lora_b_random(model)


def enable_checkpointing(model) -> None:
    """HF's recompute on every decoder layer, as attach_adapter enables it."""
    base = model.get_base_model()
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x's name
        base.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def tiny_4bit(dropout: float = 0.0, ecfg: EngineConfig | None = None, *, r: int = 8,
              device: str = "cpu"):  # fmt: skip
    """The tiny llama shape through the harness's own load (nf4 + double quant, peft's fp32
    upcast of the rest) and adapter on every Linear, random lora_B, in train mode."""
    from harness.config.schema import LoraConfig, QuantConfig
    from harness.trial import model as models

    torch.manual_seed(0)
    weights = models._random_weights_dir("tiny-llama", 0)
    qcfg = QuantConfig(type="nf4", double_quant=True, compute_dtype="bf16")
    base = models.load_base(str(weights), qcfg, device=device)
    lcfg = LoraConfig(r=r, alpha=2 * r, dropout=dropout)
    model = models.attach_adapter(
        base, lcfg, qcfg, targets="all-linear", checkpointing=False, seed=0,
        custom_modules=engine.lora_modules(ecfg or EngineConfig()),
    )  # fmt: skip
    return lora_b_random(model)


def ecfg(**levers) -> EngineConfig:
    """An EngineConfig of the plain stack with `levers` set (checkpointing none unless given)."""
    return EngineConfig(**{"checkpointing": "none", **levers})


def build(model, cfg: EngineConfig, dtype: torch.dtype = torch.bfloat16) -> dict:
    return engine.build(model, cfg, compute_dtype=dtype)


def built(dropout: float = 0.0, *, seed: int = 0, tied: bool = True, layers: int = 2,
          **levers):  # fmt: skip
    """(model, levers): a tiny_peft twin with `levers` built (checkpointing none unless given;
    HF's recompute enabled for any other mode)."""
    cfg = ecfg(**levers)
    model = tiny_peft(cfg, dropout=dropout, seed=seed, tied=tied, layers=layers,
                      checkpointing=cfg.checkpointing != "none")  # fmt: skip
    return model, build(model, cfg)


def runner(layer):
    """The runner build set on a decoder layer (None: HF's forward as it is)."""
    return layer._gradient_checkpointing_func if layer.gradient_checkpointing else None


def offloader(model):
    """The model's Offloader, as its layers' runners hold it (None: no layer parks anything)."""
    from harness.engine.offload import Offloader

    for layer in decoder_layers(model):
        run = runner(layer)
        for part in (getattr(run, "how", None), getattr(run, "fetch", None)):
            for found in (getattr(part, "offloader", None), getattr(part, "__self__", None),
                          getattr(getattr(part, "func", None), "__self__", None)):  # fmt: skip
                if isinstance(found, Offloader):
                    return found
    return None


def step(model, ids, seed: int | None = 3):
    """loss_and_grads after seeding the CPU generator (the fused op's dropout seeds)."""
    if seed is not None:
        torch.manual_seed(seed)
    return loss_and_grads(model, ids)


def assert_same_bits(a, b) -> None:
    """Two (loss, grads) results are the same bits."""
    assert torch.equal(a[0], b[0]), (float(a[0]), float(b[0]))
    assert a[1].keys() == b[1].keys()
    for name, grad in b[1].items():
        assert torch.equal(a[1][name], grad), name


def assert_close(a, b, **tol) -> None:
    torch.testing.assert_close(a[0], b[0], **tol)
    assert a[1].keys() == b[1].keys()
    for name, grad in b[1].items():
        torch.testing.assert_close(a[1][name], grad, **tol)


# Triton picks its interpreter (kernels on CPU tensors) when triton is first imported, which every
# test module does through torch and peft: the CPU runs the kernel tests in a process started
# with TRITON_INTERPRET=1 (run_interpreted), or in this one where it was started so.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
in_interpreter = pytest.mark.skipif(
    not INTERPRETED, reason="needs TRITON_INTERPRET=1 from the process start (run_interpreted)"
)


def run_interpreted(test_file: str, expected: int) -> None:
    """Run `test_file`'s tests whose id says `interpreter` in a pytest process with Triton's
    interpreter on; all `expected` of them must pass."""
    if INTERPRETED:
        pytest.skip("this process runs them itself")
    pytest.importorskip("triton", reason="triton not installed (it ships with CUDA torch)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file,
         "-k", "interpreter and not run_in"],
        cwd=Path(test_file).parent, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0 and f"{expected} passed" in proc.stdout, tail
