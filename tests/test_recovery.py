"""The ground-truth scoring on synthetic worlds: planted ≈ 1, random at chance, half-size slope 0.5, one family."""

import dataclasses

import numpy as np
import pytest
import torch

from circuitdecomp.evaluate.coefficients import coefficient_scores
from circuitdecomp.evaluate.config import EvaluationConfig, RecoveryConfig
from circuitdecomp.evaluate.dictionaries import (
    chance_level,
    family_dictionary,
    half_size_dictionary,
    least_squares_values,
    max_cos_below,
    planted_dictionary,
    random_dictionary,
)
from circuitdecomp.evaluate.recovery import Family, GroundTruth, Units, score_recovery, to_metrics
from circuitdecomp.evaluate.simplicity import probe_sizes

FAMILIES = ("animals", "attributes")


def make_truth(n_attributes: int = 8, n_animals: int = 60, d_model: int = 32, n_inputs: int = 2000, seed: int = 0) -> GroundTruth:
    """Attributes u_j orthonormal in a random rotation, animals v_i = normalised profiles, a = Σ c_i v_i = Σ c'_j u_j."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_model, d_model, generator=gen, dtype=torch.float64))
    u = q.T[:n_attributes].float().contiguous()
    profiles = torch.randn(n_animals, n_attributes, generator=gen)
    A = profiles / profiles.norm(dim=1, keepdim=True)
    v = A @ u
    # one animal per input, a second one on half of them (it may repeat the first: then its coefficient adds)
    c = torch.zeros(n_inputs, n_animals)
    rows = torch.arange(n_inputs)
    for keep in (torch.ones(n_inputs), (torch.rand(n_inputs, generator=gen) < 0.5).float()):
        who = torch.randint(n_animals, (n_inputs,), generator=gen)
        c[rows, who] += keep * (0.5 + torch.rand(n_inputs, generator=gen))
    return GroundTruth((Family("animals", v, c), Family("attributes", u, c @ A)), subspace_basis=u)


@pytest.fixture(scope="module")
def truth() -> GroundTruth:
    return make_truth()


def test_families_describe_the_same_activation(truth):
    animals, attributes = truth.families
    torch.testing.assert_close(animals.activations(), attributes.activations(), atol=1e-5, rtol=0)


def test_planted_dictionary_scores_one(truth):
    m = to_metrics(score_recovery(planted_dictionary(truth), truth))
    for geo in ("", "subspace/"):
        for f in (*FAMILIES, "min"):
            for key in ("frac_cos90", "frac_cos99", "coef_recall", "one_to_one_frac_cos90"):
                assert m[f"recovery/{f}/{geo}{key}"] == 1.0, (f, geo, key)
            for key in ("mean_max_cos", "one_to_one_cos", "coef_r", "coef_r2"):
                assert m[f"recovery/{f}/{geo}{key}"] == pytest.approx(1.0, abs=1e-4), (f, geo, key)
    for f in FAMILIES:
        assert m[f"recovery/{f}/coef_slope"] == pytest.approx(1.0, abs=1e-4)
        assert m[f"recovery/{f}/units_for_r2_90"] == 1.0
        assert m[f"recovery/{f}/units_for_r2_90_capped"] == 0.0
    assert m["recovery/animals/n_features"] == 60 and m["recovery/attributes/n_features"] == 8
    assert m["recovery/dead_frac"] == 0.0 and m["recovery/spurious_frac"] == 0.0
    assert all(isinstance(v, (int, float)) and np.isfinite(v) for v in m.values())


def test_half_size_dictionary_has_directions_but_half_coefficients(truth):
    half = half_size_dictionary(truth)
    torch.testing.assert_close(half.activations(), truth.families[0].activations(), atol=1e-5, rtol=0)
    m = to_metrics(score_recovery(half, truth))
    for f in FAMILIES:
        assert m[f"recovery/{f}/frac_cos99"] == 1.0
        assert m[f"recovery/{f}/coef_r"] == pytest.approx(1.0, abs=1e-4)
        assert m[f"recovery/{f}/coef_slope"] == pytest.approx(0.5, abs=1e-4)
        assert m[f"recovery/{f}/coef_recall"] == 0.0
        assert m[f"recovery/{f}/coef_r2"] < 0.9
    assert m["recovery/min/coef_recall"] == 0.0 and m["recovery/min/frac_cos90"] == 1.0


def test_random_dictionary_is_at_chance(truth):
    gen = torch.Generator().manual_seed(1)
    n_units = 68
    result = score_recovery(random_dictionary(truth.families[0].activations(), n_units, gen), truth)
    m = to_metrics(result)
    for fam in truth.families:
        for geo, feats in (("", fam.directions), ("subspace/", fam.directions @ truth.subspace_basis.T)):
            chance = chance_level(feats, n_units, gen, n_draws=8)
            got = lambda key: m[f"recovery/{fam.name}/{geo}{key}"]  # noqa: E731
            # a family's mean of per-feature maxima: tolerance ~4 standard errors for 8 features
            assert got("mean_max_cos") == pytest.approx(chance.mean_max_cos, abs=0.08), (fam.name, geo)
            assert got("frac_cos90") == pytest.approx(chance.frac_cos90, abs=0.1), (fam.name, geo)
            assert got("coef_recall") <= 0.05
    # the one-to-one matching is joint over families, so its chance level is that of all features together
    features = torch.cat([f.directions for f in truth.families])
    joint = sum(m[f"recovery/{f.name}/one_to_one_cos"] * f.directions.shape[0] for f in truth.families) / features.shape[0]
    assert joint == pytest.approx(chance_level(features, n_units, gen, n_draws=8).one_to_one_cos, abs=0.05)


def test_chance_level_matches_simulation():
    gen = torch.Generator().manual_seed(2)
    d, n_units = 4, 10  # small enough that |cos| >= 0.9 happens by chance
    chance = chance_level(torch.randn(50, d, generator=gen), n_units, gen)
    features = torch.nn.functional.normalize(torch.randn(4000, d, generator=gen), dim=1)
    units = torch.nn.functional.normalize(torch.randn(4000, n_units, d, generator=gen), dim=2)
    best = torch.einsum("fd,fud->fu", features, units).abs().amax(dim=1)
    assert (best >= 0.9).float().mean().item() == pytest.approx(chance.frac_cos90, abs=0.03)
    assert best.mean().item() == pytest.approx(chance.mean_max_cos, abs=0.01)
    assert 0 < chance.one_to_one_cos < chance.mean_max_cos
    assert max_cos_below(1.0, d, n_units) == pytest.approx(1.0)


def test_one_family_dictionary_smears_the_other(truth):
    m = to_metrics(score_recovery(family_dictionary(truth, "animals"), truth))
    assert m["recovery/animals/frac_cos99"] == 1.0 and m["recovery/animals/coef_recall"] == 1.0
    assert m["recovery/animals/units_for_r2_90"] == 1.0
    assert m["recovery/attributes/frac_cos90"] <= 0.25 and m["recovery/attributes/mean_max_cos"] < 0.9
    assert m["recovery/attributes/coef_recall"] == 0.0
    assert m["recovery/attributes/units_for_r2_90"] >= 10  # the size reader has many edges in this dictionary
    assert m["recovery/min/coef_recall"] == 0.0


def test_least_squares_coefficients_are_not_the_true_ones(truth):
    animals = truth.families[0]
    units = Units(animals.directions, least_squares_values(animals.directions, animals.activations()))
    m = to_metrics(score_recovery(units, truth))
    # 60 animals in an 8-dim span: the minimum-norm fit spreads each input over all animals
    assert m["recovery/animals/frac_cos99"] == 1.0
    assert m["recovery/animals/coef_recall"] == 0.0
    assert m["recovery/attributes/units_for_r2_90"] <= 8  # the values span only the 8-dim attribute space


def test_sign_and_scale_of_units_are_undone(truth):
    units = planted_dictionary(truth)
    flipped = Units(-2.0 * units.directions, -0.5 * units.values)  # same contribution to the activation
    m = to_metrics(score_recovery(flipped, truth))
    assert m["recovery/min/coef_recall"] == 1.0
    assert m["recovery/animals/coef_slope"] == pytest.approx(1.0, abs=1e-4)


def test_subspace_projection_removes_outside_components(truth):
    attributes = truth.families[1]
    outside = torch.linalg.svd(truth.subspace_basis, full_matrices=True).Vh[8:16]  # orthonormal, ⟂ the subspace
    units = Units(attributes.directions + outside, attributes.coefficients)  # |cos| = 1/√2 with the truth
    result = score_recovery(units, truth)
    full, sub = result.family("attributes").full, result.family("attributes").subspace
    assert full.directions.mean_max_cos == pytest.approx(2**-0.5, abs=1e-4) and full.directions.frac_cos90 == 0.0
    assert sub.directions.frac_cos99 == 1.0 and sub.coefficients.recall == 1.0
    # a unit entirely outside the subspace takes no part in the subspace scores
    stray = Units(outside[:1], attributes.coefficients[:, :1])
    assert score_recovery(stray, truth).family("attributes").subspace.directions.mean_max_cos == 0.0


def test_dead_and_spurious_units(truth):
    planted = planted_dictionary(truth)
    outside = torch.linalg.svd(truth.subspace_basis, full_matrices=True).Vh[8:9]
    directions = torch.cat([planted.directions, planted.directions[:1], outside])
    values = torch.cat([planted.values, torch.zeros(truth.n_inputs, 1), torch.randn(truth.n_inputs, 1)], dim=1)
    result = score_recovery(Units(directions, values), truth)
    assert result.dead.nonzero().flatten().tolist() == [68]
    assert result.spurious.nonzero().flatten().tolist() == [69]
    m = to_metrics(result)
    assert m["recovery/dead_frac"] == pytest.approx(1 / 70) and m["recovery/spurious_frac"] == pytest.approx(1 / 70)


def test_coefficient_scores_against_hand_values():
    c = torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 5.0]])
    x = torch.stack([2 * c[:, 0] + 1, torch.full((4,), 7.0)], dim=1)  # exact affine fit; a constant unit
    s = coefficient_scores(x, c, min_r=0.9, slope_tol=0.2)
    assert s.r.tolist() == pytest.approx([1.0, 0.0]) and s.slope.tolist() == pytest.approx([2.0, 0.0])
    sst = ((c[:, 0] - 1.5) ** 2).sum().item()
    assert s.r2[0].item() == pytest.approx(1 - ((c[:, 0] + 1) ** 2).sum().item() / sst)
    assert s.recall == 0.0 and s.n_scored == 2


def _greedy_reference(values: torch.Tensor, target: torch.Tensor, cap: int) -> int:
    """OMP written out: pick the unit most correlated with the residual, refit by least squares, repeat."""
    z = values - values.mean(0)
    z = z / z.norm(dim=0)
    y = target - target.mean()
    chosen: list[int] = []
    resid = y
    for k in range(1, cap + 1):
        corr = (z.T @ resid).abs()
        corr[chosen] = -1
        chosen.append(int(corr.argmax()))
        beta = torch.linalg.lstsq(z[:, chosen].double(), y[:, None].double()).solution
        resid = y - (z[:, chosen].double() @ beta)[:, 0].float()
        if 1 - resid.pow(2).sum() / y.pow(2).sum() >= 0.9:
            return k
    return cap + 1


def test_probe_sizes_match_reference():
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(500, 40, generator=gen)
    weights = torch.randn(40, 12, generator=gen) * (torch.rand(40, 12, generator=gen) < torch.linspace(0.03, 0.9, 12)).float()
    targets = values @ weights + 0.1 * torch.randn(500, 12, generator=gen)
    cap = 20
    got = probe_sizes(values, targets, cap).tolist()
    assert got == [_greedy_reference(values, targets[:, j], cap) for j in range(12)]
    assert min(got) <= 3 and max(got) == cap + 1


def test_medium_world_is_scored_in_chunks():
    truth = make_truth(n_attributes=16, n_animals=300, d_model=64, n_inputs=6000, seed=4)
    m = to_metrics(score_recovery(planted_dictionary(truth), truth))
    assert m["recovery/min/frac_cos99"] == 1.0 and m["recovery/min/coef_recall"] == 1.0
    assert m["recovery/animals/units_for_r2_90"] == 1.0
    m = to_metrics(score_recovery(family_dictionary(truth, "animals"), truth, RecoveryConfig(probe_max_units=16)))
    assert m["recovery/attributes/units_for_r2_90"] == 16 and m["recovery/attributes/units_for_r2_90_capped"] == 1.0
    assert m["recovery/probe_cap"] == 16


def test_shape_and_argument_errors(truth):
    animals, attributes = truth.families
    units = planted_dictionary(truth)
    with pytest.raises(ValueError, match="n_inputs=100"):
        score_recovery(Units(units.directions, units.values[:100]), truth)
    with pytest.raises(ValueError, match="has no features"):
        Family("animals", torch.zeros(0, 32), torch.zeros(10, 0))
    with pytest.raises(ValueError, match="disagree on"):
        GroundTruth((animals, dataclasses.replace(attributes, coefficients=attributes.coefficients[:10])))
    with pytest.raises(ValueError, match="d_model=16"):
        score_recovery(Units(torch.randn(3, 16), torch.randn(truth.n_inputs, 3)), truth)
    with pytest.raises(ValueError, match="not unique"):
        GroundTruth((animals, animals))
    with pytest.raises(ValueError, match="reserved"):
        Family("min", animals.directions, animals.coefficients)
    with pytest.raises(ValueError, match="orthonormal"):
        GroundTruth(truth.families, subspace_basis=2 * truth.subspace_basis)
    with pytest.raises(ValueError, match=r"rows \[1\] have zero norm"):
        Units(torch.stack([units.directions[0], torch.zeros(32)]), units.values[:, :2])
    with pytest.raises(ValueError, match="no coefficient varies"):
        Family("animals", animals.directions, torch.zeros_like(animals.coefficients))
    with pytest.raises(ValueError, match="probe_max_units"):
        RecoveryConfig(probe_max_units=0)
    assert EvaluationConfig().recovery == RecoveryConfig()
