"""Where the harness keeps what it builds once and reuses: converted models, random weights."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the harness cache: $HARNESS_CACHE, else ~/.cache/qlora-harness."""
    root = os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "qlora-harness"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data_dir() -> Path:
    """Directory of the offline datasets: $HARNESS_DATA_DIR, else ../shared/data beside the repo."""
    env = os.environ.get("HARNESS_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"
