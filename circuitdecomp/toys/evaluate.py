"""Scores of a toy decomposition against the target's known mechanisms (SPD paper metrics)."""

import fnmatch
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.evaluate.config import EvaluationConfig
from circuitdecomp.runio import Metrics


@dataclass(frozen=True)
class ColumnMatch:
    mmcs: float
    ml2r: float


def column_match(V: Float[Tensor, "d_in C"], U: Float[Tensor, "C d_out"], W: Float[Tensor, "d_out d_in"]) -> ColumnMatch:
    """MMCS and ML2R over the columns of W: best component per column by cosine, and its norm ratio."""
    cols = W / W.norm(dim=0, keepdim=True).clamp_min(1e-12)  # [d_out, d_in]
    U_unit = U / U.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [C, d_out]
    cos = torch.sign(V).T * (U_unit @ cols)  # [C, d_in]: cos of U_c V_cj with W[:, j]
    best = cos.argmax(0)  # [d_in]
    j = torch.arange(W.shape[1])
    norms = U.norm(dim=1)[best] * V[j, best].abs()
    return ColumnMatch(mmcs=cos.max(0).values.mean().item(), ml2r=(norms / W.norm(dim=0)).mean().item())


def identity_error(ci: Float[Tensor, "n_features C"], tol: float) -> int:
    """Entries off a one-component-per-feature pattern, after the best (Hungarian) column permutation."""
    rows, cols = linear_sum_assignment(-ci.numpy())
    perm = np.concatenate([cols, np.setdiff1d(np.arange(ci.shape[1]), cols)])
    p = ci[:, perm]
    n = min(p.shape)
    on = torch.zeros_like(p, dtype=torch.bool)
    on[torch.arange(n), torch.arange(n)] = True
    return int((p[on] < 1 - tol).sum() + (p[~on] > tol).sum())


def dense_error(ci: Float[Tensor, "n_features C"], k: int, tol: float) -> int:
    """Deviation from "k components carry the module" (the paper's dense-k pattern, e.g. an identity of rank k).

    Counts the k busiest columns that are never strongly on (>= 1 - tol for some feature) plus every entry above
    tol outside them. A feature may use fewer than k of them: a feature whose direction is one component's
    read direction needs only that component.
    """
    p = ci[:, ci.sum(0).argsort(descending=True)]
    missing = ((p[:, :k] >= 1 - tol).sum(0) == 0).sum()
    stray = (p[:, k:] > tol).sum()
    return int(missing + stray)


def one_hot_ci(cm: ComponentModel, n_features: int, magnitude: float) -> dict[str, Tensor]:
    """CI per module for each single active feature: {path: [n_features, C]}."""
    with torch.no_grad():
        cm.run_target(torch.eye(n_features) * magnitude)
        return {p: g.detach() for p, g in cm.causal_importance().lower.items()}


def _matching(paths: list[str], pattern: str) -> list[str]:
    return [p for p in paths if fnmatch.fnmatchcase(p, pattern)]


def evaluate_toy(
    cm: ComponentModel,
    n_features: int,
    cfg: EvaluationConfig,
    data: Tensor,
    ci_threshold: float,
    embedding: Float[Tensor, "n_features d"] | None = None,
) -> Metrics:
    """`decomp/...` metrics: MMCS/ML2R, target-solution error, live components and CI-L0 per module.

    `embedding`: how features enter the stream that matrices of width d read (resid_mlp's W_E); such matrices are
    compared in feature space, W @ embedding^T against U_c (embedding @ V_c).
    """
    metrics: Metrics = {}
    ci_hot = one_hot_ci(cm, n_features, cfg.one_hot_magnitude)
    with torch.no_grad():
        cm.run_target(data)
        ci_data = {p: g.detach() for p, g in cm.causal_importance().lower.items()}
    errors: dict[str, int] = {}
    mm, ml = [], []
    for pattern in cfg.identity_ci:
        for path in _matching(cm.paths, pattern):
            comp = cm.component(path)
            errors[path] = errors.get(path, 0) + identity_error(ci_hot[path], cfg.tolerance)
            W, V, U = comp.target_weight().detach(), comp.V.detach(), comp.U.detach()
            # Compare along the feature axis: columns of W when it reads features (directly or through the embedding),
            # rows when it writes them.
            if comp.d_in == n_features:
                match = column_match(V, U, W)
            elif embedding is not None and comp.d_in == embedding.shape[1]:
                match = column_match(embedding @ V, U, W @ embedding.T)
            else:
                match = column_match(U.T, V.T, W.T)
            metrics[f"decomp/mmcs/{path}"], metrics[f"decomp/ml2r/{path}"] = match.mmcs, match.ml2r
            mm.append(match.mmcs)
            ml.append(match.ml2r)
    for spec in cfg.dense_ci:
        for path in _matching(cm.paths, spec.pattern):
            errors[path] = errors.get(path, 0) + dense_error(ci_hot[path], spec.k, cfg.tolerance)
    if mm:  # headline = the paper's definition: the first module (TMS: W = linear1); per-module keys have all
        metrics["decomp/mmcs"], metrics["decomp/ml2r"] = mm[0], ml[0]
    metrics["decomp/target_solution_error"] = sum(errors.values())
    metrics.update({f"decomp/target_solution_error/{path}": e for path, e in errors.items()})
    for path in cm.paths:
        comp = cm.component(path)
        norms = (comp.U.norm(dim=1) * comp.V.norm(dim=0)).detach()
        ci_max = torch.maximum(ci_hot[path].max(0).values, ci_data[path].flatten(0, -2).max(0).values)
        metrics[f"decomp/n_live/{path}"] = int(((norms > cfg.live_norm) & (ci_max > ci_threshold)).sum())
        metrics[f"decomp/ci_l0/{path}"] = (ci_data[path] > ci_threshold).float().sum(-1).mean().item()
    return metrics
