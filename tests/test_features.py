"""Features from circuits: candidates, projection, merging and the circuit-derived gate, on planted components."""

import torch

from circuitdecomp.decomp.span import data_span
from circuitdecomp.evaluate.recovery import Family, GroundTruth, Units, score_recovery
from circuitdecomp.features.config import FeaturesConfig
from circuitdecomp.features.extract import Candidate, candidates, extract_features


def _world(n_attr: int = 6, n_animals: int = 20, d_model: int = 10, seed: int = 0):
    """Attributes u_j = first n_attr axes; animals v_i unit vectors in their span; inputs = one animal each."""
    g = torch.Generator().manual_seed(seed)
    u = torch.eye(d_model)[:n_attr]
    values = torch.randn(n_animals, n_attr, generator=g)
    values = values / values.norm(dim=1, keepdim=True)
    v = values @ u
    entity = torch.arange(n_animals).repeat(5)
    resid = v[entity] + 0.3 * torch.eye(d_model)[-1]  # plus a question direction outside the entity subspace
    return u, v, values, entity, resid


def _planted_candidates(u, v, entity, resid):
    """Look-up components (read v_i + question, important only on animal i) and attribute readers (always important)."""
    q = torch.eye(u.shape[1])[-1]
    cands = []
    for i in range(v.shape[0]):
        cands.append(Candidate("mlp.in", i, "read", 2 * v[i] + q, (entity == i).float()))
    asked = torch.arange(len(entity)) % u.shape[0]  # the attribute question each input asks
    for j in range(u.shape[0]):
        on = (asked == j).float()  # important whenever its question is asked, whatever the value
        cands.append(Candidate("mlp.in", 100 + j, "read", -u[j] + 0.5 * q, on))
        cands.append(Candidate("attn.q", j, "read", 3 * u[j], on))  # a second circuit reading u_j
    return cands


def test_planted_components_give_both_families_with_true_coefficients() -> None:
    u, v, values, entity, resid = _world()
    subspace = data_span(v)  # what the entity token writes
    feats = extract_features(_planted_candidates(u, v, entity, resid), resid, subspace, FeaturesConfig())
    assert len(feats) == v.shape[0] + u.shape[0]  # the two u_j readers merged; the question direction projected away
    animals = torch.zeros(len(entity), v.shape[0])
    animals[torch.arange(len(entity)), entity] = 1.0
    truth = GroundTruth((Family("animals", v, animals), Family("attributes", u, values[entity])))
    result = score_recovery(Units(feats.directions, feats.values), truth)
    for fam in result.families:
        assert fam.full.directions.frac_cos99 == 1.0, fam.name
        assert fam.full.coefficients.recall == 1.0, fam.name
    # look-ups are gated mid-way between their own animal's projection (1) and the nearest other input's; attribute
    # readers are dense
    assert int(torch.isfinite(feats.thresholds).sum()) == v.shape[0]
    gated = torch.isfinite(feats.thresholds).nonzero().flatten()
    for k in gated.tolist():
        p = resid @ feats.directions[k]
        own, rest = p[p > 0.999], p[p <= 0.999]
        assert own.numel() > 0 and abs(float(feats.thresholds[k]) - (1 + float(rest.max())) / 2) < 1e-4
    merged = [p for p in feats.provenance if len(p["members"]) == 2]
    assert len(merged) == u.shape[0] and {m["module"] for p in merged for m in p["members"]} == {"mlp.in", "attn.q"}


def test_without_the_gate_animal_coefficients_fail() -> None:
    """The gate is what makes look-up features sparse: plain projections of v_i are dense (the thesis metric sees it)."""
    u, v, values, entity, resid = _world()
    feats = extract_features(_planted_candidates(u, v, entity, resid), resid, data_span(v), FeaturesConfig(gate=False))
    animals = torch.zeros(len(entity), v.shape[0])
    animals[torch.arange(len(entity)), entity] = 1.0
    truth = GroundTruth((Family("animals", v, animals),))
    result = score_recovery(Units(feats.directions, feats.values), truth)
    assert result.families[0].full.directions.frac_cos99 == 1.0
    assert result.families[0].full.coefficients.recall < 0.5


