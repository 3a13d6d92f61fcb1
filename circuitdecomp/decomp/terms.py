"""The loss terms of an SPD step, one row each: name, coefficient (a `DecompositionConfig` field), function.

Adding a term is one row in `TERMS` plus its `<name>_coeff` field in `DecompositionConfig` (0 switches it off);
`spd_losses` (decomp/train.py) computes every row whose coefficient is above 0, and logs it as `decomp/train/<name>`.
The functions themselves are the pure ones in `losses.py`; a row only says what each reads of the step.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitdecomp.decomp import losses as L
from circuitdecomp.decomp.components import MaskInfo
from circuitdecomp.decomp.config import DecompositionConfig
from circuitdecomp.decomp.distributed import Shard
from circuitdecomp.decomp.model import CausalImportance, ComponentModel


@dataclass(frozen=True)
class Step:
    """What a loss term may read of one SPD step (on this rank's rows of the batch, with a `shard`)."""

    cm: ComponentModel
    batch: Any
    cfg: DecompositionConfig
    target_out: Tensor  # the target's output on `batch`
    ci: CausalImportance
    masks: list[dict[str, MaskInfo]]  # cfg.n_mask_samples stochastic masks drawn from the CI
    frac: float  # fraction of training done, in [0, 1]
    gen: torch.Generator
    shard: Shard | None

    def run(self, masks: dict[str, MaskInfo]) -> Tensor:
        """The decomposed model's output on the step's batch with `masks`."""
        return self.cm(self.batch, masks)


@dataclass(frozen=True)
class Term:
    name: str  # logged as decomp/train/<name>
    coeff: str  # the DecompositionConfig field holding its coefficient
    loss: Callable[[Step], Tensor]
    always: bool = False  # computed (and logged) even while its coefficient is 0
    ramp: Callable[[DecompositionConfig, float], float] = lambda cfg, frac: 1.0  # multiplies the coefficient


def _subset_recon(s: Step) -> Tensor:
    fn = L.subset_recon_loss if s.shard is None else s.shard.subset_recon_loss
    return fn(s.run, s.target_out, s.masks, s.cfg.output_loss, s.gen)


def _importance(s: Step) -> Tensor:
    c = s.cfg
    p = L.annealed_p(s.frac, c.pnorm, c.pnorm_final, c.pnorm_anneal_start, c.pnorm_anneal_end)
    return L.importance_minimality_loss(s.ci.upper, p, c.importance_eps, c.importance_beta)


def _importance_ramp(cfg: DecompositionConfig, frac: float) -> float:
    """Minimality ramps up linearly over the first `importance_warmup_frac` of training."""
    return min(1.0, frac / cfg.importance_warmup_frac) if cfg.importance_warmup_frac else 1.0


TERMS: tuple[Term, ...] = (
    Term("faithfulness", "faithfulness_coeff", lambda s: L.faithfulness_loss(s.cm.weight_deltas())),
    Term(
        "stochastic_recon",
        "stochastic_recon_coeff",
        lambda s: L.stochastic_recon_loss(s.run, s.target_out, s.masks, s.cfg.output_loss),
    ),
    Term(
        "layerwise_recon",
        "layerwise_recon_coeff",
        lambda s: L.layerwise_recon_loss(s.run, s.target_out, s.masks, s.cfg.output_loss),
    ),
    Term("subset_recon", "subset_recon_coeff", _subset_recon),
    Term(
        "ci_masked_recon",
        "ci_masked_recon_coeff",
        lambda s: L.output_distance(s.run(L.ci_masks(s.ci.lower, s.cfg.use_delta)), s.target_out, s.cfg.output_loss),
    ),
    Term("importance_minimality", "importance_coeff", _importance, always=True, ramp=_importance_ramp),
)


def coefficient(term: Term, cfg: DecompositionConfig, frac: float) -> float:
    """The term's weight in the total at training fraction `frac`."""
    return getattr(cfg, term.coeff) * term.ramp(cfg, frac)
