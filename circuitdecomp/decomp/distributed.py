"""Data-parallel SPD over several processes (torchrun; plain torch.distributed, NCCL on GPU, gloo on CPU).

Every rank draws the same global batch and works on its own slice of dim 0; gradients and logged losses are
averaged over ranks, so every rank takes the same optimiser step. The random mask sources are drawn for the
whole global batch on every rank (each rank keeps its rows), so N processes follow the one-process run with
the same global batch exactly, up to float summation order. That costs N times the (elementwise, cheap)
random draws. Rank 0 alone writes checkpoints and logs (the logged losses are global means; the logged CI L0
is rank 0's rows). Decomposed modules must see batch-first inputs, as the slicing is along dim 0.

Not batch-separable, so refused with several processes: the frequency penalty (`importance_beta > 0`) and
restarts (their selection compares per-rank losses).
"""

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from circuitdecomp.decomp import losses as L
from circuitdecomp.decomp.components import MaskInfo
from circuitdecomp.decomp.config import DecompositionConfig, MaskSampling, OutputLoss


@dataclass(frozen=True)
class Shard:
    """This process's place in the process group: rank `rank` of `world`."""

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_config(self, cfg: DecompositionConfig) -> None:
        """Refuse settings whose result would depend on how the batch is split."""
        if cfg.importance_beta != 0 or cfg.restarts != 1:
            raise ValueError(
                f"decomposition.importance_beta={cfg.importance_beta} and restarts={cfg.restarts} are not "
                f"supported with {self.world} processes; set importance_beta=0 and restarts=1, or run one process"
            )

    def local(self, batch: Any) -> Any:
        """This rank's rows (dim 0) of a global batch: a tensor, or a tuple / list / dict of tensors."""
        if isinstance(batch, Tensor):
            n = batch.shape[0]
            if n % self.world:
                raise ValueError(
                    f"the batch has {n} rows along dim 0, not divisible by {self.world} processes; "
                    f"pass a global batch size that is a multiple of {self.world}"
                )
            k = n // self.world
            return batch[self.rank * k : (self.rank + 1) * k]
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.local(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self.local(v) for k, v in batch.items()}
        raise TypeError(f"cannot split a {type(batch).__name__} batch over processes; yield tensors, tuples or dicts of them")

    def pad(self, t: Tensor) -> Tensor:
        """The global-batch tensor holding `t` at this rank's rows and zeros elsewhere (gradients reach `t`)."""
        before = t.new_zeros((self.rank * t.shape[0], *t.shape[1:]))
        after = t.new_zeros(((self.world - 1 - self.rank) * t.shape[0], *t.shape[1:]))
        return torch.cat([before, t, after])

    def take(self, t: Tensor) -> Tensor:
        """This rank's rows of a global-batch tensor."""
        k = t.shape[0] // self.world
        return t[self.rank * k : (self.rank + 1) * k]

    def sample_masks(
        self, ci_lower: dict[str, Tensor], sampling: MaskSampling, use_delta: bool, generator: torch.Generator | None = None
    ) -> dict[str, MaskInfo]:
        """`losses.sample_masks` for this rank's rows, with the random draws of the whole global batch."""
        full = L.sample_masks({p: self.pad(g) for p, g in ci_lower.items()}, sampling, use_delta, generator)
        return {
            p: MaskInfo(self.take(m.mask), None if m.delta_mask is None else self.take(m.delta_mask)) for p, m in full.items()
        }

    def subset_recon_loss(
        self,
        run: L.Run,
        target_out: Tensor,
        masks: list[dict[str, MaskInfo]],
        kind: OutputLoss,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`losses.subset_recon_loss` with the module subsets drawn for the whole global batch."""
        routed = []
        for m in masks:
            full = L.route_subsets({p: MaskInfo(self.pad(i.mask.detach())) for p, i in m.items()}, generator)
            routed.append({p: MaskInfo(i.mask, i.delta_mask, route=self.take(full[p].route)) for p, i in m.items()})
        return L.stochastic_recon_loss(run, target_out, routed, kind)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over ranks (one flat all-reduce)."""
        grads = [p.grad for p in params if p.grad is not None]  # the same set on every rank: same graph
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def average_losses(self, total: Tensor, terms: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss values (detached) averaged over ranks: what the one-process run would log."""
        flat = torch.stack([total.detach(), *[v.detach() for v in terms.values()]])
        dist.all_reduce(flat)
        flat /= self.world
        return flat[0], dict(zip(terms, flat[1:]))

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a stop signal seen by one rank stops all)."""
        t = torch.tensor([float(flag)], device=_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def from_main(self, obj: Any) -> Any:
        """Rank 0's value of a small picklable object, on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast(self, tensors: Iterable[Tensor]) -> None:
        """Overwrite every tensor with rank 0's copy."""
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def current_shard() -> Shard | None:
    """The Shard of this process when it belongs to a process group of two or more ranks, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return Shard(dist.get_rank(), dist.get_world_size())


@contextlib.contextmanager
def process_group(timeout_s: float = 600) -> Iterator[Shard | None]:
    """Join torchrun's process group for the duration (NCCL on GPU, gloo on CPU); plain runs yield None.

    Ranks other than 0 switch off progress bars and log only warnings, so the console shows one run.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        yield current_shard()
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))  # env:// (torchrun sets the variables)
    try:
        shard = current_shard()
        if shard is not None and not shard.is_main:
            os.environ["TQDM_DISABLE"] = "1"
            logging.getLogger().setLevel(logging.WARNING)
        yield shard
    finally:
        dist.destroy_process_group()
