"""Reference dictionaries that validate the recovery metric, and the chance level of a random one.

* planted: the true features themselves, every metric ≈ 1;
* half-size: both families with halved coefficients. When every family describes the same activation
  (`a = Σ_i c_i v_i = Σ_j c'_j u_j`, docs/world.md) it reconstructs `a` exactly with perfect directions, yet each
  coefficient has slope 0.5: the best a single dictionary holding both families can do;
* one family only: what an SAE that found the animals has;
* random: isotropic unit directions, against the analytic (and Monte-Carlo, for Hungarian) chance level.
"""

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from scipy.special import betainc
from torch import Tensor

from circuitdecomp.evaluate.directions import COS_EXACT, COS_HIGH, cosines, direction_scores, hungarian, unit_rows
from circuitdecomp.evaluate.recovery import GroundTruth, Units
from circuitdecomp.frozen import check


def planted_dictionary(truth: GroundTruth, scale: float = 1.0) -> Units:
    """Every family's true directions as units, each carrying `scale` times its true coefficient."""
    return Units(
        torch.cat([f.directions for f in truth.families]),
        torch.cat([f.coefficients for f in truth.families], dim=1) * scale,
    )


def half_size_dictionary(truth: GroundTruth) -> Units:
    """Both (all) families with every coefficient halved: exact reconstruction when the two families agree."""
    check(len(truth.families) == 2, f"the half-size dictionary splits the activation over 2 families, not {len(truth.families)}")
    return planted_dictionary(truth, scale=0.5)


def family_dictionary(truth: GroundTruth, name: str) -> Units:
    """One family's true directions and coefficients only."""
    fam = {f.name: f for f in truth.families}
    check(name in fam, f"no family {name!r}; have {sorted(fam)}")
    return Units(fam[name].directions, fam[name].coefficients)


def least_squares_values(
    directions: Float[Tensor, "n_units d_model"], activations: Float[Tensor, "n_inputs d_model"]
) -> Float[Tensor, "n_inputs n_units"]:
    """Minimum-norm coefficients reconstructing the activations from these directions (all an activation-only fit knows)."""
    return activations @ torch.linalg.pinv(directions)


def random_directions(n: int, d_model: int, generator: torch.Generator) -> Float[Tensor, "n d_model"]:
    """Rows uniform on the unit sphere (normalised Gaussians)."""
    return unit_rows(torch.randn(n, d_model, generator=generator))


def random_dictionary(activations: Float[Tensor, "n_inputs d_model"], n_units: int, generator: torch.Generator) -> Units:
    """Random unit directions whose values are the activations' projections onto them (a random linear read-out)."""
    directions = random_directions(n_units, activations.shape[1], generator)
    return Units(directions, activations @ directions.T)


@dataclass(frozen=True)
class ChanceLevel:
    """Expected direction scores of `n_units` isotropic random directions."""

    frac_cos90: float  # exact: 1 - P(|cos| < 0.9)^n_units
    frac_cos99: float
    mean_max_cos: float  # exact up to quadrature: ∫ P(max |cos| > t) dt
    one_to_one_cos: float  # Monte-Carlo over draws, for the given features (the matching depends on their geometry)
    one_to_one_frac_cos90: float


def max_cos_below(t: float | np.ndarray, d_model: int, n_units: int) -> float | np.ndarray:
    """P(max over n_units random directions of |cos| with a fixed direction < t), in d_model dimensions."""
    # cos² of a uniform direction with a fixed one is Beta(1/2, (d-1)/2)
    return betainc(0.5, (d_model - 1) / 2, np.clip(t, 0, 1) ** 2) ** n_units


def chance_level(
    features: Float[Tensor, "n_features d_model"], n_units: int, generator: torch.Generator, n_draws: int = 4
) -> ChanceLevel:
    """Chance scores of a random dictionary of `n_units` against these feature directions (their space's dimension)."""
    d = features.shape[1]
    check(
        d >= 2 and n_units >= 1 and n_draws >= 1,
        f"chance level needs d_model >= 2, n_units >= 1, n_draws >= 1 (got {d}, {n_units}, {n_draws})",
    )
    grid = np.linspace(0.0, 1.0, 20001)
    mean_max = np.trapezoid(1 - max_cos_below(grid, d, n_units), grid)
    rows = unit_rows(features.float())
    matched_cos, matched_90 = [], []
    for _ in range(n_draws):
        cos = cosines(rows, random_directions(n_units, d, generator))
        scores = direction_scores(cos, hungarian(cos.abs()))
        matched_cos.append(scores.one_to_one_cos)
        matched_90.append(scores.one_to_one_frac_cos90)
    return ChanceLevel(
        frac_cos90=float(1 - max_cos_below(COS_HIGH, d, n_units)),
        frac_cos99=float(1 - max_cos_below(COS_EXACT, d, n_units)),
        mean_max_cos=float(mean_max),
        one_to_one_cos=float(np.mean(matched_cos)),
        one_to_one_frac_cos90=float(np.mean(matched_90)),
    )
