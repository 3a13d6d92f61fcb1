"""The main job: world -> target -> decomposition -> features -> evaluation -> baselines -> report, in one run dir.

Every stage reads what earlier stages left in the run dir, so a re-run of the same command resumes: a finished
target is loaded, the decomposition continues from its latest checkpoint (or is loaded when finished), and
`stages=[...]` re-runs only some stages on an existing run dir.
"""

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from circuitdecomp.config import Config, SpdStart, Stage
from circuitdecomp.decomp.config import InitKind
from circuitdecomp.rundir import DECOMPOSITION_FILE, RANDOM_START, TARGET_FILE
from circuitdecomp.runio import Metrics, load_metrics, update_metrics
from circuitdecomp.tracking import Logger, PrefixedLogger
from circuitdecomp.world.questions import Examples
from circuitdecomp.world.sampler import held_out_batch
from circuitdecomp.world.world import World

log = logging.getLogger(__name__)


def _target_done(run_dir: Path) -> bool:
    """The target stage finished here: its weights and its checked accuracy (a copied-in target file alone is redone)."""
    return (
        (run_dir / TARGET_FILE).exists()
        and (run_dir / "metrics.json").exists()
        and "target/accuracy/min" in load_metrics(run_dir)
    )


def _clock(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


@contextmanager
def _timed(stage: Stage, run_dir: Path, record: bool = True) -> Iterator[None]:
    """Wall time of one stage: logged and, with `record`, kept as `time/<stage>_s` in metrics.json. A stage resumed
    from a checkpoint records the invocation that finished it; a stage only loaded (finished earlier) keeps its time."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    if record:
        update_metrics(run_dir, {f"time/{stage.value}_s": seconds})
    log.info("stage %s: done in %s", stage.value, _clock(seconds))


def random_start(cfg: Config, world: World, model: nn.Module, held: Examples, run_dir: Path, logger: Logger) -> None:
    """The decomposition and features again from a random start (`decomposition.init=random`, all else the same),
    in `<run_dir>/spd_random_start/`; its metrics come back into the run's as `spd_random_start/...`. A recipe that
    starts at the target's units can only be judged beside this: it shows what SPD finds by itself."""
    from circuitdecomp.pipeline.decompose import decompose_target
    from circuitdecomp.pipeline.features import features_stage

    if cfg.decomposition.init is InitKind.random:
        log.info("stage random_start: decomposition.init is already random; the run's own scores are that control")
        return
    sub = run_dir / RANDOM_START
    sub.mkdir(exist_ok=True)
    random_init = dataclasses.replace(cfg.decomposition, init=InitKind.random)
    rcfg = dataclasses.replace(cfg, decomposition=random_init, spd_start=SpdStart.recipe)
    sub_logger = PrefixedLogger(logger, RANDOM_START)
    log.info("stage random_start: SPD from a random start in %s", sub)
    with _timed(Stage.random_start, run_dir, record=not (sub / DECOMPOSITION_FILE).exists()):  # a loaded one keeps its time
        cm, _ = decompose_target(rcfg, world, model, sub, sub_logger)
        features_stage(rcfg, world, model, cm, held, sub, sub_logger, controls=False)  # same target: same controls
    update_metrics(run_dir, {f"{RANDOM_START}/{k}": v for k, v in load_metrics(sub).items()})


def run_pipeline(cfg: Config, run_dir: Path, logger: Logger) -> Metrics:
    """Run the stages in `cfg.stages` (all by default) in order; returns the run's metrics."""
    from circuitdecomp.target.run import build_target, load_target_run, target_config  # TransformerLens: seconds

    run_dir = Path(run_dir)
    stages = set(cfg.stages)
    target_config(cfg)  # a toy target here is a config mistake: fail before any work
    if Stage.target in stages and not _target_done(run_dir):
        log.info("stage target: world %s, target %s", cfg.world.name, cfg.target.kind.value)
        with _timed(Stage.target, run_dir):
            build_target(cfg, run_dir, logger)
    elif Stage.target in stages:
        log.info("stage target: found in %s, reusing it", run_dir)
    needs_model = stages & {Stage.decompose, Stage.features, Stage.random_start}
    if needs_model:
        if not _target_done(run_dir):
            raise FileNotFoundError(
                f"{run_dir} has no finished target (target.safetensors + target metrics): "
                "run the target stage first (stages=[target,...])"
            )
        from circuitdecomp.pipeline.decompose import decompose_target
        from circuitdecomp.pipeline.features import features_stage

        world, model = load_target_run(run_dir)
        held = held_out_batch(world, cfg.evaluation.n_inputs, cfg.seed)
        if stages & {Stage.decompose, Stage.features}:
            log.info(
                "stage decompose: %s",
                ", ".join(f"{m.pattern} (C={m.C or f'{m.C_factor}x width'})" for m in cfg.decomposition.modules),
            )
            trains = not (run_dir / DECOMPOSITION_FILE).exists()
            with _timed(Stage.decompose, run_dir, record=trains):
                cm, _ = decompose_target(cfg, world, model, run_dir, logger)
        if Stage.features in stages:
            log.info("stage features: %d inputs", len(held))
            with _timed(Stage.features, run_dir):
                features_stage(cfg, world, model, cm, held, run_dir, logger)
        if Stage.random_start in stages:
            random_start(cfg, world, model, held, run_dir, logger)
    if Stage.baselines in stages:
        from circuitdecomp.baselines.run import run_baselines

        log.info("stage baselines")
        with _timed(Stage.baselines, run_dir):
            run_baselines(cfg, run_dir, logger)
    if Stage.report in stages:
        from circuitdecomp.pipeline.report import write_report

        path = write_report(run_dir, f"{cfg.name}: world {cfg.world.name}, {cfg.target.kind.value} target, seed {cfg.seed}")
        logger.log_artifact(path, f"report-{cfg.name}", "report")
        log.info("report: %s", path)
    return load_metrics(run_dir)
