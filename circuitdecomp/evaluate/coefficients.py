"""Coefficient fidelity, the thesis metric: does a feature's best unit carry the true per-input coefficient?"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor


@dataclass(frozen=True)
class CoefficientScores:
    """Per-feature fit of the best unit's value x to the true coefficient c, and its summary over one family.

    Means are over scored features: those whose true coefficient varies on the inputs (an animal that never
    appears has nothing to recover); per-feature entries of unscored features are NaN.
    """

    recall: float  # fraction with r >= coef_min_r and |slope - 1| <= coef_slope_tol
    mean_r: float  # Pearson r of x with c
    mean_slope: float  # least-squares slope of x on c (with intercept): 0.5 for the half-size dictionary
    mean_r2: float  # 1 - SSE/SST of x used *as* c, no fit: 1 only when the value equals the coefficient
    n_scored: int
    r: Float[Tensor, " n_features"]
    slope: Float[Tensor, " n_features"]
    r2: Float[Tensor, " n_features"]
    recovered: Bool[Tensor, " n_features"]


def varies(coefficients: Float[Tensor, "n_inputs n_features"]) -> Bool[Tensor, " n_features"]:
    """Features whose true coefficient is not constant on the inputs (only these can be scored)."""
    return coefficients.amax(dim=0) > coefficients.amin(dim=0)


def coefficient_scores(
    values: Float[Tensor, "n_inputs n_features"],
    truth: Float[Tensor, "n_inputs n_features"],
    min_r: float,
    slope_tol: float,
) -> CoefficientScores:
    """Regress each matched unit value (column of `values`, sign-corrected) on the true coefficient of its feature."""
    scored = varies(truth)
    # float32 products, float64 sums: exact enough and half the memory of float64 copies at 20000 x 1000
    xc = values - values.mean(dim=0)
    tc = truth - truth.mean(dim=0)
    sxx = xc.pow(2).sum(dim=0, dtype=torch.float64)
    stt = tc.pow(2).sum(dim=0, dtype=torch.float64)
    sxt = (xc * tc).sum(dim=0, dtype=torch.float64)
    sse = (truth - values).pow(2).sum(dim=0, dtype=torch.float64)
    stt_safe = torch.where(scored, stt, 1.0)
    r = sxt / (sxx * stt_safe).sqrt().clamp_min(1e-30)  # a constant (dead) unit gets r = 0
    slope = sxt / stt_safe
    r2 = 1 - sse / stt_safe
    recovered = scored & (r >= min_r) & ((slope - 1).abs() <= slope_tol)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    r, slope, r2 = (torch.where(scored, t, nan).float() for t in (r, slope, r2))
    n = int(scored.sum())
    return CoefficientScores(
        recall=recovered.sum().item() / max(n, 1),
        mean_r=r[scored].mean().item(),
        mean_slope=slope[scored].mean().item(),
        mean_r2=r2[scored].mean().item(),
        n_scored=n,
        r=r,
        slope=slope,
        r2=r2,
        recovered=recovered,
    )
