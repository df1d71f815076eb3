"""Where the harness keeps what it builds once and reuses (converted models, random weights) and
where it writes what a user runs (records, sweeps, studies, reports, pinned experiments)."""

import os
from pathlib import Path

OUTPUT_ROOT_ENV = "HARNESS_OUTPUT_ROOT"


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


def output_root() -> Path:
    """Root of everything a run writes: $HARNESS_OUTPUT_ROOT, else `outputs` under the current
    directory (git-ignored in this repo). conf/config.yaml reads the same variable for Hydra's
    run and sweep dirs and searches it for pinned experiments (`<root>/experiment/<name>.yaml`)."""
    return Path(os.environ.get(OUTPUT_ROOT_ENV) or "outputs")


def reports_dir() -> Path:
    """`<output root>/reports`: `python -m harness.report` writes `<name>/` here by default."""
    return output_root() / "reports"


def studies_dir() -> Path:
    """`<output root>/studies`: one folder and one SQLite file per Optuna study by default."""
    return output_root() / "studies"


def experiments_dir() -> Path:
    """`<output root>/experiment`: pinned configs. Hydra looks for `experiment=<name>` in an
    `experiment/` folder of each config root it searches, and the output root is one of them."""
    return output_root() / "experiment"
