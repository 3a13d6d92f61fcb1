"""Direction recovery: best |cos| per true feature, one-to-one (Hungarian) matching, and subspace projection."""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from scipy.optimize import linear_sum_assignment
from torch import Tensor

COS_HIGH, COS_EXACT = 0.9, 0.99  # named in the metric keys (frac_cos90, frac_cos99)


@dataclass(frozen=True)
class DirectionScores:
    """How well one family's directions are found among the units."""

    frac_cos90: float  # fraction of true features whose best unit has |cos| >= 0.9
    frac_cos99: float
    mean_max_cos: float  # mean over features of the best |cos|
    one_to_one_cos: float  # mean |cos| under the one-to-one matching (unmatched features count 0)
    one_to_one_frac_cos90: float
    best_unit: Int[Tensor, " n_features"]
    best_cos: Float[Tensor, " n_features"]  # signed cosine with the best unit: the sign orients its value
    matched_unit: Int[Tensor, " n_features"]  # Hungarian partner, -1 when there are fewer units than features


def unit_rows(x: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
    """Rows scaled to unit norm (callers have checked that no row is zero)."""
    return x / x.norm(dim=1, keepdim=True)


def project_rows(
    rows: Float[Tensor, "n d_model"], basis: Float[Tensor, "d_subspace d_model"], min_norm: float
) -> tuple[Float[Tensor, "n d_subspace"], Float[Tensor, " n"]]:
    """Unit rows in subspace coordinates, renormalised (zero when < min_norm of the row lies inside), and that fraction."""
    coords = rows @ basis.T  # rows have unit norm, so the projection's norm is the fraction inside
    inside = coords.norm(dim=1)
    kept = inside >= max(min_norm, 1e-12)  # never divide by an exactly zero projection
    return torch.where(kept[:, None], coords / inside.clamp_min(1e-12)[:, None], 0.0), inside


def cosines(features: Float[Tensor, "n_features d"], units: Float[Tensor, "n_units d"]) -> Float[Tensor, "n_features n_units"]:
    """Signed cosines between unit-norm feature rows and unit-norm unit rows (zero rows give 0)."""
    return features @ units.T


def hungarian(abs_cos: Float[Tensor, "n_features n_units"]) -> Int[Tensor, " n_features"]:
    """One-to-one matching maximising total |cos|: the matched unit per feature, -1 when unmatched."""
    rows, cols = linear_sum_assignment(abs_cos.double().numpy(), maximize=True)
    matched = torch.full((abs_cos.shape[0],), -1, dtype=torch.long)
    matched[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
    return matched


def direction_scores(cos: Float[Tensor, "n_features n_units"], matched_unit: Int[Tensor, " n_features"]) -> DirectionScores:
    """Best-unit and one-to-one scores of one family from its signed cosine matrix and its matching."""
    best_abs, best_unit = cos.abs().max(dim=1)
    is_matched = matched_unit >= 0
    matched_abs = torch.where(is_matched, cos.abs().gather(1, matched_unit.clamp_min(0)[:, None])[:, 0], 0.0)
    return DirectionScores(
        frac_cos90=(best_abs >= COS_HIGH).float().mean().item(),
        frac_cos99=(best_abs >= COS_EXACT).float().mean().item(),
        mean_max_cos=best_abs.mean().item(),
        one_to_one_cos=matched_abs.mean().item(),
        one_to_one_frac_cos90=(matched_abs >= COS_HIGH).float().mean().item(),
        best_unit=best_unit,
        best_cos=cos.gather(1, best_unit[:, None])[:, 0],
        matched_unit=matched_unit,
    )


def spurious_units(abs_cos: Float[Tensor, "n_features n_units"], threshold: float) -> Bool[Tensor, " n_units"]:
    """Units whose best |cos| with every true feature of every family is below `threshold`."""
    return abs_cos.max(dim=0).values < threshold
