"""A world whose ground truth cannot be read: for checking that a target recipe learns without it.

`guarded(world)` returns a copy in which every ground-truth tensor (attribute and kind directions, attribute values
and profiles, house and economy sizes, fact tables, and so everything derived from them: animal directions,
nearest-neighbour geometry) is a `Tripwire`: any operation on its values raises `GroundTruthRead`, naming the
tensor. What stays readable is what any learner of the world sees:

* the token sequences, answers, question types and the train/held-out split (`world.examples`);
* the fixed entity embedding table (`world.entity_embeddings()`): the inputs themselves, which define the
  ground truth and are frozen in the target;
* the context projector (`world.geometry.context_projector()`): the constraint that keeps attention off the
  entity subspace in the single-entity world, named as such in docs/targets.md;
* the config (sizes of the vocabulary's parts).

Reading a tripwire's metadata (shape, dtype, device) is allowed: it reveals sizes only.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten

from circuitdecomp.world.geometry import Geometry
from circuitdecomp.world.world import World

GROUND_TRUTH_FIELDS = ("profiles", "attribute_values", "attribute_scale", "house_sizes", "economy_sizes", "fact_answers")
GROUND_TRUTH_GEOMETRY = ("attribute_directions", "kind_directions")


class GroundTruthRead(RuntimeError):
    """A guarded ground-truth tensor was read."""


_METADATA = {
    Tensor.shape.__get__,
    Tensor.dtype.__get__,
    Tensor.device.__get__,
    Tensor.ndim.__get__,
    Tensor.dim,
    Tensor.size,
    Tensor.requires_grad.__get__,
}  # not __repr__: it prints the values


class Tripwire(Tensor):
    """A tensor whose values raise GroundTruthRead on any torch operation (metadata reads are allowed)."""

    label: str

    @staticmethod
    def wrap(t: Tensor, label: str) -> "Tripwire":
        out = t.as_subclass(Tripwire)
        out.label = label
        return out

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        leaves, _ = tree_flatten((args, kwargs or {}))
        names = sorted({a.label for a in leaves if isinstance(a, Tripwire)}) or ["a ground-truth tensor"]
        raise GroundTruthRead(
            f"{getattr(func, '__name__', func)} read the world's ground truth ({', '.join(names)}); "
            "a ground-truth-free target may use only tokens, answers, the fixed embeddings and the "
            "context projector (circuitdecomp/world/guard.py)"
        )


@dataclass(frozen=True)
class GuardedWorld(World):
    """A World whose ground-truth tensors are tripwires; the entity embedding table stays readable."""

    embeddings: Tensor | None = None

    def entity_embeddings(self) -> Tensor:
        assert self.embeddings is not None
        return self.embeddings


def guarded(world: World) -> GuardedWorld:
    """A copy of `world` in which reading any ground-truth tensor raises GroundTruthRead (see the module docstring)."""
    geometry = Geometry(
        **{
            f.name: Tripwire.wrap(getattr(world.geometry, f.name), f"geometry.{f.name}")
            if f.name in GROUND_TRUTH_GEOMETRY
            else getattr(world.geometry, f.name)
            for f in dataclasses.fields(Geometry)
        }
    )
    fields = {f.name: getattr(world, f.name) for f in dataclasses.fields(World)}
    fields |= {name: Tripwire.wrap(fields[name], name) for name in GROUND_TRUTH_FIELDS}
    return GuardedWorld(**(fields | {"geometry": geometry}), embeddings=world.entity_embeddings().clone())
