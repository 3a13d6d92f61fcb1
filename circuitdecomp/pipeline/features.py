"""The features and evaluation stages of the animal world: features from circuits, scored against ground truth."""

import json
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuitdecomp.config import Config
from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.evaluate.recovery import GroundTruth, RecoveryResult, Units, score_recovery, to_metrics
from circuitdecomp.features.extract import Features, apply_features, candidates, extract_features, matches, span_basis
from circuitdecomp.runio import Metrics, atomic_write, save_figure, save_tensors, update_metrics
from circuitdecomp.tracking import Logger
from circuitdecomp.world.questions import Examples
from circuitdecomp.world.sampler import ground_truth
from circuitdecomp.world.world import World

log = logging.getLogger(__name__)
FEATURES_FILE = "features.safetensors"
PROVENANCE_FILE = "features.json"


def token_subspace(model: nn.Module, examples: Examples) -> Float[Tensor, "k d_model"]:
    """Span of the embedding rows of the tokens seen at the read-out position (from the model, not the world)."""
    tokens = examples.tokens[:, -1].unique()
    embed = next(m for m in model.modules() if isinstance(m, nn.Embedding) and m.weight.shape[0] > tokens.max())
    return span_basis(embed.weight[tokens].detach())


def fit_sample(examples: Examples, n: int, seed: int) -> Examples:
    """Every example when there are at most `n`; else `n` of them holding every (question type, entity) pair."""
    if len(examples) <= n:
        return examples
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
    pair = examples.qtype[order] * (int(examples.entity.max()) + 1) + examples.entity[order]
    _, group = torch.unique(pair, return_inverse=True)
    firsts = torch.full((int(group.max()) + 1,), len(order)).scatter_reduce(0, group, torch.arange(len(order)), "amin")
    first = torch.zeros(len(order), dtype=torch.bool)
    first[firsts] = True  # the first input of each (question type, entity) pair in the random order
    rest = (~first).nonzero().flatten()[: max(0, n - int(first.sum()))]
    return examples.subset(order[torch.cat([first.nonzero().flatten(), rest])])


@torch.no_grad()
def _ci_and_resid(cm: ComponentModel, examples: Examples, reader: str, with_ci: bool = True,
                  chunk: int = 4096) -> tuple[dict[str, Tensor], Float[Tensor, "n d_model"]]:
    """CI at the read-out position per module (unless not `with_ci`), and the residual `reader` reads there, in
    chunks (CI MLPs are wide)."""
    cis: dict[str, list[Tensor]] = {}
    resids = []
    for s in range(0, len(examples), chunk):
        cm.run_target(examples.tokens[s:s + chunk])
        for p, g in (cm.causal_importance().lower.items() if with_ci else ()):
            cis.setdefault(p, []).append(g[:, -1] if g.dim() == 3 else g)
        x = cm.state.inputs[(reader, 0)]
        resids.append(x[:, -1] if x.dim() == 3 else x)
    return {p: torch.cat(v) for p, v in cis.items()}, torch.cat(resids)


@torch.no_grad()
def circuit_features(cm: ComponentModel, model: nn.Module, examples: Examples, cfg: Config,
                     fit: Examples | None = None) -> Features:
    """Turn the decomposition's live components into features (features/extract.py), valued on `examples`.

    Live components, gates and orientation are fitted on `fit` (default: `examples`); a look-up's gate needs
    inputs of its animal's facts, which a held-out batch of a large world may lack.
    """
    fc = cfg.features
    readers = [p for p in cm.paths if matches(p, fc.read_patterns)]
    if not readers:
        raise ValueError(f"no decomposed module matches features.read_patterns={list(fc.read_patterns)}; "
                         f"decomposed modules: {cm.paths}")
    fit = examples if fit is None else fit
    ci, resid = _ci_and_resid(cm, fit, readers[0])
    V = {p: cm.component(p).V.detach() for p in cm.paths}
    U = {p: cm.component(p).U.detach() for p in cm.paths}
    cands = candidates(V, U, ci, resid.shape[-1], fc)
    subspace = token_subspace(model, fit) if fc.token_subspace else None
    feats = extract_features(cands, resid.float(), subspace, fc)
    log.info("%d candidate directions from %d modules on %d inputs -> %d features", len(cands), len(cm.paths),
             len(fit), len(feats))
    if fit is not examples and len(feats):
        feats = apply_features(feats, _ci_and_resid(cm, examples, readers[0], with_ci=False)[1].float())
    return feats


