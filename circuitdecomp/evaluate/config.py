"""Evaluation settings shared by the toy checks and the ground-truth scoring."""

from dataclasses import dataclass, field

from omegaconf import MISSING

from circuitdecomp.frozen import Frozen, check


@dataclass
class DenseSpec(Frozen):
    """Modules whose target CI solution is `k` components that are on for every input."""

    pattern: str = MISSING
    k: int = MISSING

    def __post_init__(self) -> None:
        check(bool(self.pattern), "evaluation.dense_ci: a pattern is empty")
        check(self.k >= 1, f"evaluation.dense_ci: k={self.k} for '{self.pattern}' must be >= 1")
        super().__post_init__()


@dataclass
class RecoveryConfig(Frozen):
    """Thresholds of the ground-truth scoring (`evaluate/recovery.py`); |cos| 0.9/0.99 and probe R² 0.9 are in the key names."""

    coef_min_r: float = 0.9  # a feature's coefficient counts as recovered at Pearson r >= this ...
    coef_slope_tol: float = 0.2  # ... and |slope - 1| <= this
    probe_max_units: int = 64  # k-sparse read-out cap; features not reaching R² 0.9 count as this many units
    spurious_cos: float = 0.5  # a unit is spurious when its best |cos| with every true feature is below this
    dead_tol: float = 0.0  # a unit is dead when its |value| never exceeds this on the inputs
    # Units with less of their norm inside the subspace are left out of the subspace scores: renormalising a
    # near-zero projection would turn noise into a unit-length direction.
    min_subspace_norm: float = 0.1

    def __post_init__(self) -> None:
        check(0 < self.coef_min_r <= 1, f"evaluation.recovery.coef_min_r={self.coef_min_r} must be in (0, 1]")
        check(self.coef_slope_tol > 0, f"evaluation.recovery.coef_slope_tol={self.coef_slope_tol} must be > 0")
        check(self.probe_max_units >= 1, f"evaluation.recovery.probe_max_units={self.probe_max_units} must be >= 1")
        check(0 < self.spurious_cos < 1, f"evaluation.recovery.spurious_cos={self.spurious_cos} must be in (0, 1)")
        check(self.dead_tol >= 0, f"evaluation.recovery.dead_tol={self.dead_tol} must be >= 0")
        check(
            0 <= self.min_subspace_norm < 1, f"evaluation.recovery.min_subspace_norm={self.min_subspace_norm} must be in [0, 1)"
        )
        super().__post_init__()


@dataclass
class EvaluationConfig(Frozen):
    """How decompositions are scored."""

    # The toys' checks (toys/evaluate.py; the animal world's pipeline reads only n_inputs and recovery):
    one_hot_magnitude: float = 0.75  # input value for the single-feature CI patterns
    tolerance: float = 0.1  # CI counts as on above 1 - tol, off below tol
    # Module patterns expected to be one component per feature; the first match gives the headline MMCS/ML2R.
    identity_ci: list[str] = field(default_factory=list)
    dense_ci: list[DenseSpec] = field(default_factory=list)
    live_norm: float = 0.1  # a component is live if ||U_c|| ||V_c|| exceeds this and its CI ever exceeds ci_alive
    n_inputs: int = 4096  # animal world: held-out inputs (topped up with training rows) for checks and recovery scores
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)

    def __post_init__(self) -> None:
        check(0 < self.tolerance < 0.5, f"evaluation.tolerance={self.tolerance} must be in (0, 0.5)")
        check(self.one_hot_magnitude > 0, f"evaluation.one_hot_magnitude={self.one_hot_magnitude} must be > 0")
        check(self.live_norm >= 0, f"evaluation.live_norm={self.live_norm} must be >= 0")
        check(self.n_inputs >= 1, f"evaluation.n_inputs={self.n_inputs} must be >= 1")
        super().__post_init__()
