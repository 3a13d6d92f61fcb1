"""Settings of the features-from-circuits stage."""

from dataclasses import dataclass, field
from enum import Enum

from circuitdecomp.frozen import Frozen, check


def _reads() -> list[str]:
    return ["*attn.q", "*attn.k", "*attn.v", "*mlp.in", "unembed"]


def _writes() -> list[str]:
    return ["*attn.o", "*mlp.out"]


class Projection(str, Enum):
    """Where candidate directions are projected before merging (a component's direction has mass in directions the
    data never visits, and nothing in training constrains it there)."""

    none = "none"  # raw V_c / U_c as the decomposition returns them
    data = "data"  # the span of the residuals seen at the read-out position on the fit inputs: generic, from data
    tokens = "tokens"  # the span of the embedding rows of the read-out tokens: specific to this world (entity subspace)


@dataclass
class FeaturesConfig(Frozen):
    """Which components count as circuits' read / write directions, and how they become features.

    A component is *live* when its CI exceeds `live_ci` on some input and *active* on an input when its CI
    exceeds `active_ci`. Directions are projected (`projection`) before merging; a direction with less than
    `min_inside` of its norm inside the projection's span reads something else and is not a feature. The pipeline
    scores the features of every projection (`recovery/` for this one, `recovery_raw/`, `recovery_tokens/`).
    """

    read_patterns: list[str] = field(default_factory=_reads)  # modules whose V_c read the residual stream
    write_patterns: list[str] = field(default_factory=_writes)  # modules whose U_c write it
    live_ci: float = 0.1  # a component is live above this CI on some input (as decomposition.ci_alive_threshold)
    active_ci: float = 0.5  # and active on an input above this one (the rounded-CI check's cut)
    # the headline's projection; the pipeline scores all three (raw directions lost every attribute: results log,
    # session 9; data = tokens on the animal world)
    projection: Projection = Projection.data
    # read rows of these modules feed a ReLU: the neuron control (features/controls.py) takes the positive part of
    # their activation as its stand-in for causal importance (|activation| elsewhere)
    rectified_reads: list[str] = field(default_factory=lambda: ["*mlp.in"])
    # 0.3 dropped real attribute readers of the trained target: a unit gated off the 31-49 other questions spends
    # most of its norm on the question code (results log, session 7); with 0.1 the spurious share
    # stayed the same or fell on four runs
    min_inside: float = 0.1
    merge_cos: float = 0.95  # directions this close (|cos|, after projection) are one feature read by several circuits
    # A feature's value is its projection, gated at the projection that best predicts where one of its circuits is
    # active, when that prediction reaches this balanced accuracy (a look-up: sparse; a linear read-out: dense).
    gate: bool = True
    gate_min_accuracy: float = 0.9
    # Inputs the features are fitted on (live components, gates): every input of the world up to this many, else a
    # sample holding every (question type, entity) pair. A look-up's gate needs its animal's fact inputs, which a
    # held-out batch of a large world mostly lacks (demo: 300 held-out fact inputs for 512 animals).
    fit_max_inputs: int = 40000

    def __post_init__(self) -> None:
        check(0 <= self.live_ci < 1, f"features.live_ci={self.live_ci} must be in [0, 1)")
        check(0 < self.active_ci <= 1, f"features.active_ci={self.active_ci} must be in (0, 1]")
        check(0 <= self.min_inside < 1, f"features.min_inside={self.min_inside} must be in [0, 1)")
        check(0.5 <= self.gate_min_accuracy <= 1, f"features.gate_min_accuracy={self.gate_min_accuracy} must be in [0.5, 1]")
        check(self.fit_max_inputs >= 1, f"features.fit_max_inputs={self.fit_max_inputs} must be >= 1")
        check(0 < self.merge_cos <= 1, f"features.merge_cos={self.merge_cos} must be in (0, 1]")
        check(bool(self.read_patterns) or bool(self.write_patterns), "features.read_patterns and write_patterns are both empty")
        super().__post_init__()
