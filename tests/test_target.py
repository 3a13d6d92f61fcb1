"""The animal-world target: fixed embeddings under training, the planted construction, checks, files, the script."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY

from circuitdecomp.target.config import TargetKind, TransformerTargetConfig
from circuitdecomp.tracking import NullLogger
from circuitdecomp.world.config import WorldConfig
from circuitdecomp.world.world import make_world


def test_fixed_rows_and_context_constraints_survive_adamw_weight_decay(world):
    from circuitdecomp.target.model import bake
    from circuitdecomp.target.train import train_target

    cfg = TransformerTargetConfig(
        train_steps=6, batch_size=64, lr=0.05, weight_decay=0.5, warmup_steps=1, act_l1=0.01, eval_every=0
    )
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
    for key, value in (("animal_templates", True), ("units_per_question", 2), ("context_init_norm", 3.0)):  # ground-truth rule
        with pytest.raises(ValueError, match=f"target.{key}={value} .*target=templated"):
            TransformerTargetConfig(**{key: value})
    with pytest.raises(ValueError, match="train_attention=false"):  # groups gate on a question code that must not drift
        TransformerTargetConfig(kind=TargetKind.templated, animal_templates=True, units_per_question=2, train_attention=True)


def test_planted_width_is_checked(world):
    from circuitdecomp.target.planted import planted_model

    with pytest.raises(ValueError, match="d_mlp"):
        planted_model(world, TransformerTargetConfig(kind=TargetKind.planted, d_mlp=10), seed=0)


@pytest.mark.integration
def test_script_writes_world_target_metrics_and_figure(tmp_path):
    args = [
        "target=trained",
        "world.n_attributes=8",
        "world.n_animals=24",
        "world.n_houses=8",
        "world.n_economies=8",
        "world.holdout_fraction=0.3",
        "world.n_facts=2",
        "world.n_fact_answers=5",
        "target.train_steps=4",
        "target.batch_size=32",
        "target.eval_every=2",
        "tracking.mode=disabled",
        "seed=3",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(
        [sys.executable, "scripts/train_target.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ["world.safetensors", "target.safetensors", "metrics.json", "target_circuits.png", "config.yaml"]:
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in [
        "target/accuracy/fact",
        "target/accuracy/size_house",
        "target/circuits/animals_per_lookup_unit",
        "target/mechanisms/ablate_size/size_animal",
        "target/saturation/mean_p_correct",
        "world/nn_cos_max",
    ]:
        assert key in metrics, key
    from circuitdecomp.target.run import load_target_run

    world, model = load_target_run(tmp_path)
    assert world.cfg.n_animals == 24 and world.seed == 3
    assert torch.equal(model.W_E[:24], world.animal_directions)


def test_readout_forward_matches_the_full_forward(world, planted):
    from circuitdecomp.target.model import build_model, readout_forward

    trained = build_model(world, TransformerTargetConfig(), seed=0)  # parametrized, random weights
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    tokens = world.examples.tokens[torch.randperm(len(world.examples))[:300]]
    for model in (trained, planted):
        logits, h = readout_forward(model, tokens)
        torch.testing.assert_close(logits, model(tokens)[:, -1], atol=1e-4, rtol=1e-4)
        assert h.shape == (300, model.blocks[0].mlp.get_submodule("in").weight.shape[0])


def test_decomposition_view_gives_the_answer_logits_of_the_full_forward_and_leaves_the_target_alone(world, planted):
    from circuitdecomp.pipeline.decompose import decomposition_view
    from circuitdecomp.target.model import build_model

    trained = build_model(world, TransformerTargetConfig(), seed=0)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    tokens = world.examples.tokens[:200]
    start = world.vocab.answers_start
    for model in (trained, planted):
        full = model(tokens)
        view = decomposition_view(model, start)
        cut = view(tokens)
        assert cut.shape == (200, 1, full.shape[-1] - start)  # read-out position, answer logits
        torch.testing.assert_close(cut[:, -1], full[:, -1, start:], atol=1e-5, rtol=1e-5)
        assert torch.equal(model(tokens), full)  # the target itself is untouched


def test_init_templates_detect_one_animal_each_and_question_information_is_strong(world):
    from circuitdecomp.target.circuits import served_animals, unit_table
    from circuitdecomp.target.model import build_model
    from circuitdecomp.target.train import _init, n_templates

    cfg = TransformerTargetConfig(kind=TargetKind.templated, animal_templates=True, context_init_norm=3.0)
    model = build_model(world, cfg, seed=0)
    _init(model, cfg, world, torch.Generator().manual_seed(0))
    k = n_templates(world, cfg)
    assert k == TINY.n_animals
    w_in = model.blocks[0].mlp.get_submodule("in").weight.detach()
    cos = (w_in[:k] / w_in[:k].norm(dim=1, keepdim=True)) @ world.animal_directions.T
    assert torch.equal(cos.argmax(1).sort().values, torch.arange(k))  # a permutation: every animal has its unit
    assert cos.amax(1).min() > 0.9999
    table = unit_table(model, world)
    assert torch.equal(served_animals(table, 0.1)[:k], torch.ones(k))  # each fires for its own animal only
    assert torch.allclose(table.fact[:, :k].amax(0), torch.ones(k), atol=1e-4)  # response 1 on it
    probe = world.examples.tokens[:, :2].unique(dim=0)
    _, cache = model.run_with_cache(
        torch.cat([probe, torch.zeros_like(probe[:, :1])], 1), names_filter=lambda n: n == "blocks.0.hook_resid_mid"
    )
    context = cache["blocks.0.hook_resid_mid"][:, -1] - model.W_E[0]
    assert context.norm(dim=1).mean().item() == pytest.approx(3.0, rel=1e-4)


def test_init_question_groups_fire_on_their_own_question_only_and_read_no_entity(world):
    from circuitdecomp.target.model import build_model, mlp_width, question_of_units, readout_forward
    from circuitdecomp.target.train import _init, n_templates

    cfg = TransformerTargetConfig(
        kind=TargetKind.templated, animal_templates=True, context_init_norm=3.0, units_per_question=3, train_attention=False
    )
    n_q = len(TINY.asked_attributes)
    assert mlp_width(world, cfg) == TINY.n_animals + 3 * n_q
    model = build_model(world, cfg, seed=0)
    _init(model, cfg, world, torch.Generator().manual_seed(0))
    first, question = n_templates(world, cfg), question_of_units(world, cfg)
    assert torch.equal(question, torch.arange(n_q).repeat_interleave(3) + world.vocab.attribute_question(0))
    w_in = model.blocks[0].mlp.get_submodule("in").weight.detach()[first:]
    assert (w_in @ world.geometry.entity_basis.T).abs().max() < 1e-5  # no entity read at the start
    tokens = world.examples.tokens
    _, h = readout_forward(model, tokens)
    own = tokens[:, 0, None] == question[None, :]
    assert torch.allclose(h[:, first:][own], torch.ones(int(own.sum())), atol=1e-4)  # on, response 1, every entity
    assert h[:, first:][~own].abs().max() < 1e-4  # off on every other question, facts included


def test_templates_make_one_lookup_unit_per_animal_free_units_are_shared_and_groups_serve_one_question():
    from circuitdecomp.target.circuits import circuit_metrics
    from circuitdecomp.target.evaluate import evaluate_target
    from circuitdecomp.target.train import train_target

    w = make_world(
        WorldConfig(
            name="t",
            n_attributes=24,
            n_animals=64,
            n_houses=8,
            n_economies=8,
            n_facts=3,
            attribute_margin=0.5,
            holdout_fraction=0.2,
        ),
        0,
    )
    metrics = {}
    # the templated recipe's width and look-up gate (configs/target/templated.yaml); the free units at the same width
    templated = {"kind": TargetKind.templated, "animal_templates": True, "context_init_norm": 3.0, "lookup_gate_l1": 0.03}
    groups = templated | {"units_per_question": 4, "question_gate_l1": 0.03, "train_attention": False}
    variants = {"templates": templated | {"width_factor": 2.2}, "free": {"width_factor": 2.2}, "groups": groups}
    for name, change in variants.items():
        cfg = TransformerTargetConfig(train_steps=300, batch_size=256, warmup_steps=20, eval_every=0, **change)
        model = train_target(w, cfg, seed=0, logger=NullLogger()).model
        metrics[name] = evaluate_target(model, w.examples) | circuit_metrics(model, w, cfg.lookup_active_fraction)
    assert metrics["templates"]["target/accuracy/fact"] > 0.95
    # 1.547 on this 2-core machine at a75ca64 as well (the 300-step target sits near the old 1.5 line); free units: > 5
    assert metrics["templates"]["target/circuits/animals_per_lookup_unit"] <= 2.0
    assert metrics["templates"]["target/circuits/lookup_read_cos_v"] > 0.95
    assert metrics["free"]["target/circuits/animals_per_lookup_unit"] > 5  # free look-up units are shared (docs/targets.md)
    # shared attribute units: ~100 per question (measured 106); per-question groups of 4: the group and a few others
    assert metrics["templates"]["target/circuits/attribute_units_per_question"] > 50
    assert metrics["groups"]["target/circuits/attribute_units_per_question"] < 10
    assert (
        metrics["groups"]["target/circuits/attribute_read_purity"]
        > metrics["templates"]["target/circuits/attribute_read_purity"] + 0.05
    )


def test_attribute_circuits_of_the_planted_target_read_one_attribute_each(world, planted):
    from circuitdecomp.target.circuits import attribute_circuits

    c = attribute_circuits(planted, world)
    assert torch.allclose(c.purity, torch.ones_like(c.purity), atol=1e-5)
    assert torch.equal(c.active_units, torch.full_like(c.active_units, 2.0))  # yes, no
    big = make_world(
        WorldConfig(name="big", n_attributes=8, n_animals=400, n_houses=4, n_economies=4, n_facts=3, attribute_margin=0.25), 0
    )
    from circuitdecomp.target.planted import planted_model

    c = attribute_circuits(planted_model(big, TransformerTargetConfig(kind=TargetKind.planted), 0), big)
    assert c.effective_cos.min() > 0.97  # with many animals the least-squares read of a clamp is along u_j


def test_linear_ceiling_of_the_named_worlds_allows_99_percent():
    """world=demo/seed are sized so a linear read of u_j can reach 99% held-out; a crowded small world cannot."""
    from omegaconf import OmegaConf

    from circuitdecomp.target.evaluate import attribute_linear_ceiling

    for name in ("demo", "seed"):
        keys = {
            k: v
            for k, v in OmegaConf.to_container(OmegaConf.load(f"{REPO}/configs/world/{name}.yaml")).items()
            if k != "defaults"
        }
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(WorldConfig), keys))
        assert attribute_linear_ceiling(make_world(cfg, seed=0)) >= 0.995, name
    few = WorldConfig(name="few", n_attributes=32, n_animals=128, n_houses=4, n_economies=4, n_facts=3, attribute_margin=0.25)
    assert attribute_linear_ceiling(make_world(few, seed=0)) < 0.97


def test_templates_need_room_in_the_mlp(world):
    from circuitdecomp.target.model import build_model

    with pytest.raises(ValueError, match="animal_templates"):
        cfg = TransformerTargetConfig(kind=TargetKind.templated, animal_templates=True, d_mlp=TINY.n_animals)
        build_model(world, cfg, seed=0)


def test_mechanism_probe_keeps_attribute_rows_when_size_and_fact_rows_fill_it(world):
    from circuitdecomp.target.mechanisms import probe_set

    probe = probe_set(world, max_rows=10, min_attribute_rows=50)
    assert int((probe.qtype == 0).sum()) == 50
    assert int((probe.qtype != 0).sum()) == int((world.examples.qtype != 0).sum())  # every size and fact row
