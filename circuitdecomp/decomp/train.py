"""The SPD optimisation loop: warm-up, stochastic losses, evaluation, checkpoints, resume, divergence stops."""

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from circuitdecomp.checkpoint import (
    Retry,
    latest_checkpoint,
    load_checkpoint,
    read_retry,
    retry_or_raise,
    run_fingerprint,
    save_checkpoint,
)
from circuitdecomp.decomp import losses as L
from circuitdecomp.decomp.allocator import keep_freed_memory
from circuitdecomp.decomp.config import DecompositionConfig, InitKind, LRSchedule
from circuitdecomp.decomp.distributed import Shard
from circuitdecomp.decomp.model import CausalImportance, ComponentModel
from circuitdecomp.decomp.terms import TERMS, Step, coefficient
from circuitdecomp.interrupt import DivergenceError, Interrupted, check_finite, stop_on_signals
from circuitdecomp.progress import progress
from circuitdecomp.runio import Metrics
from circuitdecomp.tracking import Logger, NullLogger

log = logging.getLogger(__name__)

SampleBatch = Callable[[torch.Generator], Any]
EvalFn = Callable[[ComponentModel, int], Metrics]


@dataclass(frozen=True)
class TrainResult:
    steps_done: int
    final_losses: dict[str, float]
    seconds: float
    ms_per_step: float
    lr_scale: float = 1.0  # below 1 after divergence retries (decomposition.retry_lr_factor)


def lr_at(step: int, cfg: DecompositionConfig) -> float:
    """Learning rate with linear warm-up, then constant / cosine / linear decay to lr * lr_final_frac."""
    warm = int(cfg.lr_warmup_frac * cfg.steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, cfg.steps - warm)
    lo = cfg.lr * cfg.lr_final_frac
    match cfg.lr_schedule:
        case LRSchedule.constant:
            return cfg.lr
        case LRSchedule.cosine:
            return lo + (cfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * frac))
        case LRSchedule.linear:
            return cfg.lr + (lo - cfg.lr) * frac


def faithfulness_warmup(cm: ComponentModel, cfg: DecompositionConfig) -> float:
    """Fit sum_c U_c V_c^T to each target weight before training (AdamW with weight decay)."""
    if cfg.warmup_steps == 0:
        return float("nan")
    opt = torch.optim.AdamW(cm.component_parameters(), lr=cfg.warmup_lr, weight_decay=cfg.warmup_weight_decay)
    for _ in range(cfg.warmup_steps):
        opt.zero_grad(set_to_none=True)
        loss = L.faithfulness_loss(cm.weight_deltas())
        loss.backward()
        opt.step()
    return loss.item()


def spd_losses(
    cm: ComponentModel, batch: Any, cfg: DecompositionConfig, frac: float, gen: torch.Generator, shard: Shard | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], CausalImportance]:
    """All loss terms of one SPD step on one batch (this rank's rows of it, with `shard`); returns (total, {name: term}, CI).

    The terms are the rows of `terms.TERMS` whose coefficient is above 0 (and those marked `always`)."""
    target_out = cm.run_target(batch)
    ci = cm.causal_importance()
    sample_masks = L.sample_masks if shard is None else shard.sample_masks
    masks = [sample_masks(ci.lower, cfg.mask_sampling, cfg.use_delta, gen) for _ in range(cfg.n_mask_samples)]
    step = Step(cm, batch, cfg, target_out, ci, masks, frac, gen, shard)
    values: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=target_out.device)
    for term in TERMS:
        if getattr(cfg, term.coeff) > 0 or term.always:
            values[term.name] = term.loss(step)
            total = total + coefficient(term, cfg, frac) * values[term.name]
    return total, values, ci


def ci_l0(ci_lower: dict[str, torch.Tensor], threshold: float) -> dict[str, float]:
    """Mean number of components per position with CI above `threshold`, per module."""
    return {path: (g > threshold).float().sum(-1).mean().item() for path, g in ci_lower.items()}


def _check_finite(
    step: int, total: torch.Tensor, terms: dict[str, torch.Tensor], grad_norm: float, cfg: DecompositionConfig
) -> None:
    check_finite(
        "decomposition",
        step,
        total,
        terms,
        grad_norm,
        cfg.max_loss,
        f"lower decomposition.lr (now {cfg.lr:g}) and re-run, or set decomposition.retry_lr_factor=0.5 to retry "
        "from the last good checkpoint automatically.",
    )


