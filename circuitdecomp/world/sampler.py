"""Batches of the world's inputs with answers, and the true coefficients c_i(x), c'_j(x) at the read-out position."""

from collections.abc import Mapping
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitdecomp.world.question_types import type_id
from circuitdecomp.world.questions import Examples
from circuitdecomp.world.world import World


class Coefficients(NamedTuple):
    """Ground truth at the read-out position: the residual's entity part is sum_i c_i v_i + kinds = sum_j c'_j u_j + kinds."""

    animals: Float[Tensor, "batch n_animals"]  # c_i(x): 1 for the input's animal, else 0
    attributes: Float[Tensor, "batch n_attributes"]  # c'_j(x): the entity's attribute values
    kinds: Float[Tensor, "batch n_kinds"]  # 1 on the house / economy direction for those entities


def true_coefficients(world: World, entity: Int[Tensor, " batch"]) -> Coefficients:
    """c_i(x) and c'_j(x) of inputs whose entity ids are `entity` (the modifier is question information)."""
    n = world.cfg.n_animals
    is_animal = entity < n
    animals = torch.zeros(entity.shape[0], n)
    animals[is_animal, entity[is_animal]] = 1.0
    return Coefficients(animals, world.entity_attribute_values()[entity], world.entity_kind_values()[entity])


def held_out_batch(world: World, n: int, run_seed: int) -> Examples:
    """A fixed evaluation sample: held-out rows first, topped up with training rows (small worlds hold out few); at
    most half the world's inputs, so that the features stage always has other inputs to fit on. Every stage that
    scores on held-out inputs calls this with the run's seed, so they all score on the same inputs."""
    ex = world.examples
    order = torch.randperm(len(ex), generator=torch.Generator().manual_seed(run_seed + 11))
    order = torch.cat([order[~ex.is_train[order]], order[ex.is_train[order]]])
    return ex.subset(order[: min(n, len(ex) // 2)])


class Sampler:
    """Draws training batches with a fixed share of each question type (facts are rare among all inputs).

    `mix` maps registered type names (world/question_types.py) to weights; types it leaves out are not drawn.
    """

    def __init__(self, examples: Examples, mix: Mapping[str, float], seed: int) -> None:
        train = examples.subset(examples.is_train)
        self.pools = {}
        for name, weight in mix.items():
            rows = (train.qtype == type_id(name)).nonzero().squeeze(1)
            if weight > 0 and rows.numel() > 0:  # a world without economies simply has no such pool
                self.pools[name] = (weight, rows)
        if not self.pools:
            raise ValueError(f"no training examples for question mix {dict(mix)}: give some question type a positive weight")
        self.train = train
        self.weights = torch.tensor([w for w, _ in self.pools.values()], dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int, gen: torch.Generator | None = None) -> Examples:
        """A batch of training rows: question types by the mix, rows uniform within a type.

        `gen` replaces the sampler's own stream (a resumable loop keeps the generator in its checkpoint).
        """
        gen = self.gen if gen is None else gen
        kinds = torch.multinomial(self.weights, batch_size, replacement=True, generator=gen)
        picks = []
        for k, (_, rows) in enumerate(self.pools.values()):
            count = int((kinds == k).sum())
            picks.append(rows[torch.randint(0, rows.numel(), (count,), generator=gen)])
        return self.train.subset(torch.cat(picks))
