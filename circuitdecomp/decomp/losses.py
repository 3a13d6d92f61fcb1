"""SPD losses, one pure function each. Recon losses take `run(masks) -> output` instead of a model."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from circuitdecomp.decomp.components import MaskInfo
from circuitdecomp.decomp.config import MaskSampling, OutputLoss

Run = Callable[[dict[str, MaskInfo]], Tensor]


def output_distance(pred: Tensor, target: Tensor, kind: OutputLoss) -> Float[Tensor, ""]:
    """MSE averaged over every element, or KL(target || pred) over the last dim averaged over positions."""
    if pred.shape != target.shape:
        raise ValueError(f"output shapes differ: masked {tuple(pred.shape)} vs target {tuple(target.shape)}")
    match kind:
        case OutputLoss.mse:
            return (pred - target).pow(2).mean()
        case OutputLoss.kl:
            logq = F.log_softmax(pred, dim=-1)
            logp = F.log_softmax(target, dim=-1)
            return (logp.exp() * (logp - logq)).sum(-1).mean()


def faithfulness_loss(deltas: dict[str, Float[Tensor, "d_out d_in"]]) -> Float[Tensor, ""]:
    """Squared error between target weights and summed components, averaged over all parameters."""
    total = sum(d.pow(2).sum() for d in deltas.values())
    return total / sum(d.numel() for d in deltas.values())


def importance_minimality_loss(
    ci_upper: dict[str, Float[Tensor, "*batch C"]], p: float, eps: float, beta: float = 0.0
) -> Float[Tensor, ""]:
    """sum over modules and components of mean_c (1 + beta log2(1 + sum_c)), mean_c / sum_c of (g + eps)^p over positions.

    beta > 0 makes a component's cost grow with how often it is used, so one component serving two features
    costs more than two components serving one each.
    """
    total = torch.zeros(())
    for g in ci_upper.values():
        per_position = (g + eps).pow(p).flatten(0, -2)
        mean = per_position.mean(0)
        if beta:
            mean = mean * (1 + beta * torch.log2(1 + per_position.sum(0)))
        total = total + mean.sum()
    return total


def annealed_p(frac: float, p0: float, p1: float | None, start: float, end: float) -> float:
    """Linearly anneal the minimality p-norm from p0 to p1 between fractions `start` and `end` of training."""
    if p1 is None or frac <= start:
        return p0
    if frac >= end:
        return p1
    return p0 + (p1 - p0) * (frac - start) / (end - start)


def sample_masks(
    ci_lower: dict[str, Float[Tensor, "*batch C"]],
    sampling: MaskSampling,
    use_delta: bool,
    generator: torch.Generator | None = None,
) -> dict[str, MaskInfo]:
    """m = g + (1 - g) r with r ~ U(0,1) (or {0,1}); the delta component gets its own r per position."""
    masks = {}
    for path, g in ci_lower.items():
        match sampling:
            case MaskSampling.continuous:
                r = torch.rand(g.shape, generator=generator, dtype=g.dtype, device=g.device)
            case MaskSampling.binomial:
                r = torch.randint(0, 2, g.shape, generator=generator, device=g.device).to(g.dtype)
        delta = torch.rand(g.shape[:-1], generator=generator, dtype=g.dtype, device=g.device) if use_delta else None
        masks[path] = MaskInfo(mask=g + (1 - g) * r, delta_mask=delta)
    return masks


def stochastic_recon_loss(run: Run, target_out: Tensor, masks: list[dict[str, MaskInfo]], kind: OutputLoss) -> Float[Tensor, ""]:
    """Every module masked at once; averaged over mask samples."""
    return sum(output_distance(run(m), target_out, kind) for m in masks) / len(masks)


def layerwise_recon_loss(run: Run, target_out: Tensor, masks: list[dict[str, MaskInfo]], kind: OutputLoss) -> Float[Tensor, ""]:
    """One module masked at a time (the others exact); averaged over modules and mask samples."""
    losses = [output_distance(run({path: info}), target_out, kind) for m in masks for path, info in m.items()]
    return sum(losses) / len(losses)


def ci_masks(ci_lower: dict[str, Float[Tensor, "*batch C"]], use_delta: bool) -> dict[str, MaskInfo]:
    """Masks equal to the CI (no noise); the delta component, when used, fully on."""

    def delta(g: Tensor) -> Tensor | None:
        return torch.ones(g.shape[:-1], dtype=g.dtype, device=g.device) if use_delta else None

    return {path: MaskInfo(mask=g, delta_mask=delta(g)) for path, g in ci_lower.items()}


def rounded_ci_masks_ste(ci_lower: dict[str, Float[Tensor, "*batch C"]], use_delta: bool) -> dict[str, MaskInfo]:
    """Masks = CI rounded at 0.5 in the forward pass (what the faithfulness check runs), with the CI's own gradient in
    the backward pass (straight-through): a component the rounded model misses is pushed above 0.5, one it does not
    need is left to the minimality term."""
    rounded = {path: (g > 0.5).to(g.dtype) + (g - g.detach()) for path, g in ci_lower.items()}  # forward exactly 0/1
    return ci_masks(rounded, use_delta)


def route_subsets(masks: dict[str, MaskInfo], generator: torch.Generator | None = None) -> dict[str, MaskInfo]:
    """Each position masks a uniformly random non-empty subset of modules; the rest run exactly.

    Replaces full + layerwise reconstruction with one pass that sees every subset size.
    """
    paths = list(masks)
    lead = next(iter(masks.values())).mask.shape[:-1]
    device = next(iter(masks.values())).mask.device
    n = len(paths)
    k = torch.randint(1, n + 1, lead, generator=generator, device=device)  # subset size per position
    order = torch.rand((*lead, n), generator=generator, device=device).argsort(-1)  # random ranks
    chosen = order < k.unsqueeze(-1)
    return {p: MaskInfo(info.mask, info.delta_mask, route=chosen[..., i]) for i, (p, info) in enumerate(masks.items())}


def subset_recon_loss(
    run: Run, target_out: Tensor, masks: list[dict[str, MaskInfo]], kind: OutputLoss, generator: torch.Generator | None = None
) -> Float[Tensor, ""]:
    """Routed-subset reconstruction: random module subsets masked per position."""
    return sum(output_distance(run(route_subsets(m, generator)), target_out, kind) for m in masks) / len(masks)