def test_candidates_take_live_components_of_readers_and_writers_only() -> None:
    d, C, n = 8, 5, 30
    V = {"mlp.in": torch.randn(d, C), "mlp.out": torch.randn(12, C), "attn.o": torch.randn(d, C)}
    U = {"mlp.in": torch.randn(C, 12), "mlp.out": torch.randn(C, d), "attn.o": torch.randn(C, d)}
    ci = {p: torch.zeros(n, C) for p in V}
    ci["mlp.in"][3, 1] = 0.9  # live
    ci["mlp.out"][:, 2] = 0.05  # below live_ci: dead
    ci["attn.o"][0, 4] = 0.2
    got = candidates(V, U, ci, d, FeaturesConfig(read_patterns=["mlp.in"], write_patterns=["*out", "*o"]))
    assert [(c.module, c.component, c.role) for c in got] == [("mlp.in", 1, "read"), ("attn.o", 4, "write")]
    assert torch.equal(got[0].direction, V["mlp.in"][:, 1]) and torch.equal(got[1].direction, U["attn.o"][4])


def test_directions_outside_the_subspace_are_dropped() -> None:
    u, v, values, entity, resid = _world()
    q = torch.eye(10)[-1]
    cands = [Candidate("attn.v", 0, "read", q, torch.ones(len(entity)))]  # reads only the question
    feats = extract_features(cands, resid, data_span(v), FeaturesConfig())
    assert len(feats) == 0


def test_gate_threshold_separates_sparse_from_dense() -> None:
    from circuitdecomp.features.extract import gate_threshold

    p = torch.tensor([1.0, 0.9, 0.4, 0.3, -0.2, -0.5, 0.95, 0.1])
    lookup = torch.tensor([True, True, False, False, False, False, True, False])  # active exactly where p is high
    assert abs(gate_threshold(p, lookup, 0.9) - 0.65) < 1e-6  # mid-gap between 0.9 (last active) and 0.4
    question = torch.tensor([True, False, True, False, True, False, True, False])  # active by question, not by p
    assert gate_threshold(p, question, 0.9) == float("-inf")
    assert gate_threshold(p, torch.zeros(8, dtype=torch.bool), 0.9) == float("-inf")


def test_gate_threshold_never_cuts_inside_a_tie() -> None:
    """One entity's inputs share a projection up to rounding: all of them are in, or all out."""
    from circuitdecomp.features.extract import gate_threshold

    own = 0.999 + 1e-7 * torch.randn(30)  # the animal's 30 inputs, 9 of them fact questions (active)
    p = torch.cat([own, torch.rand(300) * 0.7])
    active = torch.zeros(330, dtype=torch.bool)
    active[:9] = True
    tau = gate_threshold(p, active, 0.9)
    assert bool((own >= tau).all()) and 0.7 < tau < 0.99


def test_fit_sample_holds_every_question_entity_pair() -> None:
    from circuitdecomp.pipeline.features import fit_sample
    from circuitdecomp.world.config import WorldConfig
    from circuitdecomp.world.world import make_world

    world = make_world(
        WorldConfig(
            n_animals=40,
            n_attributes=4,
            n_houses=3,
            n_economies=2,
            n_facts=3,
            n_fact_answers=4,
            d_model=16,
            attribute_margin=0.25,
        ),
        seed=0,
    )
    ex = world.examples
    pairs = set(zip(ex.qtype.tolist(), ex.entity.tolist()))
    sample = fit_sample(ex, len(pairs) + 10, seed=1)
    assert len(sample) == len(pairs) + 10
    assert set(zip(sample.qtype.tolist(), sample.entity.tolist())) == pairs
    assert fit_sample(ex, len(ex) + 1, seed=1) is ex  # small worlds: every input


