"""Config dataclasses that Hydra can compose but library code cannot mutate."""

import dataclasses


class Frozen:
    """Mixin for config dataclasses: immutable once `__init__` finishes.

    `@dataclass(frozen=True)` cannot be used: OmegaConf marks frozen schemas read-only, and Hydra
    then fails to merge group options into them. Sealing in `__post_init__` gives the same guarantee
    to everything downstream of `OmegaConf.to_object`. Subclasses that validate in `__post_init__`
    must call `super().__post_init__()` last.
    """

    def __post_init__(self) -> None:
        object.__setattr__(self, "_sealed", True)

    def __setattr__(self, name: str, value: object) -> None:
        if getattr(self, "_sealed", False):
            raise dataclasses.FrozenInstanceError(
                f"{type(self).__name__}.{name} is read-only; use dataclasses.replace(cfg, {name}=...)"
            )
        object.__setattr__(self, name, value)


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; the message names the key, the value and the fix."""


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds: config validation in one line."""
    if not condition:
        raise ConfigError(message)
