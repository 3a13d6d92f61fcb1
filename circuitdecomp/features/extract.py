"""Features from circuits: the directions live components read from and write to the residual stream.

1. Candidates: for every live component of a residual-reading module its read direction V_c, of a
   residual-writing module its write direction U_c, with its causal importance on each input.
2. Projected into a span (`FeaturesConfig.projection`: none, the span of the residuals seen on the fit inputs,
   or the span of the read-out tokens' embedding rows); directions mostly outside it read or write something the
   data never holds there and are dropped.
3. Near-duplicates (|cos| >= merge_cos) merge into one feature: several circuits may read one direction.
4. Each feature's per-input value is the activation's projection onto it, gated where the projection predicts
   that its circuits are causally important (`gate_threshold`): a look-up component is important only for its
   own entity, so its feature is sparse; an attribute reader is important across the whole range of its
   attribute, so its feature is dense and its value is the plain projection. The gate comes from the circuits,
   never from ground truth.
"""

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitdecomp.features.config import FeaturesConfig

_GATE_CHUNK = 256  # features whose gates are fitted at once: [n_inputs, 256] projections sorted per column


@dataclass(frozen=True)
class Candidate:
    """One live component seen as a direction in the residual stream."""

    module: str
    component: int
    role: str  # "read" (V_c) or "write" (U_c)
    direction: Float[Tensor, " d_model"]
    ci: Float[Tensor, " n_inputs"]  # causal importance on each input at the read-out position


@dataclass(frozen=True)
class Features:
    """Merged features: unit directions, per-input values, and where each came from."""

    directions: Float[Tensor, "n_features d_model"]
    values: Float[Tensor, "n_inputs n_features"]
    thresholds: Float[Tensor, " n_features"]  # projection at which the value switches on (-inf: dense)
    inside: Float[Tensor, " n_features"]  # norm of the raw direction inside the subspace (1 without one)
    provenance: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.directions.shape[0]


