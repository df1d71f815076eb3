"""Compose a trial's config exactly as `python -m harness` does, without running Hydra's app:
for sweeps, studies and the benchmark's reference loop."""

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from harness.config.schema import TrialConfig, register_configs, to_trial_config


def compose_trial(overrides: list[str]) -> tuple[TrialConfig, dict]:
    """(validated TrialConfig, group choices) for these overrides, exactly as the CLI sees them.
    Raises ConfigError (or OmegaConf's errors for unknown keys) before any model is loaded."""
    from harness.cli import CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        dcfg: DictConfig = compose("config", overrides=overrides, return_hydra_config=True)
    choices = {k: v for k, v in dcfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(dcfg):
        del dcfg["hydra"]
    return to_trial_config(dcfg), choices
