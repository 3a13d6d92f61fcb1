"""Evaluation settings shared by the toy checks and the ground-truth scoring."""

from dataclasses import dataclass, field

from omegaconf import MISSING

from circuitdecomp.frozen import Frozen, check


@dataclass
class DenseSpec(Frozen):
    """Modules whose target CI solution is `k` components that are on for every input."""

    pattern: str = MISSING
    k: int = MISSING


@dataclass
class EvaluationConfig(Frozen):
    """How decompositions are scored."""

    one_hot_magnitude: float = 0.75  # input value for the single-feature CI patterns
    tolerance: float = 0.1  # CI counts as on above 1 - tol, off below tol
    # Module patterns expected to be one component per feature; the first match gives the headline MMCS/ML2R.
    identity_ci: list[str] = field(default_factory=list)
    dense_ci: list[DenseSpec] = field(default_factory=list)
    live_norm: float = 0.1  # a component is live if ||U_c|| ||V_c|| exceeds this and its CI ever exceeds ci_alive
    n_eval_batches: int = 4

    def __post_init__(self) -> None:
        check(0 < self.tolerance < 0.5, f"evaluation.tolerance={self.tolerance} must be in (0, 0.5)")
        super().__post_init__()
