"""The root config: one typed schema per stage, registered with Hydra, composed from `configs/`.

Scripts call `load_config(dictcfg)`; library code only ever sees the frozen dataclasses.
"""

import dataclasses
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from circuitdecomp.baselines.config import BaselinesConfig
from circuitdecomp.decomp.config import RETIRED as DECOMPOSITION_RETIRED
from circuitdecomp.decomp.config import DecompositionConfig
from circuitdecomp.evaluate.config import EvaluationConfig
from circuitdecomp.features.config import FeaturesConfig
from circuitdecomp.frozen import Frozen, check
from circuitdecomp.target.config import (
    TargetConfig,
    TargetKind,
    TransformerTargetConfig,
    check_mix,
    default_decompose_mix,
)
from circuitdecomp.toys.config import ResidMLPConfig, TMSConfig
from circuitdecomp.tracking import TrackingConfig
from circuitdecomp.world.config import WorldConfig


class Stage(str, Enum):
    """Stages of the main job (scripts/pipeline.py), in the order they run."""

    target = "target"  # world + target (trained or planted) + its checks
    decompose = "decompose"  # SPD on the target
    features = "features"  # features from circuits and the controls, scored against ground truth
    random_start = "random_start"  # the same SPD and features from a random start (what SPD finds by itself)
    baselines = "baselines"  # SAE sweep on the same inputs, scored by the same code
    report = "report"  # report.md


class SpdStart(str, Enum):
    """Where the animal world's decomposition starts (scripts/pipeline.py)."""

    recipe = "recipe"  # as decomposition.init says (the world recipe: the target's units)
    # Experimental: the MLP-in's components at the target's answer gradients per yes/no question, no ground truth
    # (pipeline/attributions.py). On the default target: attributes 1.000 one-to-one vs 0.031 (docs/targets.md).
    attributions = "attributions"


@dataclass
class Config(Frozen):
    """Everything a run needs; `seed` seeds world, target and decomposition."""

    world: WorldConfig = MISSING
    target: TargetConfig = MISSING
    decomposition: DecompositionConfig = MISSING
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    seed: int = 0
    name: str = "run"
    stages: list[Stage] = field(default_factory=lambda: list(Stage))  # scripts/pipeline.py: which stages to (re-)run
    # Question types of the decomposition's batches (as target.question_mix; override a type with decompose_mix.fact=0.5).
    # The defaults are each type's `decompose_weight` in circuitdecomp/world/question_types.py: rare circuits (one
    # look-up per animal) need their inputs often enough per batch to win against the minimality term.
    decompose_mix: dict[str, float] = field(default_factory=default_decompose_mix)
    spd_start: SpdStart = SpdStart.recipe

    def __post_init__(self) -> None:
        check(self.seed >= 0, f"seed={self.seed} must be >= 0")
        check_mix(self.decompose_mix, "decompose_mix")
        check(
            re.fullmatch(r"[\w.-]+", self.name) is not None,
            f"name={self.name!r} must be a non-empty run name of letters, digits, '_', '-' or '.' (it names runs and artifacts)",
        )
        if isinstance(self.target, TransformerTargetConfig) and isinstance(self.world, WorldConfig):
            d = self.world.resid_dim
            check(
                d % self.target.n_heads == 0,
                f"target.n_heads={self.target.n_heads} does not divide the residual width {d} (world.d_model); "
                f"pick a divisor of {d}",
            )
        super().__post_init__()


def spd_steps(per_question: int, minimum: int, *, _root_: DictConfig) -> int:
    """`${spd_steps:per_question,minimum}`: SPD steps for the run's world, max(minimum, per_question x questions).

    Each question type (asked attribute or fact) is its own circuit and a batch carries a fixed share of each kind
    of question, so a world with more questions gives each circuit fewer inputs per step: the step budget grows
    with the number of questions, the inputs per circuit stay (docs/results_log.md, session 8: 4000 steps were
    enough for the demo world's 35 questions and too few for the seed world's 54). `decomposition.steps=<n>` replaces it.
    """
    world = _root_.get("world")
    if world is None or "n_facts" not in world:
        raise ValueError(
            "decomposition.steps=${spd_steps:...} counts the world's questions, and this config has no "
            "world: set decomposition.steps=<number>"
        )
    if per_question < 1 or minimum < 1:
        raise ValueError(f"${{spd_steps:{per_question},{minimum}}}: both arguments must be >= 1")
    asked = world.n_attributes if world.get("attribute_questions") is None else len(world.attribute_questions)
    return max(minimum, per_question * (asked + world.n_facts))


def register() -> None:
    """Put every schema into Hydra's ConfigStore and the `spd_steps` resolver into OmegaConf; YAML files in
    `configs/` extend these."""
    if not OmegaConf.has_resolver("spd_steps"):
        OmegaConf.register_new_resolver("spd_steps", spd_steps)
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="world", name="schema", node=WorldConfig)
    cs.store(group="target", name="schema_tms", node=TMSConfig)
    cs.store(group="target", name="schema_resid_mlp", node=ResidMLPConfig)
    cs.store(group="target", name="schema_trained", node=TransformerTargetConfig)
    cs.store(group="target", name="schema_templated", node=TransformerTargetConfig(kind=TargetKind.templated))
    cs.store(group="target", name="schema_planted", node=TransformerTargetConfig(kind=TargetKind.planted))
    cs.store(group="decomposition", name="schema", node=DecompositionConfig)
    cs.store(group="evaluation", name="schema", node=EvaluationConfig)
    cs.store(group="tracking", name="schema", node=TrackingConfig)
    cs.store(group="baselines", name="schema", node=BaselinesConfig)


register()


def unknown_keys(node: DictConfig, path: str = "") -> list[str]:
    """Keys present in `node` but absent from its dataclass schema (`+key=value` gets past Hydra)."""
    found = []
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        names = {f.name for f in dataclasses.fields(schema)}
        found += [f"{path}{k}" for k in node.keys() if k not in names]
    for k, v in node.items_ex(resolve=False):
        if isinstance(v, DictConfig) and not v._is_none():
            found += unknown_keys(v, f"{path}{k}.")
        elif isinstance(v, ListConfig) and not v._is_none():
            found += [
                u for i, item in enumerate(v) if isinstance(item, DictConfig) for u in unknown_keys(item, f"{path}{k}[{i}].")
            ]
    return found


def retired_key(key: str) -> str | None:
    """Why a removed config key (e.g. `decomposition.rounded_recon_coeff`) went, or None for a key that was not removed."""
    group, _, name = key.lstrip("+~").partition(".")
    if group == "decomposition" and name in DECOMPOSITION_RETIRED:
        return f"{key.lstrip('+~')} was removed: {DECOMPOSITION_RETIRED[name][1]}; drop it from the command"
    return None


def load_config(dcfg: DictConfig) -> Config:
    """Hydra's DictConfig -> frozen dataclasses, refusing keys the schema does not know."""
    extra = unknown_keys(dcfg)
    if extra:
        raise ValueError(
            f"unknown config key(s) {extra}: check the spelling; `python scripts/<script>.py --cfg job` lists every key"
        )
    cfg = OmegaConf.to_object(dcfg)
    if not isinstance(cfg, Config):
        raise TypeError(f"config root is {type(cfg).__name__}, expected Config: does configs/config.yaml start from 'schema'?")
    return cfg


def config_dict(cfg: Config) -> dict[str, Any]:
    """Plain dict of a config (for wandb and config.yaml)."""
    from circuitdecomp.runio import to_plain

    return to_plain(cfg)
