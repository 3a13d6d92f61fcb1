"""Config of the SPD paper's toy targets: the Toy Model of Superposition and the residual MLP."""

from dataclasses import dataclass

from circuitdecomp.frozen import check
from circuitdecomp.target.config import TargetConfig, TargetKind


@dataclass
class TMSConfig(TargetConfig):
    """Toy Model of Superposition: x -> ReLU(W^T W x + b), W [n_hidden, n_features], tied weights."""

    kind: TargetKind = TargetKind.tms
    n_features: int = 5  # TMS 5-2 (the SPD paper's Table 1); experiment=tms_40-10 sets 40 and 10
    n_hidden: int = 2
    feature_prob: float = 0.05  # each feature is on with this probability (the paper's)
    max_attempts: int = 8  # re-train with new seeds until every feature is reproduced
    check_features: bool = True  # refuse a target that misses features (off only for quick smoke runs)

    def __post_init__(self) -> None:
        check(0 < self.feature_prob <= 1, f"target.feature_prob={self.feature_prob} must be in (0, 1]")
        for name in ("n_features", "n_hidden", "max_attempts"):
            check(getattr(self, name) >= 1, f"target.{name}={getattr(self, name)} must be >= 1")
        super().__post_init__()


@dataclass
class ResidMLPConfig(TargetConfig):
    """Compressed computation: y = x + ReLU(x) read off a residual stream with a fixed random embedding."""

    kind: TargetKind = TargetKind.resid_mlp
    # the SPD paper's 1-layer residual MLP: 100 features in a 1000-d residual stream, 50 ReLU neurons
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
        for name in ("n_features", "d_embed", "d_mlp", "n_layers"):
            check(getattr(self, name) >= 1, f"target.{name}={getattr(self, name)} must be >= 1")
        super().__post_init__()
