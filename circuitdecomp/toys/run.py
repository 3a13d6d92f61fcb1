"""Train (or load) a toy target, decompose it with SPD, score it against its known mechanisms."""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from circuitdecomp.config import Config
from circuitdecomp.decomp import engine
from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.decomp.pgd import pgd_recon_loss
from circuitdecomp.frozen import ConfigError
from circuitdecomp.rundir import TARGET_FILE
from circuitdecomp.runio import Metrics, load_module_state, save_figure, save_tensors, update_metrics
from circuitdecomp.toys import resid_mlp, tms
from circuitdecomp.toys.config import ResidMLPConfig, TMSConfig
from circuitdecomp.toys.data import sparse_features
from circuitdecomp.toys.evaluate import evaluate_toy, one_hot_ci
from circuitdecomp.toys.plots import ci_heatmap, close_figure
from circuitdecomp.tracking import Logger

log = logging.getLogger(__name__)


def ci_title(magnitude: float, when: str) -> str:
    """Title of the single-feature CI figure: what is shown, the input it is shown on, and when."""
    return f"Causal importance of each component on single-feature inputs\n(one feature at {magnitude:g}, the others 0; {when})"


@dataclass(frozen=True)
class Toy:
    model: nn.Module
    n_features: int
    feature_prob: float
    value_low: float
    metrics: Metrics
    embedding: torch.Tensor | None = None  # [n_features, d]: how features enter the stream decomposed matrices read


def build_toy(cfg: Config, out_dir: Path) -> Toy:
    """The trained toy target: loaded from the run dir when present, else trained, checked and saved."""
    t = cfg.target
    path = Path(out_dir) / TARGET_FILE
    match t:
        case TMSConfig():
            model = tms.TMS(t.n_features, t.n_hidden)
            low, metrics, embedding = 0.0, {}, None
            if not path.exists():
                trained, used_seed = tms.train_checked_tms(t, cfg.seed)
                save_tensors(path, trained.state_dict(), {"seed": str(used_seed)})
            load_module_state(model, path)
            ok = tms.features_reproduced(model)
            metrics["target/features_reproduced"] = int(ok.sum())
            if t.check_features and not bool(ok.all()):
                raise RuntimeError(
                    f"the TMS target in {path} reproduces only {int(ok.sum())}/{ok.numel()} features; "
                    "delete it to retrain, or raise target.max_attempts"
                )
        case ResidMLPConfig():
            model = resid_mlp.ResidMLP(t, cfg.seed)
            low, embedding = -1.0, model.W_E
            if not path.exists():
                save_tensors(path, resid_mlp.train_resid_mlp(t, cfg.seed).state_dict())
            load_module_state(model, path)
            metrics = resid_mlp.resid_mlp_quality(model, t, cfg.seed)
        case _:
            raise ConfigError(f"target.kind={t.kind.value} is not a toy; toys are tms and resid_mlp (experiment=tms_5-2, ...)")
    return Toy(model, t.n_features, t.feature_prob, low, metrics, embedding)


def decompose_toy(cfg: Config, out_dir: Path, logger: Logger) -> Metrics:
    """The whole toy experiment; writes target, decomposition, metrics.json and the CI figure to out_dir."""
    toy = build_toy(cfg, out_dir)
    update_metrics(out_dir, toy.metrics)
    seed = engine.resolve_seed(cfg.decomposition, cfg.seed)
    cm = engine.component_model(toy.model, cfg.decomposition, seed)
    B = cfg.decomposition.batch_size

    def sample(gen: torch.Generator) -> torch.Tensor:
        return sparse_features(B, toy.n_features, toy.feature_prob, gen, low=toy.value_low)

    eval_data = sparse_features(
        B, toy.n_features, toy.feature_prob, torch.Generator().manual_seed(cfg.seed + 7), low=toy.value_low
    )

    def eval_fn(model: ComponentModel, step: int) -> Metrics:
        fig = ci_heatmap(
            one_hot_ci(model, toy.n_features, cfg.evaluation.one_hot_magnitude),
            ci_title(cfg.evaluation.one_hot_magnitude, f"step {step}"),
        )
        logger.log_figure("decomp/ci_one_hot", fig, step=step)
        close_figure(fig)
        return evaluate_toy(model, toy.n_features, cfg.evaluation, eval_data, cfg.decomposition.ci_alive_threshold, toy.embedding)

    result = engine.fit(
        cm,
        sample,
        cfg.decomposition,
        seed,
        out_dir=out_dir,
        logger=logger,
        eval_fn=eval_fn,
        log_every=cfg.tracking.log_every,
        name=cfg.name,
    )
    metrics = eval_fn(cm, cfg.decomposition.steps)
    if result is not None:  # None: loaded, finished earlier (its final losses are in metrics.json already)
        metrics.update({f"decomp/final/{k}": v for k, v in result.final_losses.items()})
        metrics["decomp/ms_per_step"] = result.ms_per_step
    d = cfg.decomposition
    if d.pgd_steps > 0:
        metrics["decomp/pgd_recon"] = pgd_recon_loss(
            cm, eval_data, d.pgd_steps, d.pgd_step_size, d.output_loss, d.use_delta, torch.Generator().manual_seed(seed)
        )
    fig = ci_heatmap(
        one_hot_ci(cm, toy.n_features, cfg.evaluation.one_hot_magnitude),
        ci_title(cfg.evaluation.one_hot_magnitude, f"after {cfg.decomposition.steps} steps"),
    )
    save_figure(out_dir, "ci_one_hot", fig)
    close_figure(fig)
    update_metrics(out_dir, metrics)
    logger.log(metrics)
    return metrics
