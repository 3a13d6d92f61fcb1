"""Config of the models that get decomposed: the base every target config shares, and the animal-world transformer.

The toy targets' configs (TMS, residual MLP) live with the toys, in `circuitdecomp/toys/config.py`.
"""

import math
from dataclasses import dataclass, field
from enum import Enum

from circuitdecomp.frozen import Frozen, check
from circuitdecomp.world.question_types import check_mix, default_mix


class TargetKind(str, Enum):
    tms = "tms"
    resid_mlp = "resid_mlp"
    trained = "trained"  # the animal-world transformer, trained from a standard init with no ground truth (the default)
    templated = "templated"  # trained, but look-up units start at the true animal directions (ground truth in the init)
    planted = "planted"  # the animal-world transformer, weights set by construction (the positive control)


@dataclass
class TargetConfig(Frozen):
    """Base of every target config; `kind` picks the model family."""

    kind: TargetKind = TargetKind.tms  # the model family; each schema in configs/target/ sets its own
    train_steps: int = 10_000  # the TMS toy's training (the SPD paper's recipe, as the rest of TMSConfig)
    batch_size: int = 1024
    lr: float = 5e-3

    def __post_init__(self) -> None:
        check(self.train_steps >= 0, f"target.train_steps={self.train_steps} must be >= 0")
        check(self.batch_size >= 1, f"target.batch_size={self.batch_size} must be >= 1")
        check(self.lr > 0, f"target.lr={self.lr} must be > 0")
        check(math.isfinite(self.lr), f"target.lr={self.lr} must be finite")
        super().__post_init__()


def default_question_mix() -> dict[str, float]:
    """Target training's question mix: each registered type's `target_weight` (world/question_types.py)."""
    return default_mix("target")


def default_decompose_mix() -> dict[str, float]:
    """The decomposition's question mix (`decompose_mix`): each registered type's `decompose_weight`."""
    return default_mix("decompose")


