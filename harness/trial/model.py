"""Base model: find its weights, check adapter targets, load + quantize, attach the adapter."""

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from harness.assets.embedded_model import (
    convert_gguf,
    embedded_tokenizer_dir,
    ensure_embedded_model,
)
from harness.assets.shapes import shape_config
from harness.config.schema import LoraConfig, ModelConfig, QuantConfig
from harness.errors import ConfigError
from harness.paths import cache_dir

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Module-name suffixes of the usual decoder families (llama, qwen2, mistral, gemma, phi, gpt-neox).
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query_key_value", "c_attn",
             "Wqkv", "out_proj", "dense"}  # fmt: skip
MLP = {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "c_fc", "w1", "w2",
       "w3", "dense_h_to_4h", "dense_4h_to_h"}  # fmt: skip


# what from_pretrained loads from a local dir (sharded: the index and its shards)
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def model_hf_config(mcfg: ModelConfig):
    """The transformers config of the base model, without loading weights."""
    from transformers import AutoConfig

    if mcfg.source == "embedded":
        return shape_config("smollm2-135m")  # the embedded checkpoint has exactly this shape
    if mcfg.source == "random":
        return shape_config(mcfg.shape)
    if mcfg.source == "local":
        path = Path(mcfg.path)
        if not (path / "config.json").is_file():
            raise ConfigError("model.path", mcfg.path, "a local HF model dir with config.json")
        if not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
            raise ConfigError("model.path", mcfg.path, f"a dir holding weights: {WEIGHT_FILES}")
        return AutoConfig.from_pretrained(path)
    if mcfg.source == "gguf":
        path = Path(mcfg.path)
        if not path.is_file() or path.suffix != ".gguf":
            raise ConfigError("model.path", mcfg.path, "an existing .gguf file")
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":  # every GGUF file opens with these magic bytes
                raise ConfigError("model.path", mcfg.path, "a GGUF file (no GGUF magic bytes)")
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    return AutoConfig.from_pretrained(mcfg.path, revision=mcfg.revision)  # hub


def linear_module_names(hf_config) -> set[str]:
    """Leaf names of the Linear layers, from a weightless (meta-device) instance of the model."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }


def resolve_targets(lcfg: LoraConfig, linear_names: set[str]) -> str | list[str]:
    """LoRA target modules for peft; explicit names are checked against the model's modules."""
    if lcfg.targets == "all-linear":
        return "all-linear"  # peft: every Linear except the output head
    if isinstance(lcfg.targets, str):
        wanted = ATTENTION if lcfg.targets == "attention" else MLP
        found = sorted(linear_names & wanted)
        if not found:
            raise ConfigError(
                "lora.targets", lcfg.targets, f"no such modules in {sorted(linear_names)}"
            )
        return found
    unknown = [t for t in lcfg.targets if t not in linear_names]
    if unknown:
        raise ConfigError(
            "lora.targets",
            unknown[0],
            f"not a Linear module of this model; known: {sorted(linear_names)}",
        )
    return list(lcfg.targets)


def weights_source(mcfg: ModelConfig, *, seed: int = 0) -> tuple[str, str, bool]:
    """(weights dir or hub id, tokenizer dir or hub id, random_weights) — converting or creating
    the cached dir on first use."""
    if mcfg.source == "embedded":
        path = str(ensure_embedded_model())
        return path, path, False
    if mcfg.source == "local":
        return mcfg.path, mcfg.path, False
    if mcfg.source == "gguf":
        gguf = Path(mcfg.path).resolve()
        digest = hashlib.sha1(str(gguf).encode()).hexdigest()[:10]
        out = convert_gguf(gguf, cache_dir() / "models" / f"gguf-{gguf.stem}-{digest}")
        return str(out), str(out), False
    if mcfg.source == "hub":
        return mcfg.path, mcfg.path, False
    # Random weights get the embedded tokenizer: its ids (< 49,152) fit every shape's vocab.
    tok = str(embedded_tokenizer_dir())
    return str(_random_weights_dir(mcfg.shape, seed)), tok, True


def _random_weights_dir(shape: str, seed: int) -> Path:
    """Save random bf16 weights of a named shape once, so they load through the same quantizing
    `from_pretrained` path as real checkpoints (the honest path for speed and memory)."""
    from transformers import AutoModelForCausalLM

    out = cache_dir() / "models" / f"random-{shape}-seed{seed}"
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # 8B init: seconds on GPU
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(shape_config(shape), dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    del model
    tmp.rename(out)
    return out


def bnb_config(qcfg: QuantConfig):
    """BitsAndBytesConfig for 4-bit, or None for the 16-bit reference."""
    if qcfg.type == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=qcfg.type,
        bnb_4bit_use_double_quant=qcfg.double_quant,
        bnb_4bit_compute_dtype=DTYPES[qcfg.compute_dtype],
    )


