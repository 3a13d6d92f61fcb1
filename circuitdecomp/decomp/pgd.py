"""Adversarial (PGD) masks: the worst reconstruction reachable by choosing the ablation sources r in [0, 1].

Stochastic masks only sample r; an adversary that picks r to hurt the output checks that components with
low CI really are ablatable. Evaluation only: the decomposition's parameters get no gradient.
"""

import torch
from torch import Tensor

from circuitdecomp.decomp.components import MaskInfo
from circuitdecomp.decomp.config import OutputLoss
from circuitdecomp.decomp.losses import output_distance
from circuitdecomp.decomp.model import ComponentModel


def pgd_recon_loss(
    cm: ComponentModel,
    batch: Tensor,
    steps: int,
    step_size: float,
    kind: OutputLoss,
    use_delta: bool,
    generator: torch.Generator | None = None,
) -> float:
    """Output distance under masks m = g + (1 - g) r with r pushed by signed gradient ascent, all modules masked."""
    with torch.no_grad():
        target_out = cm.run_target(batch)
        ci = {p: g.detach() for p, g in cm.causal_importance().lower.items()}
    sources = {p: torch.rand(g.shape, generator=generator).requires_grad_(True) for p, g in ci.items()}
    deltas = {p: torch.rand(g.shape[:-1], generator=generator).requires_grad_(True) for p, g in ci.items()} if use_delta else {}
    params = [*sources.values(), *deltas.values()]
    for step in range(steps + 1):
        masks = {p: MaskInfo(g + (1 - g) * sources[p], deltas.get(p)) for p, g in ci.items()}
        loss = output_distance(cm(batch, masks), target_out, kind)
        if step == steps:
            return loss.item()
        grads = torch.autograd.grad(loss, params)  # only w.r.t. the sources: parameters are untouched
        with torch.no_grad():
            for r, gr in zip(params, grads):
                r.add_(step_size * gr.sign()).clamp_(0.0, 1.0)
    raise AssertionError("unreachable")
