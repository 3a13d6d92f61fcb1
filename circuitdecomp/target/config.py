"""Config of the models that get decomposed: the toy targets and the animal-world transformer."""

from dataclasses import dataclass
from enum import Enum

from circuitdecomp.frozen import Frozen, check


class TargetKind(str, Enum):
    tms = "tms"
    resid_mlp = "resid_mlp"
    trained = "trained"  # the animal-world transformer, trained
    planted = "planted"  # the animal-world transformer, weights set by construction


@dataclass
class TargetConfig(Frozen):
    """Base of every target config; `kind` picks the model family."""

    kind: TargetKind = TargetKind.tms
    train_steps: int = 10_000
    batch_size: int = 1024
    lr: float = 5e-3

    def __post_init__(self) -> None:
        check(self.train_steps >= 0, f"target.train_steps={self.train_steps} must be >= 0")
        check(self.batch_size >= 1, f"target.batch_size={self.batch_size} must be >= 1")
        check(self.lr > 0, f"target.lr={self.lr} must be > 0")
        super().__post_init__()


@dataclass
class TMSConfig(TargetConfig):
    """Toy Model of Superposition: x -> ReLU(W^T W x + b), W [n_hidden, n_features], tied weights."""

    kind: TargetKind = TargetKind.tms
    n_features: int = 5
    n_hidden: int = 2
    feature_prob: float = 0.05
    max_attempts: int = 8  # re-train with new seeds until every feature is reproduced
    check_features: bool = True  # refuse a target that misses features (off only for quick smoke runs)

    def __post_init__(self) -> None:
        check(0 < self.feature_prob <= 1, f"target.feature_prob={self.feature_prob} must be in (0, 1]")
        check(self.n_hidden >= 1 and self.n_features >= 1, "target.n_hidden and target.n_features must be >= 1")
        super().__post_init__()


@dataclass
class ResidMLPConfig(TargetConfig):
    """Compressed computation: y = x + ReLU(x) read off a residual stream with a fixed random embedding."""

    kind: TargetKind = TargetKind.resid_mlp
    n_features: int = 100
    d_embed: int = 1000
    d_mlp: int = 50
    n_layers: int = 1
    feature_prob: float = 0.01
    train_steps: int = 1000
    batch_size: int = 2048
    lr: float = 3e-3

    def __post_init__(self) -> None:
        check(0 < self.feature_prob <= 1, f"target.feature_prob={self.feature_prob} must be in (0, 1]")
        super().__post_init__()
