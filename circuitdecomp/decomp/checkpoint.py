"""Resumable decomposition checkpoints: parameters, optimizer state and RNG streams in one safetensors file."""

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from circuitdecomp.runio import load_tensors, save_tensors

log = logging.getLogger(__name__)
CKPT_DIR = "checkpoints"


def _optimizer_tensors(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    out = {}
    for i, p in enumerate(params):
        for name, value in opt.state.get(p, {}).items():
            out[f"opt/{i}/{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return out


def save_checkpoint(out_dir: Path, step: int, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer,
                    generators: dict[str, torch.Generator], keep: int = 2) -> Path:
    """Write `checkpoints/step_<N>.safetensors` atomically; keep only the newest `keep`."""
    tensors = {f"param/{k}": v for k, v in params.items()}
    tensors.update(_optimizer_tensors(opt, list(params.values())))
    tensors.update({f"rng/{k}": g.get_state() for k, g in generators.items()})
    path = Path(out_dir) / CKPT_DIR / f"step_{step:08d}.safetensors"
    save_tensors(path, tensors, metadata={"step": str(step), "params": json.dumps(list(params))})
    for old in sorted(path.parent.glob("step_*.safetensors"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint in a run directory, if any."""
    found = sorted((Path(out_dir) / CKPT_DIR).glob("step_*.safetensors"))
    return found[-1] if found else None


def load_checkpoint(path: Path, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer,
                    generators: dict[str, torch.Generator]) -> int:
    """Restore everything `save_checkpoint` wrote; returns the step to continue from."""
    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        step = int(f.metadata()["step"])
    saved = {k.removeprefix("param/"): v for k, v in tensors.items() if k.startswith("param/")}
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    bad_shape = [k for k in params if k in saved and saved[k].shape != params[k].shape]
    if missing or unexpected or bad_shape:
        raise ValueError(f"checkpoint {path} does not fit this decomposition (another config?): missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatch {bad_shape[:5]}")
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
