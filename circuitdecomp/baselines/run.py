"""The baselines stage: SAE sweep on a target run's read-out residuals, reference dictionaries, the thesis table."""

import logging
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from circuitdecomp.baselines.data import ReadoutData, readout_data
from circuitdecomp.baselines.sweep import SAEResult, clear_checkpoints, fve, practitioner_pick, run_sweep, sweep_specs, true_l0
from circuitdecomp.baselines.table import Entry, Row, ThesisTable, oracle_row, score_entry
from circuitdecomp.checkpoint import BOOKKEEPING, run_fingerprint
from circuitdecomp.config import Config
from circuitdecomp.evaluate.config import RecoveryConfig
from circuitdecomp.evaluate.dictionaries import half_size_dictionary, random_dictionary
from circuitdecomp.evaluate.recovery import Units
from circuitdecomp.frozen import check
from circuitdecomp.rundir import CONTROLS_FILE, FEATURES_FILE, RANDOM_START
from circuitdecomp.runio import (
    Metrics,
    load_run,
    load_tensors,
    require_keys,
    save_figure,
    save_tensors,
    to_plain,
    update_metrics,
    write_text,
)
from circuitdecomp.tracking import Logger
from circuitdecomp.world.world import World

log = logging.getLogger(__name__)
TABLE = "thesis_table"  # .md, .json (rows, to re-render with more rows), .png; report.md includes the .md
SAE_FILE = "baselines.safetensors"
FEATURES, HALF_SIZE, RANDOM = "features from circuits", "half-size dictionary", "random dictionary"
FEATURES_RANDOM_START = "features from circuits, SPD from a random start"
NEURONS = "no decomposition: the target's own units"
RANDOM_DIRECTIONS = "random directions, as many as the features"
ATTRIBUTIONS = "no decomposition: the answer gradient per yes/no question"


def saved_row(path: Path, prefix: str, name: str, data: ReadoutData, size_attribute: int, recovery: RecoveryConfig) -> Row | None:
    """A row for a dictionary an earlier stage saved (`<prefix>directions`, `<prefix>values` in `path`), None when
    the file is not there or holds no units."""
    if not path.exists():
        return None
    saved = load_tensors(path)
    if prefix == "attributions/" and f"{prefix}directions" not in saved:
        return None  # controls saved before the attribution control existed
    require_keys(saved, [f"{prefix}directions", f"{prefix}values"], path)
    n_inputs, n_units = saved[f"{prefix}values"].shape
    check(
        n_inputs == data.truth.n_inputs,
        f"{path} has values on {n_inputs} inputs, the baselines score on {data.truth.n_inputs}: run the features stage "
        "again with the same evaluation.n_inputs and seed",
    )
    if n_units == 0:
        log.warning("%s holds no %s: the thesis table has no row for them", path, name)
        return None
    units = Units(saved[f"{prefix}directions"], saved[f"{prefix}values"])
    return score_entry(name, Entry(units, note=f"{n_units} units from {path.name}"), data.truth, size_attribute, recovery)[0]


def decomposition_rows(run_dir: Path, data: ReadoutData, size_attribute: int, recovery: RecoveryConfig) -> list[Row]:
    """The rows of the features stage, when it has run: SPD features (the recipe, and from a random start) and the
    no-decomposition and random controls, each scored like the SAEs."""

    run_dir = Path(run_dir)
    sources = [
        (run_dir / FEATURES_FILE, "", FEATURES),
        (run_dir / RANDOM_START / FEATURES_FILE, "", FEATURES_RANDOM_START),
        (run_dir / CONTROLS_FILE, "neurons/", NEURONS),
        (run_dir / CONTROLS_FILE, "attributions/", ATTRIBUTIONS),
        (run_dir / CONTROLS_FILE, "random/", RANDOM_DIRECTIONS),
    ]
    rows = [saved_row(path, prefix, name, data, size_attribute, recovery) for path, prefix, name in sources]
    return [r for r in rows if r is not None]


def reference_rows(world: World, data: ReadoutData, recovery: RecoveryConfig, seed: int) -> list[Row]:
    """The half-size dictionary (directions exact, coefficients halved) and a random one of the planted size."""
    truth, acts = data.truth, data.lift(data.eval)
    half = half_size_dictionary(truth)
    n_units = world.cfg.n_animals + world.cfg.n_attributes
    rand = random_dictionary(acts, n_units, torch.Generator().manual_seed(seed + 7))
    entries = {
        HALF_SIZE: Entry(half, fve(half.activations(), acts), note="true directions of both families, every coefficient halved"),
        RANDOM: Entry(rand, None, note=f"{n_units} random unit directions, values = projections (no reconstruction)"),
    }
    return [score_entry(name, e, truth, world.cfg.size_attribute, recovery)[0] for name, e in entries.items()]


