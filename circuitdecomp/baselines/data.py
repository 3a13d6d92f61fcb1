"""The activations the SAEs see and the ground truth they are scored against, both at the read-out position.

SAEs train on read-out residuals of the world's training inputs; every dictionary (SAE, reference, features from
circuits) is scored on one evaluation set (the pipeline's held-out inputs), so all rows of the thesis table share
inputs and metric code.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuitdecomp.baselines.config import ActivationSpace, BaselinesConfig
from circuitdecomp.evaluate.recovery import GroundTruth
from circuitdecomp.evaluate.truth import ground_truth
from circuitdecomp.frozen import check
from circuitdecomp.world.questions import Examples
from circuitdecomp.world.vocab import READOUT_POS
from circuitdecomp.world.world import World


@dataclass(frozen=True)
class ReadoutData:
    """SAE inputs in `basis` coordinates (d_act of them) and the held-out inputs' ground truth in the residual basis."""

    train: Float[Tensor, "n_train d_act"]  # the SAE training pool
    eval: Float[Tensor, "n_eval d_act"]  # the held-out inputs every dictionary is scored on
    basis: Float[Tensor, "d_act d_model"]  # orthonormal rows: coordinates x -> residual x @ basis
    truth: GroundTruth  # per-family directions and true coefficients on the held-out inputs
    eval_examples: Examples  # the inputs behind `eval` and `truth`

    def lift(self, x: Float[Tensor, "n d_act"]) -> Float[Tensor, "n d_model"]:
        """Coordinates -> vectors in the residual stream."""
        return x @ self.basis


@torch.no_grad()
def readout_residual(model: nn.Module, examples: Examples, hook: str, batch_size: int = 4096) -> Float[Tensor, "n d_model"]:
    """The residual at `hook` (a TransformerLens hook name) at the read-out position, for every row of `examples`."""
    out = []
    for s in range(0, len(examples), batch_size):
        _, cache = model.run_with_cache(examples.tokens[s : s + batch_size], names_filter=lambda name: name == hook)
        if hook not in cache:
            _, every = model.run_with_cache(examples.tokens[:1])
            resid = [k for k in every.keys() if "resid" in k]
            raise ValueError(f"baselines.hook={hook!r} is not a hook of this model; residual hooks are {resid}")
        out.append(cache[hook][:, READOUT_POS])
    return torch.cat(out)


def readout_data(world: World, model: nn.Module, cfg: BaselinesConfig, eval_examples: Examples, seed: int) -> ReadoutData:
    """Read-out residuals of the training inputs (the SAE pool) and of `eval_examples`, in the coordinates `cfg.space` picks."""
    ex = world.examples
    train = ex.subset(ex.is_train)
    check(len(eval_examples) > 0, "no evaluation inputs to score on: pass a non-empty eval_examples")
    if 0 < cfg.n_train_inputs < len(train):
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: cfg.n_train_inputs])
    match cfg.space:
        case ActivationSpace.entity:
            basis = world.geometry.entity_basis
        case ActivationSpace.full:
            basis = torch.eye(world.d_model)
    coords = [readout_residual(model, part, cfg.hook) @ basis.T for part in (train, eval_examples)]
    return ReadoutData(coords[0], coords[1], basis, ground_truth(world, eval_examples), eval_examples)


def activation_batches(pool: Float[Tensor, "n d_act"], batch_size: int, seed: int) -> Iterator[Float[Tensor, "batch d_act"]]:
    """Endless batches of rows drawn uniformly (with replacement) from the pool."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield pool[torch.randint(0, pool.shape[0], (batch_size,), generator=gen)]