@dataclass
class TrainState:
    """What a step changes and a checkpoint keeps: parameters (by name), optimizer, RNG streams."""

    named: dict[str, torch.nn.Parameter]
    opt: torch.optim.Optimizer
    gens: dict[str, torch.Generator]


def fresh_state(cm: ComponentModel, cfg: DecompositionConfig, seed: int) -> TrainState:
    named = cm.named_trainables()
    gens = {"data": torch.Generator().manual_seed(seed), "masks": torch.Generator().manual_seed(seed + 1)}
    # one fused kernel for all parameters (4x faster than the default per-tensor loop on CPU; same update to 1 ulp)
    fused = all(p.device.type in ("cpu", "cuda") for p in named.values())
    if cfg.ci_lr_scale == 1.0:
        return TrainState(named, torch.optim.Adam(list(named.values()), lr=cfg.lr, fused=fused), gens)
    comps = {id(p) for p in cm.component_parameters()}
    groups = [
        {"params": [p for p in named.values() if id(p) in comps], "lr_scale": 1.0},
        {"params": [p for p in named.values() if id(p) not in comps], "lr_scale": cfg.ci_lr_scale},
    ]
    return TrainState(named, torch.optim.Adam(groups, lr=cfg.lr, fused=fused), gens)


class StepResult(NamedTuple):
    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    ci: CausalImportance
    lr: float
    grad_norm: float


def train_step(
    cm: ComponentModel,
    state: TrainState,
    sample_batch: SampleBatch,
    cfg: DecompositionConfig,
    step: int,
    shard: Shard | None = None,
) -> StepResult:
    """One optimiser step; raises DivergenceError before touching the parameters if anything is non-finite."""
    lr = lr_at(step, cfg)
    for group in state.opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    batch = sample_batch(state.gens["data"])
    if shard is not None:
        batch = shard.local(batch)
    total, terms, ci = spd_losses(cm, batch, cfg, step / max(1, cfg.steps), state.gens["masks"], shard)
    state.opt.zero_grad(set_to_none=True)
    total.backward()
    if shard is not None:  # every rank then takes the one-process step (and agrees on divergence)
        shard.average_gradients(state.named.values())
        total, terms = shard.average_losses(total, terms)
    grad_norm = torch.nn.utils.clip_grad_norm_(list(state.named.values()), float("inf")).item()
    _check_finite(step, total, terms, grad_norm, cfg)
    if step < cfg.ci_warmup_steps:  # CI functions learn where the (warm-started) components matter; V, U wait
        for p in cm.component_parameters():
            p.grad = None
    state.opt.step()
    return StepResult(total, terms, ci, lr, grad_norm)


def train_decomposition(
    cm: ComponentModel,
    sample_batch: SampleBatch,
    cfg: DecompositionConfig,
    seed: int,
    out_dir: Path | None = None,
    logger: Logger | None = None,
    eval_fn: EvalFn | None = None,
    log_every: int = 100,
    shard: Shard | None = None,
) -> TrainResult:
    """Run SPD on `cm`; with `out_dir`, checkpoint there and resume from its latest checkpoint.

    With `shard` (one of several processes), this rank trains on its rows of every batch and only rank 0
    writes checkpoints; the caller gives the other ranks a NullLogger. With `cfg.retry_lr_factor` > 0 a
    divergence sends the run back to its last periodic checkpoint with the learning rate times that factor, at
    most `cfg.max_retries` times (one process, with `out_dir`).
    """
    keep_freed_memory()
    while True:
        try:
            return _train_once(cm, sample_batch, cfg, seed, out_dir, logger, eval_fn, log_every, shard)
        except DivergenceError as err:
            retry_or_raise(err, out_dir if shard is None else None, cfg.retry_lr_factor, cfg.max_retries, "decomposition")


