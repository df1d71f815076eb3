"""The one error type users see: a bad setting, named with its field, value and what is allowed."""


class ConfigError(ValueError):
    """A bad setting. The message names the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r}: {allowed}")
