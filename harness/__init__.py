"""qlora-harness: sweep QLoRA fine-tuning settings and measure what each one costs and buys."""

__version__ = "0.1.0"
