"""The library call: `decompose(model, {pattern: C}, batches, config) -> Decomposition`.

Works on any frozen `nn.Module` whose chosen leaves are `nn.Linear`, `nn.Embedding`, HF `Conv1D` or
TransformerLens bridge linears. Under torchrun (inside `distributed.process_group()`), every rank passes the
same batches and trains on its own slice of each; rank 0 alone logs and writes.
"""

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from circuitdecomp.decomp import engine
from circuitdecomp.decomp.adapters import WeightKind
from circuitdecomp.decomp.components import MaskInfo
from circuitdecomp.decomp.config import DecompositionConfig, ModuleSpec, OutputLoss, drop_retired
from circuitdecomp.decomp.distributed import current_shard
from circuitdecomp.decomp.losses import output_distance
from circuitdecomp.decomp.model import ComponentModel, default_output
from circuitdecomp.decomp.span import data_span, project_onto, row_factor
from circuitdecomp.decomp.train import TrainResult
from circuitdecomp.runio import Metrics
from circuitdecomp.tracking import Logger, NullLogger

OutputFn = Callable[[Any], Tensor]


@dataclass(frozen=True)
class CircuitDirections:
    """The live components of one module: the unit direction each reads (V column) and writes (U row).

    See `Decomposition.directions`: by default both are projected onto the span of the data the module saw.
    """

    components: Int[Tensor, " n"]
    read: Float[Tensor, "n d_in"]  # unit rows; a zero row where a projection left nothing
    write: Float[Tensor, "n d_out"]
    activity: Float[Tensor, " n"]  # fraction of positions where the component's CI exceeds the threshold
    read_inside: Float[Tensor, " n"]  # |P v| / |v|: the part of the raw V column inside the span of the batch's inputs
    write_inside: Float[Tensor, " n"]  # the same for the raw U row and the span of the target's outputs x W^T