def test_features_fitted_on_one_sample_are_valued_on_another() -> None:
    """apply_features: the same directions and gates, values = gated projections of the other inputs."""
    from circuitdecomp.features.extract import apply_features

    u, v, values, entity, resid = _world()
    feats = extract_features(_planted_candidates(u, v, entity, resid), resid, data_span(v), FeaturesConfig())
    half = torch.arange(len(entity)) % 2 == 0
    moved = apply_features(feats, resid[half])
    assert torch.allclose(moved.values, feats.values[half], atol=1e-6)
    assert torch.equal(moved.directions, feats.directions)


def test_neuron_control_reads_rows_of_readers_and_columns_of_writers() -> None:
    """Each unit of a reader is its row with importance from its (rectified) output; each unit of a writer its column
    with importance from its input coordinate; units that never move are left out."""
    from circuitdecomp.features.controls import neuron_candidates

    d = 4
    W_in = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 0.5]])  # 3 hidden units read the residual
    W_out = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0], [0, 0, 0]])  # writes it back: [d_model, 3]
    x = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [-1.0, 0, 0, 0]])
    h = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 0]])  # unit 2 never fires
    cfg = FeaturesConfig(read_patterns=["mlp.in"], write_patterns=["mlp.out"], rectified_reads=["mlp.in"])
    cands = neuron_candidates(
        {"mlp.in": W_in, "mlp.out": W_out}, {"mlp.in": None, "mlp.out": None}, {"mlp.in": x, "mlp.out": h}, d, cfg
    )
    got = {(c.module, c.component, c.role) for c in cands}
    assert got == {("mlp.in", 0, "read"), ("mlp.in", 1, "read"), ("mlp.out", 0, "write"), ("mlp.out", 1, "write")}
    read0 = next(c for c in cands if c.module == "mlp.in" and c.component == 0)
    assert torch.equal(read0.direction, W_in[0]) and torch.equal(read0.ci, torch.tensor([1.0, 0.0, 0.0]))  # ReLU: -1 -> 0
    write1 = next(c for c in cands if c.module == "mlp.out" and c.component == 1)
    assert torch.equal(write1.direction, W_out[:, 1]) and torch.equal(write1.ci, torch.tensor([0.0, 1.0, 0.0]))
    unrectified = neuron_candidates(
        {"mlp.in": W_in},
        {"mlp.in": None},
        {"mlp.in": x},
        d,
        FeaturesConfig(read_patterns=["mlp.in"], write_patterns=[], rectified_reads=[]),
    )
    assert torch.equal(next(c for c in unrectified if c.component == 0).ci, torch.tensor([1.0, 0.0, 1.0]))  # |a|


def test_neuron_control_on_a_planted_target_finds_what_its_units_hold() -> None:
    """A target whose units are the planted look-ups gives the animals away with no decomposition: the control scores
    them, through the same extraction as the decomposition's components."""
    from circuitdecomp.features.controls import neuron_candidates

    u, v, values, entity, resid = _world()
    W_in = 4 * v  # one unit per animal, thresholded below its own animal's projection
    nearest = (v @ v.T - 2 * torch.eye(v.shape[0])).amax(dim=1)  # cos with the nearest other animal
    b = -4 * (1 + nearest) / 2  # the unit fires midway between its own animal's projection and the nearest other's
    cfg = FeaturesConfig(read_patterns=["mlp.in"], write_patterns=[])
    cands = neuron_candidates({"mlp.in": W_in}, {"mlp.in": b}, {"mlp.in": resid}, 10, cfg)
    feats = extract_features(cands, resid, data_span(v), cfg)
    animals = torch.zeros(len(entity), v.shape[0])
    animals[torch.arange(len(entity)), entity] = 1.0
    truth = GroundTruth((Family("animals", v, animals), Family("attributes", u, values[entity])))
    result = score_recovery(Units(feats.directions, feats.values), truth)
    assert result.family("animals").full.directions.one_to_one_frac_cos90 == 1.0
    assert result.family("attributes").full.directions.one_to_one_frac_cos90 < 0.5