def run_baselines(cfg: Config, run_dir: Path, logger: Logger, out_dir: Path | None = None) -> Metrics:
    """Train and score the SAE sweep on the target of `run_dir`; writes table, figure, SAEs and metrics to `out_dir`
    (default run_dir).

    The table gets the features stage's rows on top (features from circuits, from a random start, the neuron and
    random controls) when `run_dir` holds them (values on the same held-out inputs).
    The sweep resumes: an interrupted run re-run with the same settings and
    `out_dir` loads the SAEs it finished and continues the one it was training (`run_sweep`).
    """
    from circuitdecomp.target.run import load_target_run  # imports TransformerLens: seconds
    from circuitdecomp.world.sampler import held_out_batch

    start = time.perf_counter()
    out_dir = Path(run_dir if out_dir is None else out_dir)
    b, recovery = cfg.baselines, cfg.evaluation.recovery
    world, model = load_target_run(Path(run_dir))
    # the inputs the decomposition stage evaluates on (same call, same seed), so the table's rows share inputs
    held = held_out_batch(world, cfg.evaluation.n_inputs, cfg.seed)
    data = readout_data(world, model, b, held, cfg.seed)
    l0s = true_l0(data.truth)
    specs = sweep_specs(b, world.cfg.n_attributes, world.cfg.n_animals, list(l0s.values()))
    log.info(
        "baselines: %d SAEs on %d training / %d held-out read-outs (%s space, d=%d); true L0 %s",
        len(specs),
        data.train.shape[0],
        data.eval.shape[0],
        b.space.value,
        data.basis.shape[0],
        l0s,
    )
    results = run_sweep(
        data,
        specs,
        b,
        world.cfg.size_attribute,
        recovery,
        cfg.seed,
        logger,
        out_dir,
        sweep_fingerprint(cfg, load_run(Path(run_dir)).config),
    )

    table, keys = baseline_table(results, reference_rows(world, data, recovery, cfg.seed), b.practitioner_max_l0)
    table = table.with_rows_first(decomposition_rows(Path(run_dir), data, world.cfg.size_attribute, recovery))
    metrics: Metrics = {k: v for r in results for k, v in r.metrics.items()}
    metrics |= {f"baselines/true_l0/{f}": v for f, v in l0s.items()}
    metrics |= table.metrics(keys)
    metrics |= {"baselines/n_saes": len(results), "baselines/seconds": time.perf_counter() - start}
    title = "Share of the planted features each dictionary recovers: features from circuits, SAEs, reference dictionaries"
    save_outputs(out_dir, table, results, title, logger)
    update_metrics(out_dir, metrics)
    clear_checkpoints(out_dir)  # every output is written: a re-run does the stage again, with any settings
    logger.log({k: float(v) for k, v in metrics.items()})
    return metrics


def sweep_fingerprint(cfg: Config, target_run: dict[str, Any]) -> dict[str, Any]:
    """What decides the sweep's saved SAEs: the seed, the baselines settings (less where the target run is read from,
    the table's pick and logging), the held-out inputs and their scoring, and the world and target of the target run
    (`target_run`: its config.yaml)."""
    baselines = {k: v for k, v in to_plain(cfg.baselines).items() if k not in ("run_dir", "practitioner_max_l0")}
    baselines["train"] = {k: v for k, v in baselines["train"].items() if k not in BOOKKEEPING}
    evaluation = {"n_inputs": cfg.evaluation.n_inputs, "recovery": cfg.evaluation.recovery}
    return run_fingerprint(
        cfg.seed, baselines=baselines, evaluation=evaluation, world=target_run["world"], target=target_run["target"]
    ) | {"target_seed": target_run["seed"]}


def baseline_table(results: list[SAEResult], references: list[Row], max_l0: float) -> tuple[ThesisTable, dict[str, str]]:
    """Rows: each kind's practitioner pick, the oracle over every SAE, the reference dictionaries; and their metric keys."""
    rows, keys = [], {}
    for kind in dict.fromkeys(r.spec.kind for r in results):
        pick = practitioner_pick([r.row for r in results if r.spec.kind is kind], max_l0)
        name = f"SAE {kind.value} (practitioner: {pick.name})"
        rows.append(Row(name, pick.values, f"best FVE at L0 <= {max_l0:g}; {pick.note}", pick.probe_cap))
        keys[name] = f"practitioner/{kind.value}"
    oracle = oracle_row([r.row for r in results], f"SAE oracle (best of {len(results)} per column)")
    rows.append(oracle)
    keys[oracle.name] = "oracle"
    for row in references:
        rows.append(row)
        keys[row.name] = "half_size" if row.name == HALF_SIZE else "random"
    return ThesisTable(tuple(rows)), keys


def save_outputs(out_dir: Path, table: ThesisTable, results: list[SAEResult], title: str, logger: Logger) -> None:
    """thesis_table.json / .md / .png and every SAE's weights."""
    table.save(out_dir / f"{TABLE}.json")
    write_text(out_dir / f"{TABLE}.md", table.markdown() + "\n")
    save_tensors(out_dir / SAE_FILE, {f"{r.spec.name}/{k}": v for r in results for k, v in r.weights.items()})
    fig = table.figure(title)
    save_figure(out_dir, TABLE, fig)
    logger.log_figure("baselines/table", fig)
    plt.close(fig)
