"""The features and evaluation stages of the animal world: features from circuits, scored against ground truth."""

import json
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuitdecomp.config import Config
from circuitdecomp.decomp.adapters import bias_of
from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.decomp.span import data_span
from circuitdecomp.evaluate.recovery import GroundTruth, RecoveryResult, Units, score_recovery, to_metrics
from circuitdecomp.evaluate.truth import ground_truth
from circuitdecomp.features.config import Projection
from circuitdecomp.features.controls import neuron_candidates, random_directions
from circuitdecomp.features.extract import Candidate, Features, apply_features, candidates, extract_features, matches
from circuitdecomp.pipeline.attributions import answer_attributions, mlp_inputs
from circuitdecomp.pipeline.plots import PROJECTION_WORDS, recovery_figure
from circuitdecomp.rundir import CONTROLS_FILE, FEATURES_FILE
from circuitdecomp.runio import Metrics, atomic_write, save_figure, save_tensors, update_metrics
from circuitdecomp.tracking import Logger
from circuitdecomp.world.questions import Examples
from circuitdecomp.world.world import World

log = logging.getLogger(__name__)
PROVENANCE_FILE = "features.json"
# metric prefix of the features of each projection; the configured one (features.projection) is `recovery`
PROJECTION_PREFIX = {Projection.none: "recovery_raw", Projection.data: "recovery_data", Projection.tokens: "recovery_tokens"}


def token_subspace(model: nn.Module, examples: Examples) -> Float[Tensor, "k d_model"]:
    """Span of the embedding rows of the tokens seen at the read-out position (from the model, not the world)."""
    tokens = examples.tokens[:, -1].unique()
    embed = next(m for m in model.modules() if isinstance(m, nn.Embedding) and m.weight.shape[0] > tokens.max())
    return data_span(embed.weight[tokens].detach())


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


def disjoint_from(examples: Examples, scored: Examples) -> Examples:
    """The rows of `examples` whose token sequence is not among `scored`'s: features are fitted on one split of the
    world's inputs and scored on another."""
    seen = {tuple(row) for row in scored.tokens.tolist()}
    keep = torch.tensor([tuple(row) not in seen for row in examples.tokens.tolist()], dtype=torch.bool)
    if not bool(keep.any()):
        raise ValueError(
            f"every one of the world's {len(examples)} inputs is among the {len(scored)} scored ones: "
            "nothing is left to fit the features on; lower evaluation.n_inputs"
        )
    return examples.subset(keep)


@torch.no_grad()
def readout_inputs(
    cm: ComponentModel, examples: Examples, with_ci: bool = True, chunk: int = 4096
) -> tuple[dict[str, Tensor], dict[str, Float[Tensor, "n d_in"]]]:
    """CI at the read-out position per module (unless not `with_ci`) and each decomposed module's input there, in
    chunks (CI MLPs are wide)."""
    cis: dict[str, list[Tensor]] = {}
    inputs: dict[str, list[Tensor]] = {}
    for s in range(0, len(examples), chunk):
        cm.run_target(examples.tokens[s : s + chunk])
        for p, g in cm.causal_importance().lower.items() if with_ci else ():
            cis.setdefault(p, []).append(g[:, -1] if g.dim() == 3 else g)
        for p in cm.paths:
            x = cm.state.inputs[(p, 0)]
            inputs.setdefault(p, []).append(x[:, -1] if x.dim() == 3 else x)
    return {p: torch.cat(v) for p, v in cis.items()}, {p: torch.cat(v).float() for p, v in inputs.items()}


def projection_basis(
    kind: Projection, model: nn.Module, fit: Examples, resid: Float[Tensor, "n d_model"]
) -> Float[Tensor, "k d_model"] | None:
    """Orthonormal rows of the span candidate directions are projected onto (None: no projection)."""
    match kind:
        case Projection.none:
            return None
        case Projection.data:
            return data_span(resid)
        case Projection.tokens:
            return token_subspace(model, fit)


def _reader(cm: ComponentModel, cfg: Config) -> str:
    readers = [p for p in cm.paths if matches(p, cfg.features.read_patterns)]
    if not readers:
        raise ValueError(
            f"no decomposed module matches features.read_patterns={list(cfg.features.read_patterns)}; "
            f"decomposed modules: {cm.paths}"
        )
    return readers[0]


def _spd_candidates(cm: ComponentModel, ci: dict[str, Tensor], d_model: int, cfg: Config) -> list[Candidate]:
    V = {p: cm.component(p).V.detach() for p in cm.paths}
    U = {p: cm.component(p).U.detach() for p in cm.paths}
    return candidates(V, U, ci, d_model, cfg.features)


def _neuron_candidates(cm: ComponentModel, inputs: dict[str, Tensor], d_model: int, cfg: Config) -> list[Candidate]:
    weights = {p: cm.component(p).target_weight() for p in cm.paths if cm.component(p).kind.value != "embedding"}
    biases = {p: bias_of(cm.component(p).base) for p in weights}
    return neuron_candidates(weights, biases, inputs, d_model, cfg.features)


def save_features(out_dir: Path, feats: Features) -> None:
    """`features.safetensors` (directions, values, thresholds, inside) and `features.json` (provenance)."""
    save_tensors(
        Path(out_dir) / FEATURES_FILE,
        {"directions": feats.directions, "values": feats.values, "thresholds": feats.thresholds, "inside": feats.inside},
    )
    text = json.dumps({"n_features": len(feats), "features": feats.provenance}, indent=1)
    atomic_write(Path(out_dir) / PROVENANCE_FILE, lambda p: p.write_text(text))