class Decomposition:
    """A trained decomposition of a model: components, causal importances and the directions circuits use.

    The model keeps its own modules; the decomposed twins are swapped in only while a method runs it.
    """

    def __init__(self, cm: ComponentModel, config: DecompositionConfig, result: TrainResult | None = None, seed: int = 0) -> None:
        self.cm, self.config, self.result, self.seed = cm, config, result, seed
        cm.detach_components()

    @contextlib.contextmanager
    def _swapped_in(self) -> Iterator[ComponentModel]:
        self.cm.attach()
        try:
            yield self.cm
        finally:
            self.cm.detach_components()

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
    def causal_importance(self, batch: Any) -> dict[str, Float[Tensor, "*batch C"]]:
        """CI in [0, 1] of every component on `batch`, per module (per position for sequence inputs)."""
        with self._swapped_in() as cm:
            cm.run_target(batch)
            return {p: g.detach() for p, g in cm.causal_importance().lower.items()}

    def live_components(self, batch: Any, threshold: float | None = None) -> dict[str, Int[Tensor, " n"]]:
        """Indices of components whose CI exceeds `threshold` (default: config.ci_alive_threshold) somewhere on batch."""
        t = self.config.ci_alive_threshold if threshold is None else threshold
        return {p: (g.flatten(0, -2).max(0).values > t).nonzero().flatten() for p, g in self.causal_importance(batch).items()}

    @torch.no_grad()
    def directions(
        self, batch: Any, threshold: float | None = None, *, project: bool = True, rel_tol: float = 1e-4
    ) -> dict[str, CircuitDirections]:
        """Features from circuits: per module, the read and write directions of the components live on `batch`.

        Live: CI above `threshold` (default: config.ci_alive_threshold) at some masked position of `batch`.
        Per module, for its live components in index order: `read` is the V column and `write` the U row,
        each projected (`project=True`) onto the span of what the module sees on `batch` and scaled to unit
        norm; `project=False` gives the raw columns and rows at unit norm. The spans are uncentred, over every
        call of the module at its masked positions: for reads, the module's inputs x (an embedding's: the
        one-hot rows of the tokens seen, each token seen at least once); for writes, the target's outputs
        x W^T without bias. Directions with singular values within `rel_tol` x the largest count as unseen
        (`span.data_span`). Nothing trains a component where the data never goes, so raw directions carry
        arbitrary mass there.
        `read_inside` / `write_inside` give |P v| / |v|, the fraction of each raw direction's norm inside the
        span, whichever `project` is. A projected direction with less than 1e-6 of its norm inside (it reads
        or writes only where the batch never goes) is kept, as a zero row, so that rows stay aligned with
        `components`; filter on `read_inside` to drop such rows.
        """
        t = self.config.ci_alive_threshold if threshold is None else threshold
        out = {}
        with self._swapped_in() as cm:
            cm.run_target(batch)
            ci = cm.causal_importance().lower
            for path, g in ci.items():
                active = (g.flatten(0, -2) > t).float().mean(0)
                live = (active > 0).nonzero().flatten()
                read_in, write_in = self._spans(cm, path, rel_tol)
                read, read_inside = _project_unit(self.V(path)[:, live].T, read_in, project)
                write, write_inside = _project_unit(self.U(path)[live], write_in, project)
                out[path] = CircuitDirections(live, read, write, active[live], read_inside, write_inside)
        return out

    @staticmethod
    def _spans(cm: ComponentModel, path: str, rel_tol: float) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """Projections onto the spans of the module's inputs and of its target outputs x W^T on the last target pass."""
        comp = cm.component(path)
        xs = [comp.selected_input(k) for k in cm.state.inputs if k[0] == path]
        W = comp.target_weight().detach()
        if comp.kind is WeightKind.embedding:  # inputs are one-hot rows: their span is the set of tokens seen
            tokens, counts = torch.cat([x.flatten() for x in xs]).unique(return_counts=True)
            seen = torch.zeros(comp.d_in, dtype=torch.bool, device=W.device)
            seen[tokens] = True
            # rows sqrt(count) W^T[token] have the Gram matrix, so the span and spectrum, of W^T[every token seen]
            out_basis = data_span(counts.double().sqrt()[:, None] * W.T[tokens].double(), rel_tol)
            return (lambda v: v * seen), (lambda v: project_onto(v, out_basis))
        R = row_factor(torch.cat([x.reshape(-1, comp.d_in) for x in xs]))  # R^T R = X^T X
        in_basis = data_span(R, rel_tol)
        out_basis = data_span(R @ W.T.double(), rel_tol)  # (X W^T)^T (X W^T) = (R W^T)^T (R W^T): the outputs' span
        return (lambda v: project_onto(v, in_basis)), (lambda v: project_onto(v, out_basis))

    @torch.no_grad()
    def metrics(self, batch: Any) -> Metrics:
        """Namespaced numbers for metrics.json and sweeps: live components, CI L0 and reconstruction on `batch`."""
        t = self.config.ci_alive_threshold
        with self._swapped_in() as cm:
            target = cm.run_target(batch)
            ci = cm.causal_importance().lower
            kind = self.config.output_loss
            ci_masked = output_distance(cm(batch, {p: MaskInfo(g) for p, g in ci.items()}), target, kind)
            all_on = output_distance(cm(batch, {p: MaskInfo(torch.ones_like(g)) for p, g in ci.items()}), target, kind)
        out: Metrics = {"decomp/eval/recon_ci_masked": ci_masked.item(), "decomp/eval/recon_all_components": all_on.item()}
        for p, g in ci.items():
            out[f"decomp/n_live/{p}"] = int((g.flatten(0, -2).max(0).values > t).sum())
            out[f"decomp/ci_l0/{p}"] = (g > t).float().sum(-1).mean().item()
        if self.result is not None:
            out.update({f"decomp/final/{k}": v for k, v in self.result.final_losses.items()})
            out["decomp/ms_per_step"] = self.result.ms_per_step
        return out

    def save(self, path: str | Path) -> Path:
        """One safetensors file: every trained tensor plus the config and seed (as metadata). Rank 0 alone writes."""
        shard = current_shard()
        if shard is not None and not shard.is_main:
            return Path(path)
        return engine.save(self.cm, self.config, self.seed, path)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module, output_fn: OutputFn = default_output) -> "Decomposition":
        """Rebuild a saved decomposition around the same (frozen) model."""
        raw = drop_retired(engine.saved_config(path), str(path))
        spec_fields = {f.name: f.type for f in dataclasses.fields(ModuleSpec)}
        raw["modules"] = [ModuleSpec(**{k: _enum(spec_fields[k], v) for k, v in m.items()}) for m in raw["modules"]]
        fields = {f.name: f.type for f in dataclasses.fields(DecompositionConfig)}
        config = DecompositionConfig(**{k: _enum(fields[k], v) for k, v in raw.items()})
        cm = ComponentModel(model, config, output_fn)
        engine.load_into(cm, path)
        return cls(cm, config)


def _project_unit(
    raw: Float[Tensor, "n d"], proj: Callable[[Tensor], Tensor], project: bool
) -> tuple[Float[Tensor, "n d"], Float[Tensor, " n"]]:
    """Unit rows (projected by `proj` if `project`; zero where under 1e-6 of a row is inside), and |proj(v)| / |v|."""
    unit = raw / raw.norm(dim=1, keepdim=True).clamp_min(torch.finfo(raw.dtype).tiny)
    inside_vec = proj(unit)
    inside = inside_vec.norm(dim=1)
    if not project:
        return unit, inside
    keep = inside >= 1e-6
    return torch.where(keep[:, None], inside_vec / inside.clamp_min(1e-6)[:, None], 0.0), inside


