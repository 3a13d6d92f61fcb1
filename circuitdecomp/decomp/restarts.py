"""Restarts: train several initialisations for a while, keep the one with the lowest SPD loss, continue it.

SPD's loss landscape has local minima in which one feature is served by a combination of other features'
components (seen on TMS 5-2: 3 of 5 single-initialisation seeds). Such runs end with a visibly higher total loss, so picking
among restarts by the training objective itself (no ground truth involved) removes most of them.

The selection phase writes no checkpoints: a run stopped during it starts the selection again on re-run
(checkpoints, and bit-identical resume, begin with the chosen restart).
"""

import copy
import logging

import torch

from circuitdecomp.decomp.config import DecompositionConfig
from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.decomp.train import SampleBatch, TrainState, faithfulness_warmup, fresh_state, spd_losses, train_step
from circuitdecomp.progress import progress

log = logging.getLogger(__name__)


@torch.no_grad()
def held_out_loss(
    cm: ComponentModel, sample_batch: SampleBatch, cfg: DecompositionConfig, frac: float, seed: int, n: int
) -> float:
    """Mean total SPD loss over `n` batches and mask draws that are the same for every restart."""
    gen_data, gen_masks = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    return sum(spd_losses(cm, sample_batch(gen_data), cfg, frac, gen_masks)[0].item() for _ in range(n)) / n


def select_restart(cm: ComponentModel, state: TrainState, sample_batch: SampleBatch, cfg: DecompositionConfig, seed: int) -> int:
    """Run `cfg.restarts` initialisations for `restart_steps` steps each; load the best into `cm`/`state`.

    Returns the step to continue from. Every restart sees the same data stream as a single run would.
    """
    steps = min(cfg.restart_steps, cfg.steps)
    best: tuple[float, int, dict] | None = None
    for k in range(cfg.restarts):
        cm.reset_parameters(seed + 7919 * k)
        trial = fresh_state(cm, cfg, seed)
        trial.gens["masks"].manual_seed(seed + 1 + 7919 * k)
        faithfulness_warmup(cm, cfg)
        with progress(steps, f"restart {k + 1}/{cfg.restarts}") as bar:
            for step in range(steps):
                train_step(cm, trial, sample_batch, cfg, step)
                bar.update(1)
        score = held_out_loss(cm, sample_batch, cfg, steps / max(1, cfg.steps), seed + 104729, cfg.restart_eval_batches)
        log.info("restart %d/%d: held-out SPD loss %.5g after %d steps", k + 1, cfg.restarts, score, steps)
        if best is None or score < best[0]:
            snapshot = {
                "params": {n: p.detach().clone() for n, p in trial.named.items()},
                "opt": copy.deepcopy(trial.opt.state_dict()),
                "gens": {n: g.get_state() for n, g in trial.gens.items()},
            }
            best = (score, k, snapshot)
    score, k, snap = best
    with torch.no_grad():
        for n, p in state.named.items():
            p.copy_(snap["params"][n])
    state.opt.load_state_dict(snap["opt"])
    for n, g in state.gens.items():
        g.set_state(snap["gens"][n])
    log.info("continuing restart %d (held-out loss %.5g) from step %d", k + 1, score, steps)
    return steps
