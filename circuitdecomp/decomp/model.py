"""ComponentModel: any nn.Module with chosen leaves swapped for decomposed twins, plus their CI functions."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuitdecomp.decomp.adapters import WeightKind, find_slots, insert_identity, match_slots, weight_matrix
from circuitdecomp.decomp.ci import CISite, PerComponentMLP, make_ci_function
from circuitdecomp.decomp.components import DecomposedModule, FrozenLeaf, MaskInfo, PassState
from circuitdecomp.decomp.config import DecompositionConfig, InitKind, ModuleSpec


@dataclass(frozen=True)
class CausalImportance:
    """Per module: `lower` in [0, 1] drives the masks; `upper` (leaky above 1) feeds the minimality loss."""

    lower: dict[str, Float[Tensor, "*batch C"]]
    upper: dict[str, Float[Tensor, "*batch C"]]


def default_output(out: Any) -> Tensor:
    """A model's output tensor: the tensor itself, or `.logits` of a HF-style output object."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    raise TypeError(f"model returned {type(out).__name__}; pass output_fn to pick the tensor to reconstruct")


def _key(path: str) -> str:
    return path.replace(".", "::")  # ModuleDict keys may not contain dots


class ComponentModel(nn.Module):
    """Wraps a frozen target; `forward(batch, masks)` runs it with masked components substituted."""

    def __init__(self, target: nn.Module, cfg: DecompositionConfig, output_fn: Callable[[Any], Tensor] = default_output) -> None:
        super().__init__()
        if not cfg.modules:
            raise ValueError("decomposition.modules is empty: give at least one {pattern, C}")
        target.eval()  # masked passes reuse cached activations: the target must be deterministic
        for path in cfg.identity_before:
            insert_identity(target, path)
        target.requires_grad_(False)
        self.target = target
        self.output_fn = output_fn
        self.leak = cfg.leak
        self.init_neurons = cfg.init is InitKind.neurons
        self.state = PassState()
        slots = find_slots(target)
        matched = match_slots(slots, [spec.pattern for spec in cfg.modules])
        C_of: dict[str, int] = {}
        spec_of: dict[str, ModuleSpec] = {}
        for spec in cfg.modules:  # later patterns override earlier ones, like config overrides
            for path in matched[spec.pattern]:
                C_of[path] = spec.C or math.ceil(spec.C_factor * max(weight_matrix(slots[path].get()).shape))
                spec_of[path] = spec
        self.paths = [p for p in slots if p in C_of]  # model order
        self.unit_sides = {p: spec_of[p].units for p in self.paths}
        self.components = nn.ModuleDict()
        self.ci_fns = nn.ModuleDict()
        self._slots = {p: slots[p] for p in self.paths}
        self._originals: dict[str, nn.Module] = {}
        for path in self.paths:
            base = slots[path].get()
            comp = DecomposedModule(path, base, C_of[path], self.state)
            if self.init_neurons:  # (random init already happened: the RNG stream of random runs is unchanged)
                comp.reset_parameters(neurons=True, side=spec_of[path].units)
            comp.positions = None if cfg.positions is None or spec_of[path].all_positions else list(cfg.positions)
            self.components[_key(path)] = comp
            d_in = comp.C if comp.kind is WeightKind.embedding else comp.d_in
            self.ci_fns[_key(path)] = make_ci_function(cfg.ci_fn, CISite(C_of[path], d_in), cfg)
            self._originals[path] = base
        # every other leaf is recorded too: masked passes reuse what runs before their first masked module
        self._frozen = {path: FrozenLeaf(path, slot.get(), self.state) for path, slot in slots.items() if path not in C_of}
        self._slots.update({path: slots[path] for path in self._frozen})
        self._originals.update({path: leaf.base for path, leaf in self._frozen.items()})
        self.attach()

    def component(self, path: str) -> DecomposedModule:
        return self.components[_key(path)]

    def attach(self) -> None:
        """Put the decomposed twins (and the recording twins of the other leaves) into the target (done at construction)."""
        for path in self.paths:
            self._slots[path].put(self.component(path))
        for path, leaf in self._frozen.items():
            self._slots[path].put(leaf)

    def detach_components(self) -> None:
        """Give the target back its original modules (undo the swap)."""
        for path, original in self._originals.items():
            self._slots[path].put(original)

    def named_trainables(self) -> dict[str, nn.Parameter]:
        """Everything SPD trains, by stable name: `<path>/V`, `<path>/U`, `<path>/ci/<param>`."""
        out: dict[str, nn.Parameter] = {}
        for path in self.paths:
            out[f"{path}/V"], out[f"{path}/U"] = self.component(path).V, self.component(path).U
            out.update({f"{path}/ci/{n}": p for n, p in self.ci_fns[_key(path)].named_parameters()})
        return out

    def reset_parameters(self, seed: int) -> None:
        """Redraw every component and CI-function parameter from `seed` (a restart)."""
        torch.manual_seed(seed)
        for path in self.paths:
            self.component(path).reset_parameters(neurons=self.init_neurons, side=self.unit_sides[path])
            self.ci_fns[_key(path)].reset_parameters()

    @torch.no_grad()
    def init_ci_from_data(self, batch: Any) -> None:
        """Per-component CI MLPs start with kinks at quantiles of x . V_c on `batch` (PerComponentMLP.init_from_acts)."""
        self.run_target(batch)
        for path in self.paths:
            fn = self.ci_fns[_key(path)]
            if isinstance(fn, PerComponentMLP):
                acts = self.component(path).cached_acts((path, 0))
                fn.init_from_acts(acts.reshape(-1, acts.shape[-1]))

    def component_parameters(self) -> list[nn.Parameter]:
        return [p for path in self.paths for p in (self.component(path).V, self.component(path).U)]

    def run_target(self, batch: Any) -> Tensor:
        """Target forward (no masks); records every decomposed module's input and output for this batch."""
        self.state.begin(recording=True, masks={})
        with torch.no_grad():
            out = self.output_fn(self.target(batch))
        self.state.recording = False
        return out

    def forward(self, batch: Any, masks: dict[str, MaskInfo]) -> Tensor:
        """Masked forward on the batch last given to `run_target`."""
        unknown = set(masks) - set(self.paths)
        if unknown:
            raise KeyError(f"masks for unknown modules {sorted(unknown)}; decomposed: {self.paths}")
        self.state.begin(recording=False, masks=masks)
        return self.output_fn(self.target(batch))

    def causal_importance(self) -> CausalImportance:
        """CI of every component on the batch last given to `run_target` (call index 0 of each module)."""
        lower, upper = {}, {}
        for path in self.paths:
            comp = self.component(path)
            key = (path, 0)
            if key not in self.state.inputs:
                raise RuntimeError(f"'{path}' did not run in the last target pass; is it used by the model's forward?")
            acts = comp.cached_acts(key)
            x = comp.selected_input(key)
            ci_in = acts if comp.kind is WeightKind.embedding else x
            lower[path], upper[path] = self.ci_fns[_key(path)].importance(acts, ci_in, self.leak)
        return CausalImportance(lower, upper)

    def weight_deltas(self) -> dict[str, Float[Tensor, "d_out d_in"]]:
        return {path: self.component(path).weight_delta() for path in self.paths}
