"""Resumable training checkpoints: parameters, optimizer state and RNG streams in one safetensors file.

Generic over what is trained (the decomposition writes to `checkpoints/`, target training to
`checkpoints/target/`). Two kinds: periodic ones (every `checkpoint_every` steps, and one when training
starts) and signal ones (written when SIGTERM or Ctrl-C stops a run). A divergence retry goes back to the
newest periodic one, so where a run was interrupted never changes its result. Every checkpoint also carries
the `Retry` state (learning-rate scale, retries used), so a resumed run continues with a lowered rate, and the
settings it was trained with (`run_fingerprint`), so a re-run with other settings fails instead of mixing them.
"""

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from circuitdecomp.runio import BadRunFile, check_free_space, config_differences, load_tensors, save_tensors, to_plain

log = logging.getLogger(__name__)
CKPT_DIR = "checkpoints"
HEADROOM = 2  # free space needed before a checkpoint write, in checkpoint sizes (the temp file, then the old ones)
# Settings that may change between a run and its resumption: they decide what is logged and when, not what is trained
# (`compile` is not among them: a compiled kernel may round differently, and resuming must stay bit-identical).
BOOKKEEPING = (
    "eval_every",
    "checkpoint_every",
    "pgd_steps",
    "pgd_step_size",
    "max_loss",
    "retry_lr_factor",
    "max_retries",
    "log_every",
    "lookup_active_fraction",
)


@dataclass(frozen=True)
class Retry:
    """Divergence retries so far: the learning rate is the configured one times `lr_scale`."""

    lr_scale: float = 1.0
    count: int = 0


def run_fingerprint(seed: int, **configs: Any) -> dict[str, Any]:
    """What a resumed run must share with the one that wrote the checkpoint: the seed and the configs (less BOOKKEEPING)."""
    return {"seed": seed} | {name: {k: v for k, v in to_plain(c).items() if k not in BOOKKEEPING} for name, c in configs.items()}


