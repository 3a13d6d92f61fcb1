"""Circuit simplicity: how many units a sparse linear read-out needs to predict a true coefficient.

A feature that a dictionary represents as one unit needs one; a feature the dictionary smears over many units
(the size attribute in a dictionary of animals) needs many: the fewest edges a circuit computing the feature
from that dictionary could have. It is a lower bound on a given circuit's edges: in the half-size dictionary the
size unit alone predicts size (R² 1), though the model's linear size reader also connects to every animal.
The read-out is greedy (orthogonal matching pursuit) on correlation matrices computed once, batched over
features, so every feature is scored, not a subsample.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

PROBE_R2 = 0.9  # named in the metric key (units_for_r2_90)
_CHUNK = 64  # features solved together: their selected Gram rows take CHUNK * n_units * cap floats
_RIDGE = 1e-6  # keeps the small solves finite when a selected unit is (numerically) a mix of earlier ones


@dataclass(frozen=True)
class SimplicityScores:
    """Units a k-sparse read-out of one family's coefficients needs; unreached features count as the cap."""

    mean_units: float  # over scored features; a lower bound when frac_capped > 0
    median_units: float
    frac_capped: float  # fraction of scored features that did not reach R² 0.9 within `cap` units
    cap: int
    units: Int[Tensor, " n_features"]  # 0 for unscored features (their true coefficient is constant)
    reached: Bool[Tensor, " n_features"]


def _standardised(x: Float[Tensor, "n_inputs n"]) -> tuple[Float[Tensor, "n_inputs n"], Bool[Tensor, " n"]]:
    """Centred columns of unit norm (zero where the column is constant), and which columns vary."""
    live = x.amax(dim=0) > x.amin(dim=0)
    xc = x - x.mean(dim=0)
    return xc.div_(torch.where(live, xc.norm(dim=0), 1.0)), live  # in place: one copy of [n_inputs, n_units]


def _omp(
    gram: Float[Tensor, "n_units n_units"], corr: Float[Tensor, "m n_units"], live: Bool[Tensor, " n_units"], r2: float, cap: int
) -> Int[Tensor, " m"]:
    """Batched OMP on correlations: units selected until in-sample R² >= r2; cap + 1 where never reached."""
    m, n_units = corr.shape
    need = torch.full((m,), cap + 1, dtype=torch.long)
    active = torch.arange(m)  # features still selecting; finished ones are dropped from every state tensor
    chosen = torch.zeros(m, cap, dtype=torch.long)
    gram_rows = torch.zeros(m, cap, n_units)  # gram[chosen], one contiguous row per step
    blocked = (~live).expand(m, n_units).clone()
    resid = corr
    for t in range(cap):
        j = resid.abs().masked_fill_(blocked, -1.0).argmax(dim=1)
        chosen[:, t], blocked[torch.arange(len(active)), j], gram_rows[:, t] = j, True, gram[j]
        k = t + 1
        g_ss = gram_rows[:, :k].gather(2, chosen[:, None, :k].expand(-1, k, k)).double()  # small solves in float64
        c_s = corr.gather(1, chosen[:, :k]).double()
        beta = torch.linalg.solve(g_ss + _RIDGE * torch.eye(k, dtype=torch.float64), c_s)
        done = (c_s * beta).sum(dim=1) >= r2  # explained variance of the standardised target
        need[active[done]] = k
        if bool(done.any()):
            keep = ~done
            active, chosen, gram_rows, blocked, corr, beta = (x[keep] for x in (active, chosen, gram_rows, blocked, corr, beta))
            if len(active) == 0:
                break
        resid = corr - (beta[:, None, :].float() @ gram_rows[:, :k])[:, 0]
    return need


def probe_sizes(
    values: Float[Tensor, "n_inputs n_units"], targets: Float[Tensor, "n_inputs n_targets"], cap: int
) -> Int[Tensor, " n_targets"]:
    """Units a greedy least-squares read-out (with intercept) of each target needs for R² >= 0.9; cap + 1 if more."""
    z, live = _standardised(values)
    y, _ = _standardised(targets)
    n_live = int(live.sum())
    if n_live == 0:
        return torch.full((targets.shape[1],), cap + 1, dtype=torch.long)
    gram = z.T @ z
    corr = y.T @ z
    del z, y
    steps = min(cap, n_live)  # past the live units there is nothing left to select
    need = torch.cat([_omp(gram, c, live, PROBE_R2, steps) for c in corr.split(_CHUNK)])
    return torch.where(need > steps, cap + 1, need)


def simplicity_scores(need: Int[Tensor, " n_features"], scored: Bool[Tensor, " n_features"], cap: int) -> SimplicityScores:
    """Summarise `probe_sizes` over one family's scored features; unreached ones count as `cap` units."""
    reached = scored & (need <= cap)
    units = torch.where(scored, need.clamp_max(cap), 0)
    counted = units[scored].float()
    return SimplicityScores(
        mean_units=counted.mean().item(),
        median_units=counted.quantile(0.5).item(),
        frac_capped=(scored & ~reached).sum().item() / max(int(scored.sum()), 1),
        cap=cap,
        units=units,
        reached=reached,
    )
