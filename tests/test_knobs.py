"""No dead knobs: the dataclass defaults are the recipes the configs use, and a key with no effect is refused."""

import dataclasses

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from circuitdecomp.baselines.config import BaselinesConfig
from circuitdecomp.cli import CONFIG_DIR
from circuitdecomp.config import load_config
from circuitdecomp.decomp.config import CIFnType, DecompositionConfig
from circuitdecomp.evaluate.config import EvaluationConfig
from circuitdecomp.frozen import ConfigError
from circuitdecomp.target.config import TargetKind, TransformerTargetConfig
from circuitdecomp.tracking import TrackingConfig


def _load(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return load_config(compose("config", overrides=overrides))


def test_dataclass_defaults_are_the_recipes_the_configs_use():
    cfg = _load([])
    assert cfg.target == TransformerTargetConfig()  # configs/target/trained.yaml
    assert cfg.evaluation == EvaluationConfig()
    assert cfg.tracking == TrackingConfig()
    assert cfg.baselines == BaselinesConfig()
    tms = _load(["decomposition=tms"]).decomposition  # the paper's recipe; only the modules are model-specific
    assert tms == DecompositionConfig(modules=tms.modules)


def test_removed_and_idle_decomposition_keys_are_refused_naming_the_fix():
    with pytest.raises(ConfigError, match=r"ci_init_from_data=true has no effect with ci_fn=shared_mlp"):
        DecompositionConfig(ci_init_from_data=True, ci_fn=CIFnType.shared_mlp)
    with pytest.raises(ConfigError, match=r"ci_init_from_data=true needs one hidden layer"):
        DecompositionConfig(ci_init_from_data=True, ci_hidden=[8, 8])
    with pytest.raises(ConfigError, match=r"no effect without pnorm_final"):
        DecompositionConfig(pnorm_anneal_start=0.5)
    DecompositionConfig(ci_init_from_data=True, pnorm_final=2.0, pnorm_anneal_start=0.5)  # each with what it needs


def test_template_and_group_penalties_are_refused_where_there_are_none():
    with pytest.raises(ConfigError, match=r"target.lookup_gate_l1=0.03 has no effect without animal templates"):
        TransformerTargetConfig(lookup_gate_l1=0.03)
    with pytest.raises(ConfigError, match=r"target.question_gate_l1=0.03 has no effect with target.units_per_question=0"):
        TransformerTargetConfig(kind=TargetKind.templated, animal_templates=True, question_gate_l1=0.03)
    templated = _load(["target=templated"]).target  # both penalties, with the units they act on
    assert templated.lookup_gate_l1 == 0.03 and templated.question_gate_l1 == 0.03


def test_a_saved_target_with_the_old_idle_penalties_still_loads():
    """Runs before session 11 saved lookup_gate_l1 = question_gate_l1 = 0.03 with no template units or groups."""
    from circuitdecomp.target.run import legacy_target

    saved = dataclasses.asdict(TransformerTargetConfig()) | {"lookup_gate_l1": 0.03, "question_gate_l1": 0.03}
    saved = OmegaConf.to_container(OmegaConf.create(saved))  # plain values, as config.yaml holds them
    loaded = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TransformerTargetConfig), legacy_target(saved)))
    assert loaded.lookup_gate_l1 == 0.0 and loaded.question_gate_l1 == 0.0 and saved["lookup_gate_l1"] == 0.03
    for kind in ("planted", "templated"):
        grouped = saved | {"kind": kind, "animal_templates": True, "units_per_question": 8, "train_attention": False}
        kept = legacy_target(grouped)
        assert kept["lookup_gate_l1"] == 0.03 and kept["question_gate_l1"] == 0.03
