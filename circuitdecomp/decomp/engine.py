"""The one way into SPD: seed, build the component model, train (resuming) or load, save, once.

`decompose()` (the public call), the toys (`toys/run.py`) and the animal world's pipeline (`pipeline/decompose.py`)
all go through `component_model` and `fit`; nothing else seeds a decomposition, writes its file or reads it back.
"""

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from circuitdecomp.decomp.config import DecompositionConfig
from circuitdecomp.decomp.distributed import Shard
from circuitdecomp.decomp.model import ComponentModel, default_output
from circuitdecomp.decomp.train import EvalFn, SampleBatch, TrainResult, train_decomposition
from circuitdecomp.rundir import DECOMPOSITION_FILE
from circuitdecomp.runio import load_tensors, save_tensors, to_plain
from circuitdecomp.tracking import Logger, NullLogger

log = logging.getLogger(__name__)
_FIX = "use the model and config it was made with, or delete it to decompose again"


def resolve_seed(config: DecompositionConfig, run_seed: int) -> int:
    """The decomposition's seed: `decomposition.seed` when set, else the run's."""
    return run_seed if config.seed is None else config.seed


def component_model(model: nn.Module, config: DecompositionConfig, seed: int, output_fn: Any = default_output) -> ComponentModel:
    """`model` wrapped for SPD, its components and CI functions drawn from `seed` (the same seed draws the same start)."""
    torch.manual_seed(seed)
    return ComponentModel(model, config, output_fn)


def fit(
    cm: ComponentModel,
    sample: SampleBatch,
    config: DecompositionConfig,
    seed: int,
    *,
    out_dir: str | Path | None = None,
    logger: Logger | None = None,
    eval_fn: EvalFn | None = None,
    log_every: int = 100,
    shard: Shard | None = None,
    name: str | None = None,
) -> TrainResult | None:
    """Train `cm`, or load it when `out_dir` already holds its finished decomposition (then None is returned).

    With `out_dir`: checkpoints go to `out_dir/checkpoints` and a re-run resumes from the latest; the finished
    decomposition is saved to `out_dir/decomposition.safetensors` (its config and seed as metadata) and logged as
    the artifact `decomposition-<name>` when `name` is given. Under torchrun only rank 0 writes.
    """
    logger = logger or NullLogger()
    path = None if out_dir is None else Path(out_dir) / DECOMPOSITION_FILE
    if path is not None and path.exists():
        load_into(cm, path)
        log.info("decomposition loaded from %s (delete it to decompose again)", path)
        return None
    result = train_decomposition(
        cm, sample, config, seed, None if out_dir is None else Path(out_dir), logger, eval_fn, log_every, shard=shard
    )
    if path is not None and (shard is None or shard.is_main):
        save(cm, config, seed, path)
        if name is not None:
            logger.log_artifact(path, f"decomposition-{name}", "model")
    return result


def save(cm: ComponentModel, config: DecompositionConfig, seed: int, path: str | Path) -> Path:
    """One safetensors file: every trained tensor, plus the config and seed as metadata."""
    tensors = {k: v.detach() for k, v in cm.named_trainables().items()}
    return save_tensors(Path(path), tensors, {"config": json.dumps(to_plain(config)), "seed": str(seed)})


def saved_config(path: str | Path) -> dict[str, Any]:
    """The config a decomposition file was saved with, as plain JSON values."""
    with safe_open(str(path), framework="pt") as f:
        raw = json.loads((f.metadata() or {}).get("config", "null"))
    if raw is None:
        raise ValueError(f"{path} has no decomposition config in its metadata: was it written by this version's fit/save?")
    return raw


def load_into(cm: ComponentModel, path: str | Path) -> None:
    """Copy a saved decomposition's tensors into `cm`, refusing a file made for another model, module set or C."""
    saved = load_tensors(Path(path))
    named = cm.named_trainables()
    missing, extra = set(named) - set(saved), set(saved) - set(named)
    if missing or extra:
        raise ValueError(
            f"{path} does not match this model and decomposition.modules: missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(extra)[:3]}; {_FIX}"
        )
    bad = [k for k in named if named[k].shape != saved[k].shape]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{path} does not match this model and decomposition.modules: '{k}' has shape {tuple(saved[k].shape)}, "
            f"they need {tuple(named[k].shape)} ({len(bad)} tensors differ); {_FIX}"
        )
    with torch.no_grad():
        for k, p in named.items():
            p.copy_(saved[k])