def _train_once(
    cm: ComponentModel,
    sample_batch: SampleBatch,
    cfg: DecompositionConfig,
    seed: int,
    out_dir: Path | None = None,
    logger: Logger | None = None,
    eval_fn: EvalFn | None = None,
    log_every: int = 100,
    shard: Shard | None = None,
) -> TrainResult:
    """One attempt of `train_decomposition`: resume or start, then train until done, stopped or diverged."""
    from circuitdecomp.decomp.restarts import select_restart  # restarts reuse this module's step

    logger = logger or NullLogger()
    torch.manual_seed(seed)  # component and CI-function init were drawn by the caller; this seeds any other torch use
    state = fresh_state(cm, cfg, seed)
    fingerprint = run_fingerprint(seed, decomposition=cfg)  # before any retry lowers cfg.lr
    start = 0
    ckpt = latest_checkpoint(out_dir) if out_dir is not None else None
    if shard is not None:
        shard.check_config(cfg)
        ckpt = shard.from_main(ckpt)  # every rank resumes from rank 0's checkpoint
    retry = Retry() if ckpt is None else read_retry(ckpt)
    if retry.lr_scale != 1.0:  # the run diverged earlier and went on with a lower learning rate
        cfg = dataclasses.replace(cfg, lr=cfg.lr * retry.lr_scale)
        log.warning("continuing with decomposition.lr x %g = %g after %d divergence retries", retry.lr_scale, cfg.lr, retry.count)
    if ckpt is not None:
        start = load_checkpoint(ckpt, state.named, state.opt, state.gens, fingerprint)
    elif cfg.restarts > 1:
        start = select_restart(cm, state, sample_batch, cfg, seed)
    else:
        if cfg.init is InitKind.neurons:  # already exact; Adam's sign-like steps would smear every unit over all others
            log.info("init=neurons: components start exact, no faithfulness warm-up")
        else:
            warm = faithfulness_warmup(cm, cfg)
            log.info("faithfulness warm-up: %d steps, loss %.3g", cfg.warmup_steps, warm)
        if cfg.ci_init_from_data:
            cm.init_ci_from_data(sample_batch(torch.Generator().manual_seed(seed + 3)))
    if shard is not None:
        shard.broadcast(state.named.values())  # identical already when every rank seeded alike; now guaranteed
    writes = out_dir is not None and (shard is None or shard.is_main)
    if writes and ckpt is None:  # the last good state a divergence retry can go back to; fails early on a full disk
        save_checkpoint(out_dir, start, state.named, state.opt, state.gens, fingerprint=fingerprint)
    t0, done, terms = time.perf_counter(), 0, {}
    with stop_on_signals() as stop, progress(cfg.steps, "decompose", initial=start) as bar:
        for step in range(start, cfg.steps):
            if stop.set if shard is None else shard.any(stop.set):
                if writes:
                    path = save_checkpoint(
                        out_dir, step, state.named, state.opt, state.gens, retry=retry, by_signal=True, fingerprint=fingerprint
                    )
                    log.warning(
                        "%s received at step %d: checkpoint %s written; re-run the same command to resume",
                        stop.signal_name,
                        step,
                        path,
                    )
                raise Interrupted(f"stopped by {stop.signal_name} at step {step}")
            total, terms, ci, lr, grad_norm = train_step(cm, state, sample_batch, cfg, step, shard)
            done += 1
            bar.update(1)
            if step % log_every == 0 or step == cfg.steps - 1:
                metrics = {f"decomp/train/{k}": v.item() for k, v in terms.items()}
                metrics.update({f"decomp/train/ci_l0/{p}": v for p, v in ci_l0(ci.lower, cfg.ci_alive_threshold).items()})
                metrics.update({"decomp/train/lr": lr, "decomp/train/loss": total.item(), "decomp/train/grad_norm": grad_norm})
                logger.log(metrics, step=step)
                bar.set_postfix(loss=f"{total.item():.3g}", imp=f"{terms['importance_minimality'].item():.3g}")
            if (step + 1) % cfg.eval_every == 0:
                l0 = ci_l0(ci.lower, cfg.ci_alive_threshold)
                log.info(
                    "step %d/%d  loss %.4g  %s  ci_l0 %s",
                    step + 1,
                    cfg.steps,
                    total.item(),
                    " ".join(f"{k}={v.item():.3g}" for k, v in terms.items()),
                    " ".join(f"{p}={v:.2f}" for p, v in l0.items()),
                )
                if eval_fn is not None:
                    logger.log(eval_fn(cm, step + 1), step=step + 1)
            if writes and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
                save_checkpoint(out_dir, step + 1, state.named, state.opt, state.gens, retry=retry, fingerprint=fingerprint)
    seconds = time.perf_counter() - t0
    final = {k: v.item() for k, v in terms.items()}
    return TrainResult(
        steps_done=done, final_losses=final, seconds=seconds, ms_per_step=1000 * seconds / max(1, done), lr_scale=retry.lr_scale
    )