def _score(
    feats: Features, truth: GroundTruth, cfg: Config, prefix: str, simplicity: bool = False
) -> tuple[Metrics, RecoveryResult | None]:
    """`prefix/...` recovery metrics; circuit simplicity (greedy probes, the slow part) only where asked."""
    if len(feats) == 0:
        return {f"{prefix}/n_units": 0}, None
    result = score_recovery(Units(feats.directions, feats.values), truth, cfg.evaluation.recovery, simplicity)
    return to_metrics(result, prefix), result


def _controls(
    model: nn.Module,
    world: World,
    examples: Examples,
    neurons: list[Candidate],
    resid_fit: Tensor,
    resid: Tensor,
    basis: Tensor | None,
    n_features: int,
    truth: GroundTruth,
    cfg: Config,
    out_dir: Path,
) -> Metrics:
    """The neuron control (the target's units through the same extraction), the random control (as many random
    directions as features) and the attribution control (the answer gradient per yes/no question, `spd_start=
    attributions`' start, read directly: values = projections of the MLP's input), scored and saved in
    `controls.safetensors`."""
    n = apply_features(extract_features(neurons, resid_fit, basis, cfg.features), resid)
    rand = random_directions(n_features, resid.shape[-1], cfg.seed + 17)
    rand_values = resid @ rand.T  # ungated projections
    metrics = _score(n, truth, cfg, "controls/neurons/recovery")[0] | {"controls/neurons/n_features": len(n)}
    metrics |= _score(
        Features(rand, rand_values, torch.full((len(rand),), float("-inf")), torch.ones(len(rand))),
        truth,
        cfg,
        "controls/random/recovery",
    )[0]
    attr = answer_attributions(model, world)
    attr_values = mlp_inputs(model, examples.tokens) @ attr.T
    metrics |= _score(
        Features(attr, attr_values, torch.full((len(attr),), float("-inf")), torch.ones(len(attr))),
        truth,
        cfg,
        "controls/attributions/recovery",
    )[0]
    save_tensors(
        out_dir / CONTROLS_FILE,
        {
            "neurons/directions": n.directions,
            "neurons/values": n.values,
            "random/directions": rand,
            "random/values": rand_values,
            "attributions/directions": attr,
            "attributions/values": attr_values,
        },
    )
    log.info("controls: %d features from the target's own units, %d random directions", len(n), len(rand))
    return metrics


@torch.no_grad()
def features_stage(
    cfg: Config,
    world: World,
    model: nn.Module,
    cm: ComponentModel,
    examples: Examples,
    out_dir: Path,
    logger: Logger,
    controls: bool = True,
) -> tuple[Features, Metrics]:
    """Extract, save and score the features from circuits and the controls; metrics `recovery/...` (the configured
    projection), `recovery_<raw|data|tokens>/...` (each projection), `controls/<neurons|random|attributions>/recovery/...` and
    `features/...`. Features are fitted on inputs disjoint from the scored `examples`. `controls=False` skips the
    controls (a second decomposition of the same target has the same ones)."""
    fc = cfg.features
    fit = fit_sample(disjoint_from(world.examples, examples), fc.fit_max_inputs, cfg.seed + 13)
    reader = _reader(cm, cfg)
    ci, inputs = readout_inputs(cm, fit)
    resid_fit = inputs[reader]
    resid = readout_inputs(cm, examples, with_ci=False)[1][reader]
    d_model = resid.shape[-1]
    truth = ground_truth(world, examples)
    spd = _spd_candidates(cm, ci, d_model, cfg)
    neurons = _neuron_candidates(cm, inputs, d_model, cfg) if controls else []
    metrics: Metrics = {
        "features/n_fit_inputs": len(fit),
        "features/n_scored_inputs": len(examples),
        "features/n_candidates": len(spd),
    }
    if controls:
        metrics["controls/neurons/n_candidates"] = len(neurons)
    feats, result = Features(torch.zeros(0, d_model), torch.zeros(len(examples), 0), torch.zeros(0), torch.zeros(0)), None
    for kind in Projection:
        basis = projection_basis(kind, model, fit, resid_fit)
        metrics[f"features/projection_rank/{kind.value}"] = d_model if basis is None else basis.shape[0]
        f = apply_features(extract_features(spd, resid_fit, basis, fc), resid)
        m, r = _score(f, truth, cfg, PROJECTION_PREFIX[kind], simplicity=kind is fc.projection)
        metrics |= m | {f"{PROJECTION_PREFIX[kind]}/n_features": len(f)}
        if kind is fc.projection:
            feats, result = f, r
            metrics |= {k.replace(PROJECTION_PREFIX[kind], "recovery", 1): v for k, v in m.items()}
            if controls:
                metrics |= _controls(model, world, examples, neurons, resid_fit, resid, basis, len(f), truth, cfg, out_dir)
    save_features(out_dir, feats)
    metrics |= {
        "features/n_features": len(feats),
        "features/n_dense": int((feats.thresholds == float("-inf")).sum()) if len(feats) else 0,
    }
    log.info(
        "features: %d (projection %s), fitted on %d inputs, scored on %d others",
        len(feats),
        fc.projection.value,
        len(fit),
        len(examples),
    )
    if result is None:
        log.warning("no live component reads or writes the projection's span: nothing to score")
    else:
        units = Units(feats.directions, feats.values)
        fig = recovery_figure(
            result,
            units,
            truth,
            "How well the features from circuits match the planted features "
            f"(directions {PROJECTION_WORDS[fc.projection]}, scored on held-out inputs)",
        )
        save_figure(out_dir, "recovery", fig)
        logger.log_figure("recovery/figure", fig)
        plt.close(fig)
    update_metrics(out_dir, metrics)
    logger.log(metrics)
    return feats, metrics
