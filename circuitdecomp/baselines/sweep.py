"""The SAE sweep of one world: widths around the family sizes, sparsities around each family's true L0; resumable."""

import dataclasses
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import safe_open
from torch import Tensor

from circuitdecomp.baselines.config import BaselinesConfig, SAEKind, SAESpec
from circuitdecomp.baselines.data import ReadoutData, activation_batches
from circuitdecomp.baselines.table import Entry, Row, score_entry
from circuitdecomp.baselines.train import TrainedSAE, encode, train_sae
from circuitdecomp.evaluate.config import RecoveryConfig
from circuitdecomp.evaluate.recovery import GroundTruth, Units
from circuitdecomp.interrupt import Interrupted, stop_on_signals
from circuitdecomp.runio import BadRunFile, Metrics, config_differences, load_tensors, save_tensors, to_plain, write_text
from circuitdecomp.tracking import Logger

log = logging.getLogger(__name__)
CKPT_DIR = "checkpoints/baselines"  # <spec name>.safetensors per finished SAE, <spec name>/ for the one in training
SWEEP_FILE = "sweep.json"  # the settings the saved SAEs were made with


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


def run_sweep(
    data: ReadoutData,
    specs: list[SAESpec],
    cfg: BaselinesConfig,
    size_attribute: int,
    recovery: RecoveryConfig,
    seed: int,
    logger: Logger,
    out_dir: Path | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> list[SAEResult]:
    """Train and score every SAE on the same data; each result carries its table row and namespaced metrics.

    With `out_dir`, the sweep is resumable: each finished SAE's result is saved in `checkpoints/baselines/` there and
    loaded instead of trained again, and SIGTERM / Ctrl-C checkpoint the SAE in training (see `train_sae`) and raise
    Interrupted. `fingerprint` (the settings that decide the results) is stored with them; resuming with other
    settings is refused (None: nothing to compare). `clear_checkpoints` removes the folder once the stage's outputs are
    written.
    """
    folder = None if out_dir is None else Path(out_dir) / CKPT_DIR
    if folder is not None:
        _resume_or_start(folder, fingerprint or {})
    results = []
    with stop_on_signals() as stop:  # a signal while an SAE is scored: the next SAE is not started
        for i, spec in enumerate(specs):
            if stop.set:
                raise Interrupted(f"SAE baselines stopped by {stop.signal_name} after {i} of {len(specs)} SAEs")
            done = None if folder is None else folder / f"{spec.name}.safetensors"
            if done is not None and done.exists():
                results.append(_load_result(done, spec))
                log.info("%d/%d %s: finished earlier, loaded from %s", i + 1, len(specs), spec.name, done)
                continue
            tag = f"baselines/{spec.name}"
            batches = activation_batches(data.train, cfg.train.batch_size, seed + 1000 * i)
            trained = train_sae(
                batches, spec, cfg.train, seed + 1000 * i, logger, tag, ckpt_dir=None if folder is None else folder / spec.name
            )
            result = _score(trained, data, size_attribute, recovery, tag)
            values = result.row.values
            log.info(
                "%d/%d %s: FVE %.3f, L0 %.2f, coef recall animals %.2f attributes %.2f (%.1f s)",
                i + 1,
                len(specs),
                spec.name,
                values["fve"],
                values["l0"],
                values["animals/coef_recall"],
                values["attributes/coef_recall"],
                trained.seconds,
            )
            if done is not None:
                _save_result(done, result)
                if (folder / spec.name).exists():  # its signal checkpoint: the result replaces it
                    shutil.rmtree(folder / spec.name)
            results.append(result)
        if stop.set:
            raise Interrupted(f"SAE baselines stopped by {stop.signal_name} after all {len(specs)} SAEs, before the table")
    return results


def _score(trained: TrainedSAE, data: ReadoutData, size_attribute: int, recovery: RecoveryConfig, tag: str) -> SAEResult:
    """One trained SAE on the held-out inputs: its table row, metrics and weights in the residual basis."""
    sae, spec = trained.sae, trained.sae.spec
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
    # in the residual basis: latents = act((x - b_dec) @ W_enc + b_enc) on the full residual, x̂ = latents @ W_dec + b_dec
    weights = {
        "W_enc": data.basis.T @ sae.W_enc.detach(),
        "b_enc": sae.b_enc.detach(),
        "W_dec": W_dec,
        "b_dec": data.lift(sae.b_dec.detach()[None])[0],
        "threshold": sae.threshold.detach(),
    }
    return SAEResult(spec, row, metrics, weights)


def _resume_or_start(folder: Path, fingerprint: Mapping[str, Any]) -> None:
    """Start a sweep in `folder`, or resume the one there if it was made with the same settings (else refuse)."""
    path = folder / SWEEP_FILE
    saved_work = folder.is_dir() and any(p.name != SWEEP_FILE for p in folder.iterdir())
    if not saved_work:  # nothing to resume (a first run, or one stopped before any SAE was saved): start with these settings
        write_text(path, json.dumps(to_plain(fingerprint), indent=1))
        return
    if not path.is_file():
        raise BadRunFile(
            f"{folder} holds saved SAEs but not the settings they were made with ({SWEEP_FILE}); delete {folder} "
            "to start the SAE sweep afresh"
        )
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadRunFile(f"{path} is not valid JSON ({err}); delete {folder} to start the SAE sweep afresh") from err
    changed = config_differences(saved, fingerprint)
    if changed:
        raise BadRunFile(
            f"the unfinished SAE sweep in {folder} was made with other settings ({'; '.join(changed[:4])}): re-run "
            f"with the settings it was made with to resume it, delete {folder} to start afresh, or use a new "
            "hydra.run.dir"
        )


def _save_result(path: Path, result: SAEResult) -> Path:
    meta = {"spec": result.spec.name, "row": json.dumps(dataclasses.asdict(result.row)), "metrics": json.dumps(result.metrics)}
    return save_tensors(path, result.weights, meta)


def _load_result(path: Path, spec: SAESpec) -> SAEResult:
    weights = load_tensors(path)  # names the file if it is unreadable
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("spec") != spec.name or "row" not in meta or "metrics" not in meta:
        raise BadRunFile(f"{path} is not the saved result of SAE {spec.name}; delete it to train that SAE again")
    return SAEResult(spec, Row(**json.loads(meta["row"])), json.loads(meta["metrics"]), weights)


def clear_checkpoints(out_dir: Path) -> None:
    """Remove the sweep's saved SAEs once the stage's outputs are written (and `checkpoints/`, if that leaves it empty)."""
    folder = Path(out_dir) / CKPT_DIR
    if folder.exists():
        shutil.rmtree(folder)
    if folder.parent.is_dir() and not any(folder.parent.iterdir()):
        folder.parent.rmdir()


def practitioner_pick(rows: list[Row], max_l0: float) -> Row:
    """What a practitioner without ground truth picks: best reconstruction among SAEs with L0 <= max_l0 (else the sparsest)."""
    sparse = [r for r in rows if r.values["l0"] <= max_l0]
    if not sparse:
        return min(rows, key=lambda r: r.values["l0"])
    return max(sparse, key=lambda r: r.values["fve"])