def _enum(annotation: Any, value: Any) -> Any:
    return annotation(value) if isinstance(annotation, type) and issubclass(annotation, str) and annotation is not str else value


def decompose(
    model: nn.Module,
    module_patterns: dict[str, int],
    batches: Iterable[Any],
    config: DecompositionConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    seed: int = 0,
    logger: Logger | None = None,
    output_fn: OutputFn = default_output,
    log_every: int = 100,
) -> Decomposition:
    """Run SPD on any frozen nn.Module. `module_patterns` maps fnmatch patterns to C; `batches` yields inputs.

    The output loss (MSE, or KL on logits), steps, coefficients etc. come from `config`; its `modules` field is
    replaced by `module_patterns`, and its `seed`, when set, overrides `seed`. Every batch must have the shape
    of the first. Masks follow the module inputs' leading dims: per example for [batch, d], per token for
    [batch, pos, d]. With `out_dir`, checkpoints go there and a re-run resumes (with the batches the iterable
    yields next); the finished decomposition is saved there as `decomposition.safetensors`, and a call on an
    `out_dir` that holds one loads it instead of training. `output_fn` picks the tensor to reconstruct from the
    model's output (default: the tensor itself or `.logits`). Seeding, training, checkpoints and the saved file
    are `engine.fit`'s, the same the toys and the pipeline use.
    """
    _check_model(model)
    specs = [ModuleSpec(pattern, C) for pattern, C in module_patterns.items()]
    config = dataclasses.replace(config or DecompositionConfig(), modules=specs)
    seed = engine.resolve_seed(config, seed)
    shard = current_shard()
    if shard is not None:  # one target for all ranks, even where their own training of it was not bit-identical
        shard.broadcast(itertools.chain(model.parameters(), model.buffers()))
    first, stream = _batch_source(batches)
    cm = engine.component_model(model, config, seed, output_fn)
    try:
        _check_first_batch(cm, first if shard is None else shard.local(first), config)
    except BaseException:
        cm.detach_components()  # the caller gets its model back as it was
        raise
    shape = _shape(first)

    def sample(_: torch.Generator) -> Any:
        batch = next(stream, None)
        if batch is None:
            raise ValueError(f"batches ran out before decomposition.steps={config.steps}; pass an endless generator")
        if _shape(batch) != shape:
            raise ValueError(f"a batch has shape {_shape(batch)}, the first had {shape}: every batch must have the same shape")
        return batch

    if shard is not None and not shard.is_main:
        logger = NullLogger()
    try:
        result = engine.fit(cm, sample, config, seed, out_dir=out_dir, logger=logger, log_every=log_every, shard=shard)
    except BaseException:  # divergence, interruption, bad batches: the checkpoint stays, the model is given back
        cm.detach_components()
        raise
    return Decomposition(cm, config, result, seed)


def _check_model(model: nn.Module) -> None:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(
            f"the model has {len(trainable)} parameters that require grad ({', '.join(trainable[:3])}, ...): "
            "SPD decomposes a frozen model; call model.requires_grad_(False) first"
        )


def _batch_source(batches: Iterable[Any]) -> tuple[Any, Iterator[Any]]:
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise ValueError("batches is empty: pass an iterable (or generator) of model inputs")
    return first, itertools.chain([first], it)


def _check_first_batch(cm: ComponentModel, batch: Any, config: DecompositionConfig) -> None:
    """Run the model once on the first batch and check what each decomposed module saw, before any training."""
    try:
        out = cm.run_target(batch)
    except Exception as err:  # the user's batch does not fit the model: say so before training starts
        raise ValueError(f"the model cannot run on the first batch ({_shape(batch)}): {err}") from err
    for path in cm.paths:
        if (path, 0) not in cm.state.inputs:
            raise ValueError(f"module '{path}' did not run on the first batch; is it part of the model's forward?")
        x = cm.state.inputs[(path, 0)]
        need = 1 if cm.component(path).kind is WeightKind.embedding else 2
        if x.ndim < need:
            raise ValueError(
                f"module '{path}' got an input of shape {tuple(x.shape)} from the first batch ({_shape(batch)}): "
                "it has no batch dimension; batches must be [batch, ...] (or [batch, pos, ...])"
            )
    if config.output_loss is OutputLoss.kl and out.ndim < 2:
        raise ValueError(f"output_loss=kl needs logits [batch, ..., classes]; the model returned shape {tuple(out.shape)}")


def _shape(batch: Any) -> Any:
    """The shape of a batch (tensor, or tuple / list / dict of tensors), for messages and comparisons."""
    if isinstance(batch, Tensor):
        return tuple(batch.shape)
    if isinstance(batch, (tuple, list)):
        return tuple(_shape(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _shape(v) for k, v in batch.items()}
    return type(batch).__name__
