"""The library call: `decompose(model, {pattern: C}, batches, config) -> Decomposition`."""

import dataclasses
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import safe_open
from torch import Tensor, nn

from circuitdecomp.decomp.config import DecompositionConfig, ModuleSpec
from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.decomp.train import TrainResult, train_decomposition
from circuitdecomp.runio import load_tensors, save_tensors, to_plain


def _check_model(model: nn.Module) -> None:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(f"the model has parameters that require grad ({trainable[:3]}...): SPD decomposes a frozen "
                         "model; call model.requires_grad_(False) first")


def _batch_source(batches: Iterable[Any]) -> tuple[Any, Iterator[Any]]:
    it = iter(batches)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("batches is empty: pass an iterable (or generator) of model inputs") from None
    return first, itertools.chain([first], it)


class Decomposition:
    """A trained decomposition of a model: components, causal importances and the directions circuits use."""

    def __init__(self, cm: ComponentModel, config: DecompositionConfig, result: TrainResult | None = None) -> None:
        self.cm, self.config, self.result = cm, config, result

    @property
    def paths(self) -> list[str]:
        return list(self.cm.paths)

    def V(self, path: str) -> Float[Tensor, "d_in C"]:
        """Read directions of module `path`, one column per component."""
        return self.cm.component(path).V.detach()

    def U(self, path: str) -> Float[Tensor, "C d_out"]:
        """Write directions of module `path`, one row per component; the weight is (V @ U).T."""
        return self.cm.component(path).U.detach()

    @torch.no_grad()
    def causal_importance(self, batch: Any) -> dict[str, Float[Tensor, "... C"]]:
        """CI in [0, 1] of every component on `batch`, per module."""
        self.cm.run_target(batch)
        return {p: g.detach() for p, g in self.cm.causal_importance().lower.items()}

    def live_components(self, batch: Any, threshold: float | None = None) -> dict[str, Tensor]:
        """Indices of components whose CI exceeds `threshold` (default: config.ci_alive_threshold) somewhere on batch."""
        t = self.config.ci_alive_threshold if threshold is None else threshold
        return {p: (g.flatten(0, -2).max(0).values > t).nonzero().flatten() for p, g in self.causal_importance(batch).items()}

    def save(self, path: str | Path) -> Path:
        """One safetensors file: every trained tensor plus the config (as metadata)."""
        tensors = {k: v.detach() for k, v in self.cm.named_trainables().items()}
        return save_tensors(Path(path), tensors, {"config": json.dumps(to_plain(self.config))})

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> "Decomposition":
        """Rebuild a saved decomposition around the same (frozen) model."""
        with safe_open(str(path), framework="pt") as f:
            raw = json.loads(f.metadata()["config"])
        raw["modules"] = [ModuleSpec(**m) for m in raw["modules"]]
        fields = {f.name: f.type for f in dataclasses.fields(DecompositionConfig)}
        config = DecompositionConfig(**{k: _enum(fields[k], v) for k, v in raw.items()})
        cm = ComponentModel(model, config)
        saved = load_tensors(path)
        named = cm.named_trainables()
        if set(saved) != set(named):
            raise ValueError(f"{path} does not match this model: it has {len(saved)} tensors, the model needs {len(named)}")
        with torch.no_grad():
            for k, p in named.items():
                p.copy_(saved[k])
        return cls(cm, config)


def _enum(annotation: Any, value: Any) -> Any:
    return annotation(value) if isinstance(annotation, type) and issubclass(annotation, str) and annotation is not str else value


def decompose(model: nn.Module, module_patterns: dict[str, int], batches: Iterable[Any],
              config: DecompositionConfig | None = None, out_dir: str | Path | None = None, seed: int = 0) -> Decomposition:
    """Run SPD on any frozen nn.Module. `module_patterns` maps fnmatch patterns to C; `batches` yields inputs.

    The output loss (MSE or KL on logits), steps, coefficients etc. come from `config`; its `modules` field is
    replaced by `module_patterns`. With `out_dir`, checkpoints go there and a re-run resumes.
    """
    _check_model(model)
    first, stream = _batch_source(batches)
    specs = [ModuleSpec(pattern, C) for pattern, C in module_patterns.items()]
    config = dataclasses.replace(config or DecompositionConfig(), modules=specs)
    torch.manual_seed(seed)
    cm = ComponentModel(model, config)
    try:
        cm.run_target(first)
    except Exception as err:  # the user's batch does not fit the model: say so before training starts
        raise ValueError(f"the model cannot run on the first batch ({_describe(first)}): {err}") from err

    def sample(_: torch.Generator) -> Any:
        try:
            return next(stream)
        except StopIteration:
            raise ValueError(f"batches ran out before decomposition.steps={config.steps}; pass an endless generator") from None

    result = train_decomposition(cm, sample, config, seed, None if out_dir is None else Path(out_dir))
    return Decomposition(cm, config, result)


def _describe(batch: Any) -> str:
    return f"tensor of shape {tuple(batch.shape)}, dtype {batch.dtype}" if isinstance(batch, Tensor) else type(batch).__name__
