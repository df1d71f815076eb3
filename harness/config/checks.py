"""The checks every schema uses; each raises ConfigError naming field, value and what is allowed."""

from harness.errors import ConfigError


def one_of(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(name, value, f"allowed: {', '.join(map(str, allowed))}")


def positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(name, value, "must be > 0")