@dataclass
class TransformerTargetConfig(TargetConfig):
    """The animal-world transformer (TransformerLens, built natively): trained, templated or planted.

    `trained` reads no ground truth in its construction (tests/test_ground_truth_free.py checks it with a world
    whose ground-truth tensors raise when read): every trainable weight starts from TransformerLens' init, and the
    knobs that use the world's directions or reshape the init (`animal_templates`, `units_per_question`,
    `context_init_norm`) are refused; `templated` allows them (docs/targets.md). The defaults are the `trained`
    recipe (`configs/target/trained.yaml`); `planted` reads none of the training knobs (its weights are set by
    construction). The penalties on template units and question groups (`lookup_gate_l1`, `question_gate_l1`) are
    refused where there are none: their terms would be 0.

    Architecture (shared by all): `n_layers` blocks of attention + ReLU MLP, no LayerNorm. Entity embedding
    rows are fixed at the world's directions; attention reads and writes only the context subspace, so the
    entity's residual at the read-out position is exactly its embedding plus question information.
    """

    kind: TargetKind = TargetKind.trained
    n_layers: int = 1  # every config's; 2 is built and trained too (Experimental: no logged run)
    n_heads: int = 1
    d_mlp: int | None = None  # None: width_factor x (n_animals + 4 n_attribute_questions + n_facts)
    # trained: 1.0 (643 units on world=demo) reaches held-out attribute accuracy 0.990, 2.2x 0.986 (results log,
    # session 10); templated uses 2.2, its units beyond the animal templates need the width (session 3)
    width_factor: float = 1.0
    train_steps: int = 3000  # trained: 3000 (results log, session 10); templated: 1500
    batch_size: int = 1024
    lr: float = 5e-3  # the peak: linear warm-up, then cosine decay to 5% (results log, session 3)
    weight_decay: float = 0.1  # AdamW's; 0.5 broke the templated look-ups (results log, session 3)
    warmup_steps: int = 100  # linear learning-rate warm-up
    label_smoothing: float = 0.05  # caps logit saturation: the optimum has finite margins
    # Shaping (docs/results_log.md, 2026-11-25 "Trained target, round 2", measures each one):
    animal_templates: bool = False  # templated only: the first n_animals units start as detectors of one animal each
    # templated only (not read without animal_templates): a template unit starts firing above this cosine with its
    # animal (0.9: 1.07 animals per look-up unit, 0.85: 1.23; results log, session 3)
    template_threshold: float = 0.9
    context_init_norm: float = 0.0  # templated only (0: TL's init): question information's norm at the read-out at init
    act_l1: float = 0.015  # L1 on every unit's activations on fact questions: pressure towards one unit per animal
    # templated only, refused without animal_templates: L1 on template units' activations on other questions, so
    # look-ups stay off there (templated: 0.03; 0.01 and 0 lost attribute accuracy, results log, session 3)
    lookup_gate_l1: float = 0.0
    attribute_l1: float = 0.0  # L1 on the other units' activations on other questions: fewer units per attribute question
    # > 0: the units after the templates come in groups of this many per attribute question token; a group starts
    # reading no entity direction and pays `question_gate_l1` for activity on any other question (results log,
    # session 7). 0: the units after the templates are shared by every attribute question (width_factor sets them).
    units_per_question: int = 0
    question_gate_l1: float = 0.0  # templated: 0.03; refused with units_per_question=0 (no groups to gate)
    train_attention: bool = True  # false: embeddings and attention keep their (scaled) init: a fixed question code
    # Experimental: initial MLP input bias of the non-template units (0: TL's init). -0.3 was measured only beside a
    # fact-question L1 (results log, 2026-11-25 "Shaping the trained target")
    init_bias: float = 0.0
    question_mix: dict[str, float] = field(default_factory=default_question_mix)
    eval_every: int = 500  # held-out accuracy during training (0: only at the end)
    planted_logit_scale: float = 10.0  # planted: logit of one vote; margins are this minus < 2.5 of interference
    lookup_active_fraction: float = 0.1  # a unit serves an animal if it reaches this fraction of its peak activation
    # Faults (as in decomposition.*): checkpoints in checkpoints/target/, divergence stop, optional lower-lr retries.
    checkpoint_every: int = 500
    max_loss: float = 1e6
    retry_lr_factor: float = 0.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        check(
            self.kind in (TargetKind.trained, TargetKind.templated, TargetKind.planted),
            f"target.kind={self.kind.value}: the animal-world transformer is 'trained', 'templated' or 'planted'",
        )
        if self.kind == TargetKind.trained:  # the ground-truth rule: nothing from the world's directions, standard init
            for name, reads in (
                ("animal_templates", "starts units at the true animal directions"),
                ("units_per_question", "sets units' reads by solving for the question codes"),
                ("context_init_norm", "rescales attention's init"),
            ):
                check(
                    not getattr(self, name),
                    f"target.{name}={getattr(self, name)} {reads}; target=trained starts every "
                    "weight from the standard init and reads no ground truth: use target=templated for that recipe, "
                    f"or set target.{name}={'false' if name == 'animal_templates' else 0}",
                )
        check(self.n_layers in (1, 2), f"target.n_layers={self.n_layers}: the animal-world target has 1 or 2 layers")
        check(self.n_heads >= 1, f"target.n_heads={self.n_heads} must be >= 1")
        check(self.d_mlp is None or self.d_mlp >= 1, f"target.d_mlp={self.d_mlp} must be >= 1 or null (automatic)")
        check(self.width_factor > 0, f"target.width_factor={self.width_factor} must be > 0")
        for name in ("weight_decay", "act_l1", "warmup_steps", "eval_every"):
            check(getattr(self, name) >= 0, f"target.{name}={getattr(self, name)} must be >= 0")
        check(self.planted_logit_scale > 0, f"target.planted_logit_scale={self.planted_logit_scale} must be > 0")
        check(self.checkpoint_every >= 1, f"target.checkpoint_every={self.checkpoint_every} must be >= 1")
        check(self.max_loss > 0, f"target.max_loss={self.max_loss} must be > 0")
        check(0 <= self.retry_lr_factor < 1, f"target.retry_lr_factor={self.retry_lr_factor} must be in [0, 1) (0: no retry)")
        check(self.max_retries >= 0, f"target.max_retries={self.max_retries} must be >= 0")
        check(0 <= self.label_smoothing < 1, f"target.label_smoothing={self.label_smoothing} must be in [0, 1)")
        check(self.units_per_question >= 0, f"target.units_per_question={self.units_per_question} must be >= 0 (0: shared units)")
        check(
            not (self.units_per_question and self.train_attention),
            f"target.units_per_question={self.units_per_question} gates each group on the initial question code, which "
            "drifts when attention trains (~60% of the groups then die: results log, session 7); set "
            "target.train_attention=false, or target.units_per_question=0",
        )
        for name in ("lookup_gate_l1", "attribute_l1", "question_gate_l1", "context_init_norm"):
            check(getattr(self, name) >= 0, f"target.{name}={getattr(self, name)} must be >= 0")
        check(
            self.lookup_gate_l1 == 0 or self.animal_templates,
            f"target.lookup_gate_l1={self.lookup_gate_l1} has no effect without animal templates (it penalises template "
            "units, and there are none): set target.lookup_gate_l1=0, or use target=templated",
        )
        check(
            self.question_gate_l1 == 0 or self.units_per_question > 0,
            f"target.question_gate_l1={self.question_gate_l1} has no effect with target.units_per_question=0 (it penalises "
            "the per-question groups, and there are none): set target.question_gate_l1=0, or use target=templated",
        )
        check(0 < self.template_threshold < 1, f"target.template_threshold={self.template_threshold} must be in (0, 1)")
        check(
            0 < self.lookup_active_fraction < 1, f"target.lookup_active_fraction={self.lookup_active_fraction} must be in (0, 1)"
        )
        check_mix(self.question_mix, "target.question_mix")
        super().__post_init__()
