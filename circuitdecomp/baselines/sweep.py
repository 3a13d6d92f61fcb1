"""The SAE sweep of one world: widths around the family sizes, sparsities around each family's true L0."""

import logging
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdecomp.baselines.config import BaselinesConfig, SAEKind, SAESpec
from circuitdecomp.baselines.data import ReadoutData, activation_batches
from circuitdecomp.baselines.table import Entry, Row, score_entry
from circuitdecomp.baselines.train import encode, train_sae
from circuitdecomp.evaluate.config import RecoveryConfig
from circuitdecomp.evaluate.recovery import GroundTruth, Units
from circuitdecomp.runio import Metrics
from circuitdecomp.tracking import Logger

log = logging.getLogger(__name__)


def true_l0(truth: GroundTruth) -> dict[str, float]:
    """Mean number of non-zero true coefficients per input, per family (animals ~1, attributes ~n_attributes)."""
    return {f.name: (f.coefficients != 0).float().sum(dim=1).mean().item() for f in truth.families}


def sweep_specs(cfg: BaselinesConfig, n_attributes: int, n_animals: int, l0s: list[float]) -> list[SAESpec]:
    """Every kind x width x sparsity: k = factor x true L0 of each family (clipped to [1, width]); relu: the L1 grid."""
    specs = []
    for width in sorted({w.resolve(n_attributes, n_animals) for w in cfg.widths}):
        ks = sorted({min(width, max(1, round(f * l0))) for f in cfg.l0_factors for l0 in l0s})
        sizes = {p.resolve(n_attributes, n_animals) for p in cfg.matryoshka_prefixes}
        prefixes = tuple(sorted(p for p in sizes if p < width))
        for kind in cfg.kinds:
            match kind:
                case SAEKind.relu:
                    specs += [SAESpec(kind, width, l1_coeff=c) for c in cfg.l1_coeffs]
                case SAEKind.topk | SAEKind.batchtopk:
                    specs += [SAESpec(kind, width, k=k) for k in ks]
                case SAEKind.matryoshka:
                    if prefixes:  # with no prefix below the width it is a BatchTopK SAE, already in the sweep
                        specs += [SAESpec(kind, width, k=k, prefixes=prefixes) for k in ks]
    return specs


def fve(recon: Float[Tensor, "n d"], x: Float[Tensor, "n d"]) -> float:
    """Fraction of the variance of x (about its mean) that the reconstruction explains."""
    return 1 - ((recon - x).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)).item()


@dataclass(frozen=True)
class SAEResult:
    spec: SAESpec
    row: Row
    metrics: Metrics  # baselines/<spec.name>/...
    weights: dict[str, Tensor]  # W_enc, b_enc, W_dec, b_dec in the residual basis, and BatchTopK's threshold


def run_sweep(data: ReadoutData, specs: list[SAESpec], cfg: BaselinesConfig, size_attribute: int, recovery: RecoveryConfig,
              seed: int, logger: Logger) -> list[SAEResult]:
    """Train and score every SAE on the same data; each result carries its table row and namespaced metrics."""
    results = []
    for i, spec in enumerate(specs):
        tag = f"baselines/{spec.name}"
        batches = activation_batches(data.train, cfg.train.batch_size, seed + 1000 * i)
        trained = train_sae(batches, spec, cfg.train, seed + 1000 * i, logger, tag)
        sae = trained.sae
        latents = encode(sae, data.eval)
        with torch.no_grad():
            recon_fve = fve(sae.decode(latents), data.eval)
            W_dec = data.lift(sae.W_dec)
        l0 = (latents > 0).float().sum(dim=1).mean().item()
        dead_frac = trained.dead.float().mean().item()
        units = Units(W_dec, latents)  # decoder rows have unit norm, so a latent's value is its direction's coefficient
        entry = Entry(units, recon_fve, l0, f"{spec.name}, {dead_frac:.0%} dead latents")
        row, recovery_metrics = score_entry(spec.name, entry, data.truth, size_attribute, recovery)
        metrics = {f"{tag}/{k}": v for k, v in recovery_metrics.items()}
        metrics |= {f"{tag}/fve": recon_fve, f"{tag}/l0": l0, f"{tag}/dead_frac": dead_frac, f"{tag}/train_seconds": trained.seconds}
        log.info("%d/%d %s: FVE %.3f, L0 %.2f, coef recall animals %.2f attributes %.2f (%.1f s)", i + 1, len(specs), spec.name,
                 recon_fve, l0, row.values["animals/coef_recall"], row.values["attributes/coef_recall"], trained.seconds)
        # in the residual basis: latents = act((x - b_dec) @ W_enc + b_enc) on the full residual, x̂ = latents @ W_dec + b_dec
        weights = {"W_enc": data.basis.T @ sae.W_enc.detach(), "b_enc": sae.b_enc.detach(), "W_dec": W_dec,
                   "b_dec": data.lift(sae.b_dec.detach()[None])[0], "threshold": sae.threshold.detach()}
        results.append(SAEResult(spec, row, metrics, weights))
    return results


def practitioner_pick(rows: list[Row], max_l0: float) -> Row:
    """What a practitioner without ground truth picks: best reconstruction among SAEs with L0 <= max_l0 (else the sparsest)."""
    sparse = [r for r in rows if r.values["l0"] <= max_l0]
    if not sparse:
        return min(rows, key=lambda r: r.values["l0"])
    return max(sparse, key=lambda r: r.values["fve"])
