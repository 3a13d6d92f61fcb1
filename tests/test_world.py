"""The world's geometry, determinism, tables, sampler and ground-truth file against their definitions."""

import math

import pytest
import torch

from circuitdecomp.rundir import WORLD_FILE
from circuitdecomp.runio import load_tensors
from circuitdecomp.world.config import ProfileKind, WorldConfig
from circuitdecomp.world.geometry import nearest_neighbour_cos
from circuitdecomp.world.question_types import NAMES, QUESTION_TYPES, QuestionType
from circuitdecomp.world.sampler import Sampler, true_coefficients
from circuitdecomp.world.vocab import READOUT_POS, Modifier
from circuitdecomp.world.world import make_world, save_world

TINY = WorldConfig(
    name="tiny", n_attributes=8, n_animals=24, n_houses=6, n_economies=4, n_facts=2, n_fact_answers=5, attribute_margin=0.25
)


@pytest.fixture(scope="module")
def world():
    return make_world(TINY, seed=3)


def test_geometry_is_orthonormal_and_not_axis_aligned(world):
    g = world.geometry
    basis = torch.cat([g.entity_basis, g.context_basis])
    assert basis.shape == (TINY.resid_dim, TINY.resid_dim)
    assert torch.allclose(basis @ basis.T, torch.eye(TINY.resid_dim), atol=1e-5)
    assert g.attribute_directions.abs().max() < 0.99  # a random rotation: no u_j is a standard axis


def test_animals_live_in_the_attribute_span(world):
    v, u = world.animal_directions, world.attribute_directions
    assert torch.allclose(v.norm(dim=1), torch.ones(TINY.n_animals), atol=1e-5)
    assert torch.allclose((v @ u.T) @ u, v, atol=1e-5)  # projecting onto span(u) changes nothing
    assert torch.allclose(v @ u.T, world.attribute_values, atol=1e-5)


def test_animal_attribute_cosines_are_near_one_over_sqrt_n():
    cfg = WorldConfig(n_attributes=50, n_animals=1000, n_facts=4, attribute_margin=0.25)
    w = make_world(cfg, seed=0)
    cos = (w.animal_directions @ w.attribute_directions.T).abs()
    # |cos| of a uniform unit vector with a fixed axis has mean sqrt(2/pi)/sqrt(n) and RMS 1/sqrt(n)
    assert cos.pow(2).mean().sqrt().item() == pytest.approx(1 / math.sqrt(50), rel=0.05)
    assert cos.mean().item() == pytest.approx(math.sqrt(2 / math.pi) / math.sqrt(50), rel=0.05)


def test_other_kinds_share_size_but_stay_outside_the_animal_span(world):
    emb = world.entity_embeddings()
    others = emb[TINY.n_animals :]
    u, size = world.attribute_directions, world.size_direction
    inside = (others @ u.T) @ u
    assert torch.allclose(inside, (others @ size)[:, None] * size, atol=1e-5)  # only the size component is inside
    assert (others @ world.geometry.kind_directions.T).max(dim=1).values.min() > 0.99
    assert torch.allclose(others @ size, torch.cat([world.house_sizes, world.economy_sizes]), atol=1e-5)


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = make_world(TINY, 5), make_world(TINY, 5), make_world(TINY, 6)
    for key, value in a.tensors().items():
        assert torch.equal(value, b.tensors()[key]), key
    assert not torch.allclose(a.attribute_directions, c.attribute_directions)


@pytest.mark.parametrize("profile", list(ProfileKind))
def test_every_profile_kind_builds(profile):
    w = make_world(
        WorldConfig(n_attributes=16, n_animals=40, n_houses=0, n_economies=0, profile=profile, attribute_margin=0.25), 0
    )
    assert torch.isfinite(w.animal_directions).all()
    assert nearest_neighbour_cos(w.animal_directions).max() < 0.9999  # no two animals coincide
    assert len(w.examples) > 0


def test_fact_answer_tuples_are_unique_and_in_range(world):
    facts = world.fact_answers
    assert facts.shape == (TINY.n_animals, TINY.n_facts)
    assert torch.unique(facts, dim=0).shape[0] == TINY.n_animals
    assert facts.min() >= 0 and facts.max() < TINY.n_fact_answers


def test_answers_match_the_world_tables(world):
    ex, vocab, cfg = world.examples, world.vocab, TINY
    values = world.entity_attribute_values()
    assert (ex.tokens[:, READOUT_POS] == ex.entity).all()
    for row in range(len(ex)):
        q, m, e, ans = int(ex.question[row]), int(ex.modifier[row]), int(ex.entity[row]), int(ex.answer[row])
        assert ex.tokens[row, 1] == vocab.modifier(Modifier(m))
        if q < len(cfg.asked_attributes):
            j = cfg.asked_attributes[q]
            shift = cfg.modifier_shift * world.attribute_scale[j] * m if j == cfg.size_attribute else 0.0
            value = values[e, j] + shift
            assert abs(value) >= cfg.attribute_margin * world.attribute_scale[j] - 1e-6
            assert ans == (vocab.yes if value > 0 else vocab.no)
        else:
            f = q - len(cfg.asked_attributes)
            assert ex.qtype[row] == QuestionType.fact and e < cfg.n_animals
            assert ans == vocab.fact_answer(f, int(world.fact_answers[e, f]))


