"""The train_target stage: world -> target (trained or planted) -> checks -> files in the run dir."""

import logging
from pathlib import Path

import matplotlib.pyplot as plt
from omegaconf import OmegaConf
from torch import nn

from circuitdecomp.config import Config
from circuitdecomp.frozen import ConfigError
from circuitdecomp.rundir import TARGET_FILE
from circuitdecomp.runio import load_run, save_figure, update_metrics
from circuitdecomp.target.circuits import circuit_metrics
from circuitdecomp.target.config import TargetKind, TransformerTargetConfig
from circuitdecomp.target.evaluate import accuracy_by_type, attribute_linear_ceiling, evaluate_target, predict
from circuitdecomp.target.mechanisms import mechanism_metrics
from circuitdecomp.target.model import bake, load_model, save_model
from circuitdecomp.target.planted import planted_model
from circuitdecomp.target.plots import circuits_figure
from circuitdecomp.target.train import train_target
from circuitdecomp.tracking import Logger
from circuitdecomp.world.config import WorldConfig
from circuitdecomp.world.geometry import nearest_neighbour_cos
from circuitdecomp.world.world import World, make_world, save_world

log = logging.getLogger(__name__)


def world_metrics(world: World) -> dict[str, float]:
    """`world/*`: sizes and how crowded the animals are."""
    nn_cos = nearest_neighbour_cos(world.animal_directions)  # -2 when there is a single animal
    ex = world.examples
    return {
        "world/d_model": float(world.d_model),
        "world/n_examples": float(len(ex)),
        "world/n_train": float(ex.is_train.sum()),
        "world/d_vocab": float(world.vocab.d_vocab),
        "world/nn_cos_mean": nn_cos.mean().item(),
        "world/nn_cos_max": nn_cos.max().item(),
        "world/attribute_linear_ceiling": attribute_linear_ceiling(world),
    }


def target_config(cfg: Config) -> TransformerTargetConfig:
    """The target config, refusing toy targets with the fix in the message."""
    if not isinstance(cfg.target, TransformerTargetConfig):
        raise ConfigError(
            f"target={cfg.target.kind.value} is a toy; train_target.py builds the animal-world transformer: "
            "pass target=trained, target=templated or target=planted (and ~experiment if an experiment sets a "
            "toy target)"
        )
    return cfg.target


def build_target(cfg: Config, out_dir: Path, logger: Logger) -> dict[str, float]:
    """Generate and save the world, then train or plant the target, check it, and save it with its metrics."""
    t = target_config(cfg)
    out_dir = Path(out_dir)
    world = make_world(cfg.world, cfg.seed)
    save_world(world, out_dir)
    metrics = update_metrics(out_dir, world_metrics(world))
    meta = {"kind": t.kind.value, "seed": str(cfg.seed)}
    held = world.examples.subset(~world.examples.is_train)

    def checkpoint(model: nn.Module) -> dict[str, float]:
        save_model(model, out_dir, meta)  # a usable target.safetensors exists from the first evaluation on
        return accuracy_by_type(predict(model, held), held, "target/accuracy")

    match t.kind:
        case TargetKind.planted:
            model, seconds = planted_model(world, t, cfg.seed), 0.0
        case TargetKind.trained | TargetKind.templated:
            result = train_target(world, t, cfg.seed, logger, cfg.tracking.log_every, evaluate=checkpoint, out_dir=out_dir)
            model, seconds = bake(result.model), result.seconds
            log.info("trained %d steps in %.1f s", t.train_steps, seconds)
    save_model(model, out_dir, meta)
    logger.log_artifact(out_dir / TARGET_FILE, f"target-{cfg.name}", "model")
    metrics = {"target/train_seconds": seconds} | evaluate_target(model, world.examples)
    metrics |= mechanism_metrics(model, world, seed=cfg.seed)
    metrics |= circuit_metrics(model, world, t.lookup_active_fraction)
    update_metrics(out_dir, metrics)
    logger.log(metrics)
    fig = circuits_figure(
        model, world, t.lookup_active_fraction, f"What the {t.kind.value} target's MLP units do: look-up units and their reads"
    )
    save_figure(out_dir, "target_circuits", fig)
    logger.log_figure("target/circuits", fig)
    plt.close(fig)
    return metrics


def legacy_target(raw: dict) -> dict:
    """A target config as saved by a run: runs made before the ground-truth rule (2026-12-07) called the templated
    recipe `trained`; such a config (templates, question groups or a rescaled context under kind trained) loads as
    `templated`, which is what it is, instead of being refused. Runs made before 2026-12-07 (session 11) saved
    `lookup_gate_l1` / `question_gate_l1` = 0.03 beside no template units / no question groups, where those terms were
    0; they load as 0, the only value now accepted there."""
    raw = dict(raw)
    if raw.get("kind") == "trained" and any(raw.get(k) for k in ("animal_templates", "units_per_question", "context_init_norm")):
        log.warning("this run's target predates the ground-truth rule: its 'trained' recipe is loaded as target=templated")
        raw["kind"] = "templated"
    if "lookup_gate_l1" in raw and not raw.get("animal_templates"):
        raw["lookup_gate_l1"] = 0.0  # no template units: the term was 0
    if "question_gate_l1" in raw and not raw.get("units_per_question"):
        raw["question_gate_l1"] = 0.0  # no question groups: the term was 0
    return raw


def load_target_run(run_dir: Path) -> tuple[World, nn.Module]:
    """The world and the target of a finished train_target run (regenerated from its config, weights from the file)."""
    run = load_run(run_dir)
    world_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(WorldConfig), run.config["world"]))
    saved = legacy_target(run.config["target"])
    target_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TransformerTargetConfig), saved))
    seed = int(run.config["seed"])
    world = make_world(world_cfg, seed)
    return world, load_model(world, target_cfg, seed, run_dir)
