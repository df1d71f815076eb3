"""Typed trial config. YAML (conf/) holds values; these dataclasses hold types and validate.

Hydra composes conf/ onto the `trial_schema` registered here, so a misspelt key fails at compose
time. `to_trial_config` turns the DictConfig into a `TrialConfig` once, at the entry point, running
every `__post_init__` check; nothing below the entry ever sees a DictConfig.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from harness.config.checks import one_of as _one_of
from harness.config.checks import positive as _positive
from harness.config.engine import EngineConfig
from harness.errors import ConfigError

MODEL_SOURCES = ("embedded", "local", "gguf", "hub", "random")
QUANT_TYPES = ("nf4", "fp4", "none")
COMPUTE_DTYPES = ("bf16", "fp16")
TARGET_PRESETS = ("all-linear", "attention", "mlp")
VARIANTS = ("lora", "rslora", "dora", "dora+rslora")
BIASES = ("none", "all", "lora_only")
ADAPTER_DTYPES = ("fp32", "bf16")
OPTIMIZERS = (
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adamw_8bit",
    "adamw_torch",
    "adamw_torch_fused",
    "sgd",
)
ON_UNSUPPORTED = ("fail", "fallback")
DATA_SOURCES = ("embedded", "alpaca", "hub")
PROMPT_FORMATS = ("auto", "chat", "alpaca")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
PACKING_STRATEGIES = ("bfd", "wrapped")
DEVICES = ("auto", "cpu", "cuda")
SCORED_FORMS = ("4bit", "merged")
MIN_SEQ_LEN = 64  # tokens: 29 of Alpaca template + an instruction and its answer


@dataclass
class ModelConfig:
    """Which base model to tune."""

    name: str = "smollm2-135m"  # label in records and reports
    source: str = "embedded"  # embedded | local (HF dir) | gguf (file) | hub (id) | random (shape)
    path: str | None = None  # local dir, GGUF file or hub id; unused for embedded/random
    shape: str | None = None  # random weights: a named real architecture (harness/shapes.py)
    revision: str | None = None  # hub only

    def __post_init__(self) -> None:
        _one_of("model.source", self.source, MODEL_SOURCES)
        if self.source in ("local", "gguf", "hub") and not self.path:
            raise ConfigError("model.path", self.path, f"required when model.source={self.source}")
        if self.source == "random":
            from harness.assets.shapes import SHAPES

            _one_of("model.shape", self.shape, tuple(SHAPES))


@dataclass
class QuantConfig:
    """bitsandbytes 4-bit quantization of the frozen base weights."""

    type: str = "nf4"  # nf4 | fp4 | none (16-bit LoRA: the unquantized reference)
    double_quant: bool = True  # quantize the absmax constants too: 0.5 -> ~0.127 bit/param
    compute_dtype: str = "bf16"  # dtype of the de-quantized matmuls

    def __post_init__(self) -> None:
        _one_of("quant.type", self.type, QUANT_TYPES)
        _one_of("quant.compute_dtype", self.compute_dtype, COMPUTE_DTYPES)


@dataclass
class LoraConfig:
    """The adapter (peft)."""

    r: int = 16  # rank: higher = more capacity, more memory
    alpha: float = 32.0  # scale = alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = 0.05
    targets: Any = "all-linear"  # all-linear | attention | mlp | [explicit module names]
    variant: str = "lora"  # lora | rslora | dora | dora+rslora
    bias: str = "none"
    dtype: str = "fp32"  # adapter weight dtype; fp32 is peft's default

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError("lora.r", self.r, "must be an integer > 0")
        _positive("lora.alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ConfigError("lora.dropout", self.dropout, "must be in [0, 1)")
        _one_of("lora.variant", self.variant, VARIANTS)
        _one_of("lora.bias", self.bias, BIASES)
        _one_of("lora.dtype", self.dtype, ADAPTER_DTYPES)
        if isinstance(self.targets, str):
            _one_of("lora.targets", self.targets, TARGET_PRESETS)
        elif not (
            isinstance(self.targets, list | tuple)
            and self.targets
            and all(isinstance(t, str) and t for t in self.targets)
        ):
            raise ConfigError(
                "lora.targets", self.targets, f"one of {TARGET_PRESETS} or a list of module names"
            )
        else:
            self.targets = list(self.targets)


@dataclass
class OptimConfig:
    """Optimizer. Paged and 8-bit ones come from bitsandbytes."""

    name: str = "paged_adamw_8bit"
    weight_decay: float = 0.0
    on_unsupported: str = "fallback"  # fail | fallback: what to do if the device can't run it
    fallback: str = "auto"  # auto: the unpaged twin of a paged optimizer, else adamw_torch

    def __post_init__(self) -> None:
        _one_of("optim.name", self.name, OPTIMIZERS)
        _one_of("optim.on_unsupported", self.on_unsupported, ON_UNSUPPORTED)
        _one_of("optim.fallback", self.fallback, ("auto", *OPTIMIZERS))
        if self.weight_decay < 0:
            raise ConfigError("optim.weight_decay", self.weight_decay, "must be >= 0")


@dataclass
class DataConfig:
    """Instruction data, prompt format and tokenization."""

    name: str = "embedded"  # label in records
    source: str = "embedded"  # embedded (generated) | alpaca (JSON/JSONL file) | hub (dataset id)
    path: str | None = None  # alpaca file, or hub dataset id
    split: str = "train"  # hub only
    max_examples: int | None = None  # cap on examples read (after shuffling by seed)
    num_train: int = 2000  # embedded generator only
    num_heldout: int = 64  # held-out examples (loss, perplexity, embedded exact-match task)
    prompt_format: str = "auto"  # auto: the model's chat template if it has one, else Alpaca
    max_seq_len: int = 256
    packing: bool = False
    packing_strategy: str = "bfd"  # bfd: whole examples, padding-free | wrapped: fixed-length rows
    seed: int = 0  # shuffling and held-out split

    def __post_init__(self) -> None:
        _one_of("data.source", self.source, DATA_SOURCES)
        _one_of("data.prompt_format", self.prompt_format, PROMPT_FORMATS)
        if self.source in ("alpaca", "hub") and not self.path:
            raise ConfigError("data.path", self.path, f"required when data.source={self.source}")
        if not isinstance(self.max_seq_len, int) or self.max_seq_len < MIN_SEQ_LEN:
            raise ConfigError(
                "data.max_seq_len", self.max_seq_len,
                f"an integer >= {MIN_SEQ_LEN}: the Alpaca prompt template alone is 29 tokens "
                "(SmolLM2 tokenizer), and a prompt + answer must fit",
            )  # fmt: skip
        _one_of("data.packing_strategy", self.packing_strategy, PACKING_STRATEGIES)
        _positive("data.num_heldout", self.num_heldout)
        _positive("data.num_train", self.num_train)
        if self.max_examples is not None:
            _positive("data.max_examples", self.max_examples)


@dataclass
class TrainConfig:
    """The training loop (TRL SFTTrainer)."""

    lr: float = 2e-4
    max_steps: int | None = 40  # > 0; epochs is used only when max_steps is null
    epochs: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    warmup_steps: int = 4
    scheduler: str = "linear"
    max_grad_norm: float = 0.3  # QLoRA paper value
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    timing_warmup_steps: int = 2  # steps excluded from throughput (allocator, autotune, caches)
    # N steps profiled right after the timing warm-up (torch.profiler), left out of throughput:
    # the record's `profile` (GPU busy share, launches and top kernels per step) and a trace file
    profile_steps: int = 0
    logging_steps: int = 1
    eval_every_steps: int = 0  # held-out loss every N steps (0 = only at the end); feeds pruning
    # extra transformers TrainerCallbacks, as module.Class import paths (your tracker, alerts)
    callbacks: list[str] = field(default_factory=list)
    save_adapter: bool = True
    merge: bool = False  # also write a merged 16-bit model
    generations: int = 0  # greedy samples on fixed prompts, base vs tuned

    def __post_init__(self) -> None:
        if self.max_steps is None and self.epochs is None:
            raise ConfigError("train.max_steps", None, "set max_steps or epochs")
        if self.max_steps is not None and (
            not isinstance(self.max_steps, int) or self.max_steps <= 0
        ):
            raise ConfigError("train.max_steps", self.max_steps, "must be an integer > 0")
        if self.epochs is not None:
            _positive("train.epochs", self.epochs)
        if not math.isfinite(self.lr):
            raise ConfigError("train.lr", self.lr, "a finite number > 0")
        _positive("train.lr", self.lr)
        _positive("train.batch_size", self.batch_size)
        _positive("train.grad_accum", self.grad_accum)
        if self.warmup_steps < 0:
            raise ConfigError("train.warmup_steps", self.warmup_steps, "must be >= 0")
        _one_of("train.scheduler", self.scheduler, SCHEDULERS)
        _positive("train.max_grad_norm", self.max_grad_norm)
        _one_of("train.device", self.device, DEVICES)
        self.callbacks = list(self.callbacks)
        if self.timing_warmup_steps < 0:
            raise ConfigError("train.timing_warmup_steps", self.timing_warmup_steps, "must be >= 0")
        steps = self.profile_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ConfigError("train.profile_steps", steps, "must be an integer >= 0 (0 = off)")
        left = max((self.max_steps or 0) - self.timing_warmup_steps, 0)
        if self.max_steps is not None and steps > left:
            raise ConfigError(
                "train.profile_steps", steps,
                f"at most {left}: the steps train.max_steps={self.max_steps} leaves after "
                f"train.timing_warmup_steps={self.timing_warmup_steps}",
            )  # fmt: skip


@dataclass
class EvalConfig:
    """Held-out loss/perplexity and lm-eval tasks."""

    tasks: list[str] = field(default_factory=lambda: ["qh_embedded"])
    limit: float | None = 32  # items per task (int) or fraction (<1); null = all
    num_fewshot: int | None = None
    batch_size: str = "auto"  # an int, or auto: lm-eval's probe on CUDA, 8 on the CPU
    data_dir: str | None = None  # offline datasets; null = $HARNESS_DATA_DIR or ../shared/data
    base_scores: bool = True  # also score the base model (cached per base model + quant)
    include_path: str | None = None  # a folder of your own lm-eval task YAMLs (docs/scores.md)
    scored_form: str = "4bit"  # 4bit: the model as trained, in memory | merged: merged 16-bit

    def __post_init__(self) -> None:
        if self.limit is not None:
            _positive("eval.limit", self.limit)
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError("eval.num_fewshot", self.num_fewshot, "an integer >= 0, or null")
        self.tasks = list(self.tasks)
        _one_of("eval.scored_form", self.scored_form, SCORED_FORMS)
        bs = str(self.batch_size)
        if not (bs.isdigit() and int(bs) > 0) and bs.split(":")[0] != "auto":
            raise ConfigError("eval.batch_size", self.batch_size, "a positive int or auto")


@dataclass
class TrialConfig:
    """One trial: the sub-configs, passed separately to each stage."""

    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


def register_configs() -> None:
    """Register the schema so Hydra type-checks every composed config against it."""
    cs = ConfigStore.instance()
    cs.store(name="trial_schema", node=_HydraRoot)


@dataclass
class _HydraRoot(TrialConfig):
    """The composed root: the trial plus Hydra-side keys that are not part of a trial."""

    sweep: Any = None  # sweeps/ overlays (Optuna); read by the sweep layer only
    out_dir: str | None = None  # override of the record dir; default: the Hydra job dir


TRIAL_GROUPS = ("model", "quant", "lora", "optim", "data", "train", "eval", "engine")


def to_trial_config(cfg: DictConfig | dict) -> TrialConfig:
    """Turn the composed config into a validated TrialConfig (raises ConfigError)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    parts = {g: cfg.get(g) or {} for g in TRIAL_GROUPS}
    return TrialConfig(
        model=ModelConfig(**parts["model"]),
        quant=QuantConfig(**parts["quant"]),
        lora=LoraConfig(**parts["lora"]),
        optim=OptimConfig(**parts["optim"]),
        data=DataConfig(**parts["data"]),
        train=TrainConfig(**parts["train"]),
        eval=EvalConfig(**parts["eval"]),
        engine=EngineConfig(**parts["engine"]),
    )