def test_every_question_type_is_present_and_held_out(world):
    ex = world.examples
    for qtype in QuestionType:
        rows = ex.qtype == int(qtype)
        assert rows.any(), qtype
    # held-out attribute pairs take every modifier with them: no (question, entity) pair is in both splits
    attr = ex.qtype != int(QuestionType.fact)
    pair = ex.question * 1000 + ex.entity
    train_pairs = set(pair[attr & ex.is_train].tolist())
    assert not train_pairs & set(pair[attr & ~ex.is_train].tolist())
    # every fact's plain variant stays in training
    fact_plain = (ex.qtype == int(QuestionType.fact)) & (ex.modifier == 0)
    assert ex.is_train[fact_plain].all()


def test_sampler_respects_split_and_mix(world):
    sampler = Sampler(world.examples, {"attribute": 0.5, "fact": 0.5, "size_animal": 0.0}, seed=0)
    batch = sampler.sample(400)
    assert batch.is_train.all()
    share = (batch.qtype == int(QuestionType.fact)).float().mean().item()
    assert 0.4 < share < 0.6
    assert not (batch.qtype == int(QuestionType.size_animal)).any()


def test_every_registered_type_has_rows_with_its_declared_answers(world):
    ex, vocab = world.examples, world.vocab
    assert [q.name for q in QuestionType] == NAMES and [int(q) for q in QuestionType] == list(range(len(NAMES)))
    assert set(ex.qtype.unique().tolist()) == set(range(len(QUESTION_TYPES)))  # no row of an unregistered type
    for qtype, spec in enumerate(QUESTION_TYPES):
        rows = ex.subset(ex.qtype == qtype)
        assert len(rows) > 0, spec.name
        assert set(rows.answer.unique().tolist()) <= set(spec.answers(vocab)), spec.name
        assert spec.description and spec.reads in ("attributes", "animals")
    # the table's order, which the split's draws depend on: question, then modifier, then type id
    key = (ex.question * 3 + ex.modifier + 1) * len(QUESTION_TYPES) + ex.qtype
    assert (key[1:] >= key[:-1]).all()


def test_mixes_name_every_registered_type():
    from conftest import REPO
    from hydra import compose, initialize_config_dir

    from circuitdecomp.config import load_config

    with initialize_config_dir(config_dir=f"{REPO}/configs", version_base="1.3"):
        cfg = load_config(compose("config"))
    assert list(cfg.decompose_mix) == NAMES and list(cfg.target.question_mix) == NAMES
    assert cfg.decompose_mix == {t.name: t.decompose_weight for t in QUESTION_TYPES}
    assert cfg.target.question_mix == {t.name: t.target_weight for t in QUESTION_TYPES}


def test_an_unregistered_question_type_is_refused_naming_the_known_ones(world):
    from circuitdecomp.config import Config
    from circuitdecomp.target.config import TransformerTargetConfig

    for refuse in (
        lambda: TransformerTargetConfig(question_mix={"colour": 1.0}),
        lambda: Config(world=TINY, target=TransformerTargetConfig(), decompose_mix={"fact": 1.0, "colour": 1.0}),
        lambda: Sampler(world.examples, {"colour": 1.0}, seed=0),
    ):
        with pytest.raises(ValueError, match="colour") as err:
            refuse()
        assert all(name in str(err.value) for name in NAMES), str(err.value)


def test_true_coefficients_reconstruct_the_embedding(world):
    entity = world.examples.entity
    c = true_coefficients(world, entity)
    from_animals = c.animals @ world.animal_directions
    from_attrs = c.attributes @ world.attribute_directions + c.kinds @ world.geometry.kind_directions
    emb = world.entity_embeddings()[entity]
    is_animal = entity < TINY.n_animals
    assert torch.allclose(from_attrs, emb, atol=1e-5)  # sum_j c'_j u_j (+ kinds) is the residual's entity part
    assert torch.allclose(from_animals[is_animal], emb[is_animal], atol=1e-5)  # ... and so is sum_i c_i v_i


def test_saved_ground_truth_keys_and_shapes(world, tmp_path):
    save_world(world, tmp_path)
    t = load_tensors(tmp_path / WORLD_FILE)
    d = TINY.resid_dim
    assert t["attribute_directions"].shape == (TINY.n_attributes, d)
    assert t["animal_directions"].shape == (TINY.n_animals, d)
    assert t["attribute_values"].shape == (TINY.n_animals, TINY.n_attributes)
    assert torch.allclose(t["animal_directions"].norm(dim=1), torch.ones(TINY.n_animals), atol=1e-5)
    assert t["entity_embeddings"].shape == (world.vocab.n_entities, d)
    assert t["examples_tokens"].shape == (len(world.examples), 3)
    assert t["examples_is_train"].dtype == torch.bool


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"n_attributes": 70, "d_model": 64}, "n_attributes"),
        ({"n_animals": 0}, "n_animals"),
        ({"size_attribute": 40}, "size_attribute"),
        ({"attribute_questions": [0, 1, 32]}, "attribute_questions"),
        ({"n_animals": 600, "n_facts": 3, "n_fact_answers": 8}, "n_facts"),
        ({"d_model": 64}, "d_model"),
    ],
)
def test_bad_world_configs_fail_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key) as err:
        WorldConfig(**kwargs)
    assert "raise" in str(err.value) or "set" in str(err.value) or "drop" in str(err.value) or "pick" in str(err.value)


def test_d_model_is_automatic_unless_pinned():
    assert WorldConfig(n_attributes=32).resid_dim % 16 == 0
    assert WorldConfig(n_attributes=32).resid_dim >= WorldConfig(n_attributes=32).min_d_model
    assert WorldConfig(n_attributes=8, d_model=40).resid_dim == 40