def load_base(weights: str, qcfg: QuantConfig, *, device: str):
    """Load and (unless quant.type=none) quantize the base model onto `device`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        weights,
        quantization_config=bnb_config(qcfg),
        dtype=DTYPES[qcfg.compute_dtype],
        device_map={"": device},
        attn_implementation="sdpa",
    )
    _keep_cpu_4bit_layout(model)
    return model


def _keep_cpu_4bit_layout(model) -> None:
    """bitsandbytes 0.50 repacks a 4-bit weight in place for its AVX512-BF16 CPU kernel at the
    first no-grad eval-mode forward and never unpacks it; later training forwards then read the
    packed layout wrongly (measured: other loss, LoRA grad norm / 35). Any held-out eval before
    training ends (eval_every_steps, a pooled base's next trial) would corrupt training, so keep
    the plain layout: exact, and no slower here (135M eval forward 1.11 s vs 1.29 s packed)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def attach_adapter(
    model, lcfg: LoraConfig, qcfg: QuantConfig, *, targets: Any, checkpointing: bool, seed: int,
    custom_modules: dict | None = None,
):  # fmt: skip
    """prepare_model_for_kbit_training (4-bit only) then a peft LoRA/rsLoRA/DoRA adapter.

    `custom_modules` maps base layer types to the LoRA layer classes peft builds for them (the
    engine's own fused layer); `seed` fixes the adapter's random init (LoRA A), the same in a
    sweep's fifth trial as in a fresh process, so trials that differ in one setting start alike.
    """
    import transformers
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    ckpt_kwargs = {"use_reentrant": False}
    if qcfg.type != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs=ckpt_kwargs,
        )
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        model.enable_input_require_grads()
    peft_cfg = PeftLoraConfig(
        r=lcfg.r,
        lora_alpha=lcfg.alpha,
        lora_dropout=lcfg.dropout,
        target_modules=targets,
        use_rslora="rslora" in lcfg.variant,
        use_dora="dora" in lcfg.variant,
        bias=lcfg.bias,
        task_type="CAUSAL_LM",
    )
    if custom_modules:
        peft_cfg._register_custom_module(custom_modules)
    transformers.set_seed(seed)
    model = get_peft_model(model, peft_cfg, autocast_adapter_dtype=lcfg.dtype == "fp32")
    if lcfg.dtype != "fp32":
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(DTYPES[lcfg.dtype])
    return model


def has_fused_lm_head(model) -> bool:
    """Whether the trainer patched the base model's forward with TRL's fused, chunked LM head
    (log-probs per chunk, no [tokens, vocab] logits: llama3-8b b4, 16.55 vs 28.8 GiB)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    func = getattr(base.forward, "__func__", base.forward)
    return getattr(getattr(func, "__code__", None), "co_name", "") == "_fused_forward"


def count_params(model) -> dict[str, float]:
    """Trainable and total parameters. bnb packs two 4-bit values per uint8 element, so a
    Params4bit holds numel/2 elements for numel weights; count logical weights."""
    total = trainable = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n = int(torch.Size(param.quant_state.shape).numel()) if param.quant_state else n * 2
        total += n
        trainable += n if param.requires_grad else 0
    return {"total": total, "trainable": trainable, "trainable_pct": 100.0 * trainable / total}


def shape_summary(mcfg: ModelConfig, hf_config, *, random_weights: bool) -> dict[str, Any]:
    """The shape facts the reports and the memory model need."""

    def get(key: str, default: Any = None) -> Any:
        return getattr(hf_config, key, default)

    return {
        "name": mcfg.name,
        "source": mcfg.source,
        "shape": mcfg.shape if mcfg.source == "random" else None,
        "random_weights": random_weights,
        "architecture": (get("architectures") or [hf_config.model_type])[0],
        "hidden_size": get("hidden_size"),
        "num_layers": get("num_hidden_layers"),
        "intermediate_size": get("intermediate_size"),
        "vocab_size": get("vocab_size"),
        "num_heads": get("num_attention_heads"),
        "num_kv_heads": get("num_key_value_heads"),
        "tie_word_embeddings": get("tie_word_embeddings"),
    }


def load_tokenizer(source: str):
    """The tokenizer, with a pad token (the EOS when the model defines none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def detach_adapter(peft_model):
    """Remove the LoRA layers and return the quantized base for the next trial (no reload)."""
    base = peft_model.unload()
    for param in base.parameters():
        param.requires_grad_(False)
    return base


def merge_to_16bit(weights: str, adapter_dir: Path, out_dir: Path, *, device: str) -> Path:
    """Merge the adapter into a fresh 16-bit copy of the base (bf16 where the device supports it;
    never fp16 when bf16 is available)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    bf16_ok = device == "cpu" or torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16_ok else torch.float16
    base = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype, device_map={"": device})
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir)
    load_tokenizer(str(adapter_dir)).save_pretrained(out_dir)
    return out_dir
