"""The synthetic animal/attribute world's config (issue 5 fills in the generator)."""

from dataclasses import dataclass

from circuitdecomp.frozen import Frozen, check


@dataclass
class WorldConfig(Frozen):
    """Sizes of the world; every combination must work."""

    name: str = "demo"
    n_attributes: int = 32
    n_animals: int = 256
    d_model: int = 64

    def __post_init__(self) -> None:
        check(self.n_animals >= 1, f"world.n_animals={self.n_animals} must be >= 1")
        check(self.n_attributes >= 1, f"world.n_attributes={self.n_attributes} must be >= 1")
        check(self.n_attributes <= self.d_model,
              f"world.n_attributes={self.n_attributes} exceeds world.d_model={self.d_model}: attribute directions "
              "must be orthonormal in the residual stream; raise world.d_model or lower world.n_attributes")
        super().__post_init__()