def matches(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def candidates(
    V: dict[str, Tensor], U: dict[str, Tensor], ci: dict[str, Tensor], d_model: int, cfg: FeaturesConfig
) -> list[Candidate]:
    """Live components of residual readers (V [d_in, C]) and writers (U [C, d_out]); ci[path] is [n_inputs, C]."""
    out = []
    for path in V:
        roles = []
        if matches(path, cfg.read_patterns) and V[path].shape[0] == d_model:
            roles.append(("read", V[path].T))
        if matches(path, cfg.write_patterns) and U[path].shape[1] == d_model:
            roles.append(("write", U[path]))
        live = (ci[path].max(0).values > cfg.live_ci).nonzero().flatten().tolist()
        for role, rows in roles:
            for c in live:
                if float(rows[c].norm()) > 0:
                    out.append(Candidate(path, c, role, rows[c].detach().float(), ci[path][:, c].float()))
    return out


def extract_features(
    cands: list[Candidate],
    resid: Float[Tensor, "n_inputs d_model"],
    subspace: Float[Tensor, "d_sub d_model"] | None,
    cfg: FeaturesConfig,
) -> Features:
    """Project, filter, merge and give values (module docstring). `subspace` rows must be orthonormal (None: raw)."""
    empty = Features(torch.zeros(0, resid.shape[1]), torch.zeros(resid.shape[0], 0), torch.zeros(0), torch.zeros(0), [])
    if not cands:
        return empty
    raw = torch.stack([c.direction for c in cands])
    raw = raw / raw.norm(dim=1, keepdim=True)
    if subspace is not None:
        proj = raw @ subspace.T @ subspace
        inside = proj.norm(dim=1)
        keep = (inside >= cfg.min_inside).nonzero().flatten().tolist()
        dirs = proj / inside.clamp_min(1e-12)[:, None]
    else:
        inside, keep, dirs = torch.ones(len(cands)), list(range(len(cands))), raw
    # strongest first: components active on more inputs seed the clusters
    keep.sort(key=lambda i: -float((cands[i].ci > cfg.active_ci).sum()))
    clusters: list[list[tuple[int, float]]] = []  # members (candidate index, sign)
    centers = torch.empty(len(keep), dirs.shape[1])  # one row per cluster so far (no re-stacking per candidate)
    for i in keep:
        if clusters:
            cos = centers[: len(clusters)] @ dirs[i]
            best = int(cos.abs().argmax())
            if float(cos[best].abs()) >= cfg.merge_cos:
                clusters[best].append((i, float(torch.sign(cos[best]))))
                continue
        centers[len(clusters)] = dirs[i]
        clusters.append([(i, 1.0)])
    if not clusters:
        return empty
    directions, actives = [], []
    for members in clusters:
        weight = torch.tensor([1.0 + float((cands[i].ci > cfg.active_ci).sum()) for i, _ in members])
        d = sum(w * s * dirs[i] for w, (i, s) in zip(weight, members))
        d = d / d.norm()
        active = torch.stack([cands[i].ci > cfg.active_ci for i, _ in members]).any(0)
        if bool(active.any()) and float((resid[active] @ d).median()) < 0:  # orient: the circuits respond to +d
            d = -d
        directions.append(d)
        actives.append(active)
    D = torch.stack(directions)
    thresholds = torch.full((len(D),), float("-inf"))
    if cfg.gate:
        for s in range(0, len(D), _GATE_CHUNK):  # [n_inputs, chunk] at a time: one sort per column, no Python loop
            thresholds[s : s + _GATE_CHUNK] = gate_thresholds(
                resid @ D[s : s + _GATE_CHUNK].T, torch.stack(actives[s : s + _GATE_CHUNK], dim=1), cfg.gate_min_accuracy
            )
    provenance = [
        {
            "n_active_inputs": int(active.sum()),
            "threshold": float(tau),
            "members": [
                {
                    "module": cands[i].module,
                    "component": cands[i].component,
                    "role": cands[i].role,
                    "cos": float(s * (dirs[i] @ d)),
                    "inside": float(inside[i]),
                    "active_frac": float((cands[i].ci > cfg.active_ci).float().mean()),
                }
                for i, s in members
            ],
        }
        for members, d, active, tau in zip(clusters, D, actives, thresholds)
    ]
    inside_out = torch.tensor([float(sum(inside[i] for i, _ in members) / len(members)) for members in clusters])
    feats = Features(D, torch.zeros(resid.shape[0], len(D)), thresholds, inside_out, provenance)
    return apply_features(feats, resid)


def apply_features(feats: Features, resid: Float[Tensor, "n_inputs d_model"]) -> Features:
    """The same features (directions, gates) valued on other inputs: projection where it reaches the gate, else 0."""
    p = resid @ feats.directions.T
    values = torch.where(p >= feats.thresholds, p, torch.zeros_like(p))
    return Features(feats.directions, values, feats.thresholds, feats.inside, feats.provenance)


def gate_threshold(p: Float[Tensor, " n_inputs"], active: Tensor, min_accuracy: float) -> float:
    """`gate_thresholds` of one feature."""
    return float(gate_thresholds(p[:, None], active[:, None], min_accuracy)[0])


def gate_thresholds(
    p: Float[Tensor, "n_inputs k"], active: Bool[Tensor, "n_inputs k"], min_accuracy: float
) -> Float[Tensor, " k"]:
    """Per column, the projection above which the feature's circuits are active, or -inf when activity does not
    follow it.

    Picks the threshold that best separates inputs where a circuit is active from the rest by balanced accuracy.
    A look-up is active exactly where the projection is high (accuracy ~1): a sparse feature gated there. An
    attribute reader is active on every value of its attribute when its question is asked and on none otherwise,
    whatever the projection (accuracy ~0.5-0.75): a dense feature, its value the plain projection.
    """
    n = p.shape[0]
    n_on = active.sum(0).double()
    n_off = n - n_on
    order = torch.argsort(p, dim=0, descending=True)
    ps = p.gather(0, order)
    on_above = torch.cumsum(active.gather(0, order).double(), 0)  # inputs with p >= p[order[k]]
    off_above = torch.arange(1, n + 1, dtype=torch.float64)[:, None] - on_above
    accuracy = (on_above / n_on.clamp_min(1) + 1 - off_above / n_off.clamp_min(1)) / 2
    # cut only between distinct projections: inputs of one entity share p up to rounding, and a cut inside such a
    # tie gave the same animal's inputs different values (value 0 on a third of them: recall lost for nothing)
    tol = 1e-4 * ps.abs().amax(0).clamp_min(1e-12)
    cut = torch.cat([ps[:-1] - ps[1:] > tol, torch.ones(1, p.shape[1], dtype=torch.bool)])
    accuracy = torch.where(cut, accuracy, -1.0)
    best_acc, best = accuracy.max(0)
    top = ps.gather(0, best[None])[0]
    below = ps.gather(0, (best + 1).clamp_max(n - 1)[None])[0]
    # the middle of the gap below the last included input: the widest margin on both sides
    tau = torch.where(best + 1 < n, (top + below) / 2, top - tol)
    gated = (n_on > 0) & (n_off > 0) & (best_acc >= min_accuracy)
    return torch.where(gated, tau.float(), float("-inf"))