def _optimizer_tensors(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    out = {}
    for i, p in enumerate(params):
        for name, value in opt.state.get(p, {}).items():
            out[f"opt/{i}/{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return out


def _checkpoints(out_dir: Path, folder: str) -> list[Path]:
    return sorted((Path(out_dir) / folder).glob("step_*.safetensors"))


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise BadRunFile(f"checkpoint {path} is unreadable ({err}); delete it to resume from the one before") from err


def save_checkpoint(
    out_dir: Path,
    step: int,
    params: dict[str, torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    keep: int = 2,
    folder: str = CKPT_DIR,
    retry: Retry = Retry(),
    by_signal: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
) -> Path:
    """Write `<folder>/step_<N>.safetensors` atomically; keep the newest `keep` periodic ones and the newest of all.

    Fails with DiskFull before writing when the disk lacks room for it (so a nearly full disk stops a run at its
    first checkpoint, which training writes before its first step).
    """
    tensors = {f"param/{k}": v for k, v in params.items()}
    tensors.update(_optimizer_tensors(opt, list(params.values())))
    tensors.update({f"rng/{k}": g.get_state() for k, g in generators.items()})
    path = Path(out_dir) / folder / f"step_{step:08d}.safetensors"
    if by_signal and path.exists():  # a periodic checkpoint of this very step: same state, and it stays periodic
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    check_free_space(path.parent, HEADROOM * size, f"a {size / 2**20:.1f} MB checkpoint")
    meta = {
        "step": str(step),
        "params": json.dumps(list(params)),
        "lr_scale": repr(retry.lr_scale),
        "retries": str(retry.count),
        "signal": str(int(by_signal)),
    }
    if fingerprint is not None:
        meta["fingerprint"] = json.dumps(to_plain(fingerprint))
    save_tensors(path, tensors, metadata=meta)
    found = _checkpoints(out_dir, folder)
    periodic = [p for p in found if _metadata(p).get("signal", "0") == "0"]
    for old in found:
        if old != found[-1] and old not in periodic[-keep:]:
            old.unlink()
    return path


def latest_checkpoint(out_dir: Path, folder: str = CKPT_DIR) -> Path | None:
    """The newest checkpoint in a run directory, if any."""
    found = _checkpoints(out_dir, folder)
    return found[-1] if found else None


def read_retry(path: Path) -> Retry:
    """The retry state a checkpoint was written with."""
    meta = _metadata(path)
    return Retry(float(meta.get("lr_scale", "1.0")), int(meta.get("retries", "0")))


def load_checkpoint(
    path: Path,
    params: dict[str, torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    fingerprint: Mapping[str, Any] | None = None,
) -> int:
    """Restore everything `save_checkpoint` wrote; returns the step to continue from.

    With `fingerprint`, refuses a checkpoint written with other settings (listing them) before touching anything.
    """
    tensors = load_tensors(path)
    meta = _metadata(path)
    if "step" not in meta:
        raise BadRunFile(f"{path} is not a training checkpoint (no 'step' in its metadata)")
    step = int(meta["step"])
    if fingerprint is not None and "fingerprint" in meta:
        changed = config_differences(json.loads(meta["fingerprint"]), fingerprint)
        if changed:
            raise BadRunFile(
                f"checkpoint {path} was written with other settings ({'; '.join(changed[:4])}): re-run with "
                "the settings it was made with to resume it, or use a new hydra.run.dir"
            )
    saved = {k.removeprefix("param/"): v for k, v in tensors.items() if k.startswith("param/")}
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    bad_shape = [k for k in params if k in saved and saved[k].shape != params[k].shape]
    lost_rng = [name for name in generators if f"rng/{name}" not in tensors]
    if missing or unexpected or bad_shape or lost_rng:
        raise BadRunFile(
            f"checkpoint {path} does not fit this run (written with another config?): missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatch {bad_shape[:5]}, missing RNG streams {lost_rng}; "
            "re-run with the config it was made with, or use a new hydra.run.dir"
        )
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(saved[k])
    for i, p in enumerate(params.values()):
        entries = {k.split("/")[2]: v for k, v in tensors.items() if k.startswith(f"opt/{i}/")}
        if entries:
            opt.state[p] = entries
    for name, g in generators.items():
        g.set_state(tensors[f"rng/{name}"])
    log.info("resumed from %s (step %d)", path, step)
    return step


def retry_or_raise(
    err: Exception, out_dir: Path | None, factor: float, max_retries: int, stage: str, folder: str = CKPT_DIR
) -> Retry:
    """Handle a DivergenceError `err`: prepare a retry (see `retry_from_last_good`) or re-raise it, saying why."""
    retry = None if out_dir is None else retry_from_last_good(out_dir, factor, max_retries, folder)
    if retry is None and factor > 0:
        raise type(err)(
            f"{err} No retry left ({stage}.max_retries={max_retries}; retries need one process and a run directory)."
        ) from err
    if retry is None:
        raise err
    log.warning("%s Retry %d/%d from the last periodic checkpoint with lr x %g.", err, retry.count, max_retries, retry.lr_scale)
    return retry


def retry_from_last_good(out_dir: Path, factor: float, max_retries: int, folder: str = CKPT_DIR) -> Retry | None:
    """After a divergence: lower the learning-rate scale of the newest periodic checkpoint by `factor` and drop
    every newer checkpoint (they belong to the diverging trajectory), so resuming continues from it.

    Returns the new retry state, or None when retries are off (`factor` 0), used up, or nothing was saved yet.
    """
    periodic = [p for p in _checkpoints(out_dir, folder) if _metadata(p).get("signal", "0") == "0"]
    if factor <= 0 or not periodic:
        return None
    good = periodic[-1]
    old = read_retry(good)
    if old.count >= max_retries:
        return None
    new = Retry(old.lr_scale * factor, old.count + 1)
    meta = _metadata(good) | {"lr_scale": repr(new.lr_scale), "retries": str(new.count)}
    save_tensors(good, load_tensors(good), metadata=meta)
    for newer in _checkpoints(out_dir, folder):
        if newer.name > good.name:
            newer.unlink()
    return new
