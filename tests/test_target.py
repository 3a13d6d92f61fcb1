"""The animal-world target: fixed embeddings under training, the planted construction, checks, files, the script."""

import json
import subprocess
import sys

import pytest
import torch

from circuitdecomp.target.config import TargetKind, TransformerTargetConfig
from circuitdecomp.tracking import NullLogger
from circuitdecomp.world.config import WorldConfig
from circuitdecomp.world.world import make_world

from conftest import REPO

TINY = WorldConfig(name="tiny", n_attributes=16, n_animals=24, n_houses=8, n_economies=8, n_facts=2, n_fact_answers=5,
                   holdout_fraction=0.3)  # enough held-out pairs that every question type has some


@pytest.fixture(scope="module")
def world():
    return make_world(TINY, seed=1)


@pytest.fixture(scope="module")
def planted(world):
    from circuitdecomp.target.planted import planted_model

    return planted_model(world, TransformerTargetConfig(kind=TargetKind.planted), seed=1)


def test_fixed_rows_and_context_constraints_survive_adamw_weight_decay(world):
    from circuitdecomp.target.model import bake
    from circuitdecomp.target.train import train_target

    cfg = TransformerTargetConfig(train_steps=6, batch_size=64, lr=0.05, weight_decay=0.5, warmup_steps=1, act_l1=0.01, eval_every=0)
    model = train_target(world, cfg, seed=0, logger=NullLogger()).model
    n = world.vocab.n_entities
    assert torch.equal(model.W_E[:n], world.entity_embeddings())
    assert not torch.equal(model.W_E[n:], torch.zeros_like(model.W_E[n:]))  # question tokens are trained
    assert torch.equal(model.pos_embed.weight, torch.zeros_like(model.pos_embed.weight))
    bake(model)
    assert torch.equal(model.W_E[:n], world.entity_embeddings())
    E = world.geometry.entity_basis
    attn = model.blocks[0].attn
    for name in ("q", "k", "v"):
        assert (attn.get_submodule(name).weight @ E.T).abs().max() < 1e-5, name  # reads nothing of the entity
    assert (E @ attn.get_submodule("o").weight).abs().max() < 1e-5  # writes nothing into the entity subspace
    assert (E @ attn.get_submodule("o").bias).abs().max() < 1e-5


def test_trained_readout_residual_is_embedding_plus_question_information(world):
    from circuitdecomp.target.mechanisms import mechanism_metrics
    from circuitdecomp.target.train import train_target

    cfg = TransformerTargetConfig(train_steps=3, batch_size=32, eval_every=0)
    model = train_target(world, cfg, seed=0, logger=NullLogger()).model
    m = mechanism_metrics(model, world, n_animals_ablated=2)
    assert m["target/mechanisms/entity_part_max_error"] < 1e-5
    assert m["target/mechanisms/attribute_readout_max_error"] < 1e-5


def test_planted_target_is_accurate_on_every_question_type(world, planted):
    from circuitdecomp.target.evaluate import evaluate_target

    metrics = evaluate_target(planted, world.examples)
    for key in ["attribute", "size_animal", "size_house", "size_economy", "fact"]:
        assert metrics[f"target/accuracy/{key}"] >= 0.99, key
        assert metrics[f"target/train_accuracy/{key}"] >= 0.99, key


def test_planted_mechanisms(world, planted):
    from circuitdecomp.target.mechanisms import mechanism_metrics

    m = mechanism_metrics(planted, world, n_animals_ablated=4)
    assert m["target/mechanisms/attribute_readout_r2"] > 0.9999
    assert m["target/mechanisms/ablate_size/size_animal"] < 0.8  # the shared size reader is gone ...
    assert m["target/mechanisms/ablate_size/size_house"] < 0.8
    assert m["target/mechanisms/ablate_size/attribute"] > 0.99  # ... other attribute readers are not
    assert m["target/mechanisms/ablate_size/fact"] > 0.9  # look-ups barely notice
    assert m["target/mechanisms/ablate_animal/own_facts"] < 0.5
    assert m["target/mechanisms/ablate_animal/other_facts"] > 0.85


def test_planted_circuits_are_one_animal_per_unit(world, planted):
    from circuitdecomp.target.circuits import circuit_metrics

    m = circuit_metrics(planted, world, active_fraction=0.1)
    assert m["target/circuits/n_lookup_units"] == TINY.n_animals
    assert m["target/circuits/animals_per_lookup_unit"] == 1.0
    assert m["target/circuits/lookup_read_cos_v"] > 0.9999
    assert m["target/circuits/attribute_read_cos_u"] > 0.9999


def test_save_and_load_give_the_same_logits(world, planted, tmp_path):
    from circuitdecomp.target.model import load_model, readout_logits, save_model

    save_model(planted, tmp_path)
    loaded = load_model(world, TransformerTargetConfig(kind=TargetKind.planted), 1, tmp_path)
    tokens = world.examples.tokens[:50]
    assert torch.equal(readout_logits(loaded, tokens), readout_logits(planted, tokens))


def test_bad_target_configs_name_the_key():
    with pytest.raises(ValueError, match="question_mix"):
        TransformerTargetConfig(question_mix={"colour": 1.0})
    with pytest.raises(ValueError, match="n_layers"):
        TransformerTargetConfig(n_layers=3)


def test_planted_width_is_checked(world):
    from circuitdecomp.target.planted import planted_model

    with pytest.raises(ValueError, match="d_mlp"):
        planted_model(world, TransformerTargetConfig(kind=TargetKind.planted, d_mlp=10), seed=0)


def test_script_writes_world_target_metrics_and_figure(tmp_path):
    args = ["target=trained", "world.n_attributes=8", "world.n_animals=24", "world.n_houses=8", "world.n_economies=8",
            "world.holdout_fraction=0.3",
            "world.n_facts=2", "world.n_fact_answers=5", "target.train_steps=4", "target.batch_size=32", "target.eval_every=2",
            "tracking.mode=disabled", "seed=3", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run([sys.executable, "scripts/train_target.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ["world.safetensors", "target.safetensors", "metrics.json", "target_circuits.png", "config.yaml"]:
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ["target/accuracy/fact", "target/accuracy/size_house", "target/circuits/animals_per_lookup_unit",
                "target/mechanisms/ablate_size/size_animal", "target/saturation/mean_p_correct", "world/nn_cos_max"]:
        assert key in metrics, key
    from circuitdecomp.target.run import load_target_run

    world, model = load_target_run(tmp_path)
    assert world.cfg.n_animals == 24 and world.seed == 3
    assert torch.equal(model.W_E[:24], world.animal_directions)
