"""Train one SAE on an iterator of activation batches: Adam, unit-norm decoder, dead-latent tracking, AuxK; resumable."""

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from circuitdecomp.baselines.config import SAEKind, SAESpec, SAETrainConfig
from circuitdecomp.baselines.sae import SparseAutoencoder, aux_k_loss, l1_penalty, matryoshka_loss, mse
from circuitdecomp.checkpoint import latest_checkpoint, load_checkpoint, run_fingerprint, save_checkpoint
from circuitdecomp.interrupt import Interrupted, check_finite, stop_on_signals
from circuitdecomp.progress import progress
from circuitdecomp.runio import Metrics
from circuitdecomp.tracking import Logger, NullLogger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedSAE:
    sae: SparseAutoencoder
    dead: Bool[Tensor, " n_latents"]  # had not fired for `dead_after` steps when training ended
    final_loss: float
    seconds: float


def _lr(step: int, cfg: SAETrainConfig) -> float:
    """Constant, then a linear decay to 0 over the last `lr_decay_frac` of the steps."""
    decay_start = int(cfg.steps * (1 - cfg.lr_decay_frac))
    if step < decay_start:
        return cfg.lr
    return cfg.lr * (cfg.steps - step) / max(1, cfg.steps - decay_start)


def _loss(
    sae: SparseAutoencoder, x: Float[Tensor, "batch d_model"], dead: Bool[Tensor, " n_latents"], cfg: SAETrainConfig
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Total loss, its terms by name (`mse` always: the reconstruction error) and the latents (for bookkeeping)."""
    spec = sae.spec
    out = sae(x, batch_sparsity=True)
    terms = {"mse": mse(out.recon, x)}
    match spec.kind:
        case SAEKind.relu:
            terms["l1"] = l1_penalty(out.latents)
            return terms["mse"] + spec.l1_coeff * terms["l1"], terms, out.latents
        case SAEKind.topk | SAEKind.batchtopk:
            main = terms["mse"]
        case SAEKind.matryoshka:
            main = terms["matryoshka"] = matryoshka_loss(sae, out.latents, x)
    k_aux = min(x.shape[1] // 2, spec.width)  # half of d_model, as in Gao et al.
    terms["aux_k"] = aux_k_loss(sae, out.pre, x - out.recon, dead, k_aux)
    return main + cfg.aux_coeff * terms["aux_k"], terms, out.latents


@torch.no_grad()
def resample_dead(
    sae: SparseAutoencoder,
    opt: torch.optim.Optimizer,
    x: Float[Tensor, "batch d_model"],
    dead: Bool[Tensor, " n_latents"],
    generator: torch.Generator,
) -> int:
    """Re-point dead latents at inputs drawn by squared reconstruction error (Bricken et al. 2023); returns how many."""
    idx = dead.nonzero().flatten()
    centred = x - sae.b_dec  # what the encoder sees
    weight = (x - sae(x).recon).pow(2).sum(dim=1)
    if idx.numel() == 0 or float(weight.sum()) <= 0:
        return 0
    rows = torch.multinomial(weight, idx.numel(), replacement=True, generator=generator)
    directions = centred[rows] / centred[rows].norm(dim=1, keepdim=True).clamp_min(1e-12)
    sae.reinitialise(idx, directions)
    for param, dim in ((sae.W_dec, 0), (sae.W_enc, 1), (sae.b_enc, 0)):
        for moment in opt.state[param].values():  # Adam's moments of the re-pointed rows start afresh
            if moment.ndim > 0:
                moment.index_fill_(dim, idx, 0.0)
    return idx.numel()


def train_sae(
    batches: Iterator[Float[Tensor, "batch d_model"]],
    spec: SAESpec,
    cfg: SAETrainConfig,
    seed: int,
    logger: Logger = NullLogger(),
    tag: str = "sae",
    ckpt_dir: Path | None = None,
) -> TrainedSAE:
    """Train an SAE of architecture `spec` for `cfg.steps` batches; logs `<tag>/loss`, `<tag>/mse`, `<tag>/l0`, `<tag>/dead_frac`.

    SIGTERM / Ctrl-C stop it at the next step boundary with Interrupted, after writing a checkpoint into `ckpt_dir`
    (when given). Called again with the same arguments, `batches` afresh from its start (the batches trained on before
    the checkpoint are skipped), it resumes there and ends bit-identical to an uninterrupted run. A non-finite loss or
    gradient raises DivergenceError naming the SAE, the step and every loss term, before the step is taken.
    """
    first = next(batches)
    check_batch(first)
    sae = SparseAutoencoder(spec, first.shape[1], torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_dec.copy_(first.mean(dim=0))  # start the pre-encoder bias at the data's centre
    sae.b_dec.requires_grad_(cfg.learn_pre_bias)
    params = [p for p in sae.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, fused=True)  # fused: ~25% faster steps on CPU
    gens = {"resample": torch.Generator().manual_seed(seed + 1)}
    since_fired = torch.zeros(spec.width, dtype=torch.long)  # steps since each latent fired; updated in place
    # what a checkpoint keeps: every tensor a step changes. Checkpoints restore parameters by name, so the threshold
    # buffer and the counter go in as frozen parameters that share their storage.
    extra = {"threshold": sae.threshold, "since_fired": since_fired}
    state = dict(sae.named_parameters()) | {k: nn.Parameter(v, requires_grad=False) for k, v in extra.items()}
    fingerprint = run_fingerprint(seed, sae=spec, train=cfg)
    first_step = 0 if ckpt_dir is None else _resume(ckpt_dir, state, opt, gens, fingerprint, batches)
    label = describe(spec)
    start, x = time.perf_counter(), first
    with stop_on_signals() as stop, progress(cfg.steps, tag, initial=first_step) as bar:
        for step in range(first_step, cfg.steps):
            if stop.set:
                if ckpt_dir is not None:
                    save_checkpoint(
                        ckpt_dir.parent, step, state, opt, gens, folder=ckpt_dir.name, by_signal=True, fingerprint=fingerprint
                    )
                raise Interrupted(f"{label} stopped by {stop.signal_name} at step {step}")
            if step > 0:
                x = next(batches)
                check_batch(x, first.shape[1])
            for group in opt.param_groups:
                group["lr"] = _lr(step, cfg)
            dead = since_fired >= cfg.dead_after
            loss, terms, latents = _loss(sae, x, dead, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.project_decoder_grad()
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).item()
            check_finite(label, step, loss, terms, grad_norm, math.inf, f"lower baselines.train.lr (now {cfg.lr:g}) and re-run.")
            opt.step()
            sae.normalise_decoder()
            if spec.kind in (SAEKind.batchtopk, SAEKind.matryoshka):
                sae.update_threshold(latents, cfg.threshold_momentum)
            fired = (latents > 0).any(dim=0)
            since_fired.add_(1).masked_fill_(fired, 0)
            if (
                cfg.resample_every
                and step % cfg.resample_every == cfg.resample_every - 1
                and step < cfg.resample_until * cfg.steps
            ):
                dead = since_fired >= cfg.dead_after
                if resample_dead(sae, opt, x, dead, gens["resample"]):
                    since_fired[dead] = 0
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                metrics: Metrics = {
                    f"{tag}/loss": loss.item(),
                    f"{tag}/mse": terms["mse"].item(),
                    f"{tag}/l0": (latents > 0).float().sum(dim=1).mean().item(),
                    f"{tag}/dead_frac": dead.float().mean().item(),
                }
                logger.log(metrics)
                bar.set_postfix(mse=f"{terms['mse'].item():.3g}", l0=f"{metrics[f'{tag}/l0']:.3g}")
            bar.update(1)
    seconds = time.perf_counter() - start
    log.info("%s: %d steps in %.1f s, final loss %.4g", tag, cfg.steps - first_step, seconds, loss.item())
    return TrainedSAE(sae.eval(), since_fired >= cfg.dead_after, loss.item(), seconds)


def _resume(
    ckpt_dir: Path,
    state: dict[str, nn.Parameter],
    opt: torch.optim.Optimizer,
    gens: dict[str, torch.Generator],
    fingerprint: dict[str, Any],
    batches: Iterator[Tensor],
) -> int:
    """Restore the newest checkpoint in `ckpt_dir`, if any, and skip the batches trained on before it; returns its step (or 0)."""
    ckpt = latest_checkpoint(ckpt_dir.parent, ckpt_dir.name)
    if ckpt is None:
        return 0
    step = load_checkpoint(ckpt, state, opt, gens, fingerprint)
    # checkpoints store tensors contiguous, but the fused Adam kernel walks a parameter and its moments as flat memory:
    # each moment must get its parameter's layout back (W_enc, a transposed copy at init, would be updated wrongly)
    for param, moments in opt.state.items():
        for name, moment in moments.items():
            if moment.shape == param.shape:
                moments[name] = torch.empty_like(param).copy_(moment)
    for _ in range(step - 1):  # the first batch is drawn already; steps 1 .. step - 1 trained on these
        next(batches)
    return step


def describe(spec: SAESpec) -> str:
    """The SAE in words for messages: `SAE topk_w24_k1 (topk, width 24, k=1)`."""
    sparsity = f"k={spec.k}" if spec.kind is not SAEKind.relu else f"l1_coeff={spec.l1_coeff:g}"
    return f"SAE {spec.name} ({spec.kind.value}, width {spec.width}, {sparsity})"


def check_batch(x: Tensor, d_model: int | None = None) -> None:
    """Activation batches are finite float matrices [batch, d_model] of one width."""
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(
            f"SAE batches must be float tensors [batch, d_model]; got dtype {x.dtype}, shape {tuple(x.shape)}: "
            "flatten positions into the batch first"
        )
    if d_model is not None and x.shape[1] != d_model:
        raise ValueError(f"SAE batch has d_model={x.shape[1]} but the first batch had {d_model}: feed one activation site")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("SAE batch has non-finite entries")


@torch.no_grad()
def encode(sae: SparseAutoencoder, x: Float[Tensor, "n d_model"], batch_size: int = 8192) -> Float[Tensor, "n n_latents"]:
    """Inference latents (BatchTopK/Matryoshka use their threshold), in batches."""
    return torch.cat([sae(x[s : s + batch_size]).latents for s in range(0, x.shape[0], batch_size)])
