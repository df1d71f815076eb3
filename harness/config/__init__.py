"""The typed trial config: schema, Hydra registration, migration of old keys."""

from harness.config.schema import *  # noqa: F403
