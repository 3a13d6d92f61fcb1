"""Where decomposable weights live: plain modules, HF Conv1D, and TransformerLens bridges.

Everything that knows about TransformerLens internals (`_original_component`, GeneralizedComponent)
is in this file, so a TL upgrade touches one place. TL itself is never imported here: bridges are
recognised by their public `original_component` / `set_original_component` methods.
"""

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn


class WeightKind(str, Enum):
    linear = "linear"  # weight [d_out, d_in]
    conv1d = "conv1d"  # HF GPT-2 Conv1D: weight [d_in, d_out]
    embedding = "embedding"  # weight [vocab, d]; the input is token ids


def weight_kind(module: nn.Module) -> WeightKind | None:
    """The kind of a decomposable leaf, or None for any other module."""
    if isinstance(module, nn.Linear):
        return WeightKind.linear
    if isinstance(module, nn.Embedding):
        return WeightKind.embedding
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers.pytorch_utils.Conv1D
        return WeightKind.conv1d
    return None


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The leaf's weight as W [d_out, d_in], whatever its storage layout."""
    match weight_kind(module):
        case WeightKind.linear:
            return module.weight
        case WeightKind.conv1d | WeightKind.embedding:
            return module.weight.T
    raise TypeError(f"{type(module).__name__} has no decomposable weight")


def bias_of(module: nn.Module) -> torch.Tensor | None:
    """The leaf's bias (kept, never decomposed), or None."""
    return None if weight_kind(module) is WeightKind.embedding else module.bias


def is_bridge(module: nn.Module) -> bool:
    """A TransformerLens bridge component: wraps the real module and can swap it."""
    return hasattr(module, "set_original_component") and hasattr(module, "original_component")


class PreIdentity(nn.Module):
    """`inner(identity(x))` with a fixed identity Linear: the paper's "+ID" check on any model."""

    def __init__(self, inner: nn.Module, d: int) -> None:
        super().__init__()
        self.pre_identity = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.pre_identity.weight.copy_(torch.eye(d))
        self.pre_identity.requires_grad_(False)
        self.inner = inner

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.inner(self.pre_identity(x), *args, **kwargs)

    def __getattr__(self, name: str):
        # Bridge code reads .weight/.bias/in_features of what it wraps.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


@dataclass(frozen=True)
class Slot:
    """A decomposable leaf found at `path`, and how to put another module in its place."""

    path: str
    get: Callable[[], nn.Module]
    put: Callable[[nn.Module], None]


def _setter(parent: nn.Module, name: str) -> Callable[[nn.Module], None]:
    return lambda new: setattr(parent, name, new)


def find_slots(model: nn.Module) -> dict[str, Slot]:
    """Every decomposable leaf of `model` by its public path (bridge internals hidden)."""
    slots: dict[str, Slot] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if "_original_component" in path or path.endswith(".inner") or path in slots:
            continue
        if is_bridge(module):
            held = module.original_component
            if isinstance(held, PreIdentity):
                slots[path] = Slot(path, lambda h=held: h.inner, _setter(held, "inner"))
                slots[f"{path}.pre_identity"] = Slot(
                    f"{path}.pre_identity", lambda h=held: h.pre_identity, _setter(held, "pre_identity")
                )
            elif weight_kind(held) is not None:
                slots[path] = Slot(path, lambda m=module: m.original_component, module.set_original_component)
            continue
        if isinstance(module, PreIdentity):
            slots[path] = Slot(path, lambda m=module: m.inner, _setter(module, "inner"))
            continue
        if weight_kind(module) is not None:
            parent_path, _, name = path.rpartition(".")
            slots[path] = Slot(path, lambda m=module: m, _setter(model.get_submodule(parent_path), name))
    return slots


def match_slots(slots: dict[str, Slot], patterns: list[str]) -> dict[str, list[str]]:
    """{pattern: matched paths}; a pattern matching nothing is an error that lists what exists."""
    matched = {p: [path for path in slots if fnmatch.fnmatchcase(path, p)] for p in patterns}
    empty = [p for p, paths in matched.items() if not paths]
    if empty:
        shown = ", ".join(list(slots)[:30]) + (" ..." if len(slots) > 30 else "")
        raise ValueError(f"module pattern(s) {empty} match no decomposable module; available: {shown}")
    return matched


def insert_identity(model: nn.Module, path: str) -> None:
    """Put a fixed identity Linear in front of the leaf at `path` (named `<path>.pre_identity`)."""
    slots = find_slots(model)
    if path not in slots:
        raise ValueError(f"identity_before: no decomposable module at '{path}'; available: {', '.join(slots)}")
    leaf = slots[path].get()
    W = weight_matrix(leaf)
    if weight_kind(leaf) is WeightKind.embedding:
        raise ValueError(f"identity_before: '{path}' is an embedding (its input is token ids, not a vector)")
    slots[path].put(PreIdentity(leaf, W.shape[1]))
