"""The ground-truth rule for the default target: its construction and training read no ground-truth tensor.

The world handed to training is `guarded`: its directions, attribute values, fact tables and sizes raise
GroundTruthRead on any read (circuitdecomp/world/guard.py). The default target (configs/target/trained.yaml, as
Hydra composes it for `make run`) must train on it; the templated recipe, which starts its look-up units at the true
animal directions, must not (so the guard is known to catch a read).
"""

import pytest
import torch

from circuitdecomp.target.config import TargetKind, TransformerTargetConfig
from circuitdecomp.tracking import NullLogger
from circuitdecomp.world.guard import GroundTruthRead, guarded
from tests.conftest import REPO


def _composed_target(*overrides: str) -> TransformerTargetConfig:
    return _composed_config(*overrides).target


def _composed_config(*overrides: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from circuitdecomp.config import Config, register

    register()
    with initialize_config_dir(config_dir=f"{REPO}/configs", version_base="1.3"):
        raw = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), raw))


def _quick(cfg: TransformerTargetConfig) -> TransformerTargetConfig:
    import dataclasses

    return dataclasses.replace(cfg, train_steps=4, batch_size=32, warmup_steps=1, eval_every=0)


def test_guarded_world_raises_on_every_ground_truth_read_and_keeps_the_inputs(world):
    g = guarded(world)
    for read in (
        lambda: g.animal_directions,
        lambda: g.attribute_directions @ torch.ones(g.d_model),
        lambda: g.fact_answers[0],
        lambda: g.attribute_values.clone(),
        lambda: g.house_sizes.tolist(),
        lambda: g.geometry.entity_basis,
    ):
        with pytest.raises(GroundTruthRead, match="ground truth"):
            read()
    assert torch.equal(g.entity_embeddings(), world.entity_embeddings())  # the fixed inputs stay readable
    assert torch.equal(g.geometry.context_projector(), world.geometry.context_projector())
    assert torch.equal(g.examples.tokens, world.examples.tokens)
    assert g.attribute_values.shape == world.attribute_values.shape  # metadata (sizes) is not ground truth


@pytest.mark.parametrize("overrides", [(), ("target=plain",)], ids=["default", "plain"])
def test_default_target_is_trained_and_its_construction_reads_no_ground_truth(world, overrides):
    from circuitdecomp.target.train import train_target

    cfg = _composed_target(*overrides)
    assert cfg.kind == TargetKind.trained and cfg.train_attention
    result = train_target(guarded(world), _quick(cfg), seed=0, logger=NullLogger())
    assert torch.isfinite(torch.tensor(result.final_loss))


def test_templated_target_is_caught_reading_ground_truth(world):
    from circuitdecomp.target.train import train_target

    cfg = _composed_target("target=templated")
    assert cfg.kind == TargetKind.templated and cfg.animal_templates
    with pytest.raises(GroundTruthRead, match="attribute_values"):
        train_target(guarded(world), _quick(cfg), seed=0, logger=NullLogger())


@pytest.mark.integration
def test_ladder_script_prints_one_column_per_run_and_refuses_a_bad_argument(tmp_path):
    import json
    import subprocess
    import sys

    for name, acc in (("a", 0.5), ("b", 0.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"target/accuracy/fact": acc, "time/decompose_s": 12.0}))
    run = subprocess.run(
        [sys.executable, f"{REPO}/scripts/ladder.py", f"first={tmp_path / 'a'}", f"second={tmp_path / 'b'}"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = run.stdout.splitlines()
    assert lines[0] == "| | first | second |"
    assert "| held-out accuracy: fact | 0.500 | 0.250 |" in lines
    assert "| SPD (random start): animals 1:1 | – | – |" in lines  # a stage the runs did not have
    bad = subprocess.run([sys.executable, f"{REPO}/scripts/ladder.py", f"x={tmp_path}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not name=run_dir with a metrics.json" in bad.stderr


def test_a_run_made_before_the_rule_loads_its_templated_target_as_templated():
    from circuitdecomp.target.run import legacy_target

    old = {"kind": "trained", "animal_templates": True, "units_per_question": 8, "context_init_norm": 3.0}
    assert legacy_target(old)["kind"] == "templated" and old["kind"] == "trained"  # the saved dict is left alone
    assert legacy_target({"kind": "trained", "animal_templates": False})["kind"] == "trained"
    assert legacy_target({"kind": "planted"})["kind"] == "planted"


def test_attribution_directions_of_the_planted_target_are_its_attribute_reads(world, planted):
    """pipeline/attributions.py reads no ground truth; on the planted target, whose attribute circuits read u_j and
    nothing else, the mean answer gradient per yes/no question is u_j; a random direction would sit near 0."""
    from circuitdecomp.pipeline.attributions import answer_attributions

    G = answer_attributions(planted, guarded(world))  # the guard raises on any ground-truth read
    E = world.geometry.entity_basis
    read = E.T @ (E @ G.T)
    read = read / read.norm(dim=0)
    own = (world.attribute_directions[torch.tensor(world.cfg.asked_attributes)] @ read).diagonal().abs()
    assert G.shape == (world.vocab.n_attribute_questions, world.cfg.resid_dim) and own.min() > 0.99


def test_spd_start_attributions_starts_the_mlp_in_there_exactly(world, planted):
    """`spd_start=attributions`: the MLP-in's first components are the orthonormalised answer gradients, and the
    components still sum to the target's weight (the start changes no behaviour)."""
    import dataclasses

    from circuitdecomp.config import SpdStart
    from circuitdecomp.decomp.config import DecompositionConfig, ModuleSpec
    from circuitdecomp.pipeline.attributions import MODULE, answer_attributions, start_at
    from circuitdecomp.pipeline.decompose import component_model

    cfg = _composed_config("spd_start=attributions")
    assert cfg.spd_start is SpdStart.attributions
    d = world.cfg.resid_dim
    cfg = dataclasses.replace(cfg, decomposition=DecompositionConfig(modules=[ModuleSpec(MODULE, d)], compile=False))
    cm = component_model(planted, cfg, world)
    G = answer_attributions(planted, guarded(world))
    start_at(cm, G, seed=0)
    comp = cm.component(MODULE)
    V = comp.V.detach()[:, : len(G)]
    assert torch.allclose(V.T @ V, torch.eye(len(G)), atol=1e-5)
    assert torch.allclose(torch.linalg.svdvals(V.T @ G.T), torch.ones(len(G)), atol=1e-4)  # same span as G
    assert torch.allclose(comp.weight_delta(), torch.zeros_like(comp.weight_delta()), atol=1e-5)
    with pytest.raises(ValueError, match="C=8 components; the attribution start needs >= "):
        small = dataclasses.replace(cfg, decomposition=DecompositionConfig(modules=[ModuleSpec(MODULE, 8)], compile=False))
        start_at(component_model(planted, small, world), G, seed=0)
