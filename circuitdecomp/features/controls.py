"""Controls scored beside the features from circuits, by the same extraction and the same metric code.

* **Neurons** (no decomposition): the target's own units as candidates. Read rows of every residual-reading matrix
  and write columns of every residual-writing one, with the unit's own activation standing in for causal
  importance (scaled to [0, 1] per unit). They go through the same projection, merging and gating as the
  decomposition's components (`extract_features`). If these score as well as the decomposition, the result
  measures how the target was built, not what the decomposition found.
* **Random**: as many random unit directions as there are features, valued by the plain projection (chance level).
"""

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdecomp.features.config import FeaturesConfig
from circuitdecomp.features.extract import Candidate, matches


def unit_importance(acts: Float[Tensor, "n_inputs n_units"], rectified: bool) -> Float[Tensor, "n_inputs n_units"]:
    """A unit's activation as a stand-in for causal importance: |a| (or max(a, 0) for a unit that feeds a ReLU),
    divided by its largest value over the inputs (a unit that never moves gets 0)."""
    a = acts.clamp_min(0) if rectified else acts.abs()
    return a / a.amax(dim=0, keepdim=True).clamp_min(1e-12)


def neuron_candidates(
    weights: dict[str, Float[Tensor, "d_out d_in"]],
    biases: dict[str, Tensor | None],
    inputs: dict[str, Float[Tensor, "n_inputs d_in"]],
    d_model: int,
    cfg: FeaturesConfig,
) -> list[Candidate]:
    """The target's units as candidates: for a residual reader (d_in = d_model) each row W[c] with importance from its
    output x . W[c] + b_c; for a residual writer (d_out = d_model) each column W[:, c] with importance from its input
    coordinate x_c (the unit's activation). Units whose importance never exceeds `cfg.live_ci` are left out, as dead
    components are."""
    out = []
    for path, W in weights.items():
        x = inputs[path].float()
        W = W.detach().float()
        roles = []
        if matches(path, cfg.read_patterns) and W.shape[1] == d_model:
            b = biases.get(path)
            acts = x @ W.T + (0.0 if b is None else b.detach().float())
            roles.append(("read", W, unit_importance(acts, matches(path, cfg.rectified_reads))))
        if matches(path, cfg.write_patterns) and W.shape[0] == d_model:
            roles.append(("write", W.T, unit_importance(x, rectified=False)))
        for role, rows, g in roles:
            live = (g.amax(dim=0) > cfg.live_ci).nonzero().flatten().tolist()
            out += [Candidate(path, c, role, rows[c], g[:, c]) for c in live if float(rows[c].norm()) > 0]
    return out


def random_directions(n: int, d_model: int, seed: int) -> Float[Tensor, "n d_model"]:
    """`n` random unit directions (Gaussian, normalised), from their own generator."""
    d = torch.randn(max(n, 1), d_model, generator=torch.Generator().manual_seed(seed))
    return d / d.norm(dim=1, keepdim=True)