def save_features(out_dir: Path, feats: Features) -> None:
    """`features.safetensors` (directions, values, thresholds, inside) and `features.json` (provenance)."""
    save_tensors(Path(out_dir) / FEATURES_FILE, {"directions": feats.directions, "values": feats.values,
                                                  "thresholds": feats.thresholds, "inside": feats.inside})
    text = json.dumps({"n_features": len(feats), "features": feats.provenance}, indent=1)
    atomic_write(Path(out_dir) / PROVENANCE_FILE, lambda p: p.write_text(text))


def recovery_figure(result: RecoveryResult, units: Units, truth: GroundTruth, title: str) -> plt.Figure:
    """Per family: histogram of each true feature's best |cos|, and true vs recovered coefficient for a few features."""
    fams = result.families
    fig, axes = plt.subplots(2, len(fams), figsize=(5 * len(fams), 7), squeeze=False)
    for k, (fam_scores, fam) in enumerate(zip(fams, truth.families)):
        d = fam_scores.full.directions
        ax = axes[0, k]
        ax.hist(d.best_cos.abs().numpy(), bins=40, range=(0, 1), color="tab:blue")
        ax.axvline(0.9, color="k", ls="--", lw=0.8)
        ax.set_title(f"{fam.name}: best |cos| ({100 * d.frac_cos90:.0f}% >= 0.9)", fontsize=9)
        ax.set_xlabel("best |cos| with a recovered feature")
        ax = axes[1, k]
        scored = fam.coefficients.std(0) > 0
        idx = scored.nonzero().flatten()[:6]
        for i in idx.tolist():
            u = int(d.best_unit[i])
            sign = float(torch.sign(d.best_cos[i]))
            ax.scatter(fam.coefficients[:, i].numpy(), sign * units.values[:, u].numpy(), s=4, alpha=0.5)
        lo = float(fam.coefficients[:, idx].min()) if idx.numel() else 0.0
        hi = float(fam.coefficients[:, idx].max()) if idx.numel() else 1.0
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        c = fam_scores.full.coefficients
        ax.set_title(f"{fam.name}: true vs recovered coefficient (recall {c.recall:.2f}, 6 features)", fontsize=9)
        ax.set_xlabel("true coefficient")
        ax.set_ylabel("recovered value")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def features_stage(cfg: Config, world: World, model: nn.Module, cm: ComponentModel, examples: Examples,
                   out_dir: Path, logger: Logger) -> tuple[Features, Metrics]:
    """Extract, save and score the features from circuits; metrics `recovery/...` and `features/...`."""
    fit = fit_sample(world.examples, cfg.features.fit_max_inputs, cfg.seed + 13)
    feats = circuit_features(cm, model, examples, cfg, fit=fit)
    save_features(out_dir, feats)
    metrics: Metrics = {"features/n_features": len(feats),
                        "features/n_dense": int((feats.thresholds == float("-inf")).sum()) if len(feats) else 0}
    if len(feats) == 0:
        log.warning("no live component reads or writes the token subspace: nothing to score")
        update_metrics(out_dir, metrics)
        return feats, metrics
    truth = ground_truth(world, examples)
    units = Units(feats.directions, feats.values)
    result = score_recovery(units, truth, cfg.evaluation.recovery)
    metrics |= to_metrics(result, "recovery")
    fig = recovery_figure(result, units, truth, f"{cfg.name}: features from circuits vs ground truth")
    save_figure(out_dir, "recovery", fig)
    logger.log_figure("recovery/figure", fig)
    plt.close(fig)
    update_metrics(out_dir, metrics)
    logger.log(metrics)
    return feats, metrics
