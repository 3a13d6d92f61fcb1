"""A decomposable leaf replaced by rank-1 subcomponents: W = sum_c U_c V_c^T (+ the delta W - VU)."""

from dataclasses import dataclass, field

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuitdecomp.decomp.adapters import WeightKind, bias_of, weight_kind, weight_matrix
from circuitdecomp.decomp.config import UnitSide


@dataclass(frozen=True)
class MaskInfo:
    """Masks for one module in one forward pass; leading dims match the module's input positions."""

    mask: Float[Tensor, "*batch C"]
    delta_mask: Float[Tensor, "*batch"] | None = None  # None: the delta component is left out
    route: Tensor | None = None  # bool [*batch]; False -> that position uses the target weights


@dataclass
class PassState:
    """Shared by every decomposed module of one ComponentModel during one forward pass.

    A target pass (`recording`) stores each module's input and output. In a masked pass, a module whose
    input cannot have changed yet (no masked module has run earlier in this pass: the model is a pure
    function of its input) reuses them: no recomputation of x.V or of the frozen layer.
    """

    recording: bool = False
    masks: dict[str, MaskInfo] = field(default_factory=dict)
    dirty: bool = False
    calls: dict[str, int] = field(default_factory=dict)
    inputs: dict[tuple[str, int], Tensor] = field(default_factory=dict)
    outputs: dict[tuple[str, int], Tensor] = field(default_factory=dict)
    acts: dict[tuple[str, int], tuple[int, Tensor]] = field(default_factory=dict)

    def begin(self, recording: bool, masks: dict[str, MaskInfo]) -> None:
        self.recording, self.masks, self.dirty, self.calls = recording, masks, False, {}
        if recording:
            self.inputs, self.outputs, self.acts = {}, {}, {}


class _Twin(nn.Module):
    """A stand-in for a target leaf `base`: attributes it does not define are the base's (bridge code reads them)."""

    def __init__(self, path: str, base: nn.Module, state: PassState) -> None:
        super().__init__()
        self.path, self.base = path, base
        self._state = [state]  # a list, so nn.Module does not register it

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return getattr(self.base, "bias", None)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base"), name)

    def _call_key(self) -> tuple[str, int]:
        """(path, how many times this leaf ran before in this pass): the key of its recorded input and output."""
        calls = self._state[0].calls
        k = calls.get(self.path, 0)
        calls[self.path] = k + 1
        return self.path, k


class FrozenLeaf(_Twin):
    """A leaf that is not decomposed: a masked pass reuses its recorded output while its input cannot have changed.

    So the embedding, and any layer before the first masked module, runs once per step instead of once per
    forward pass (with one stochastic and n layerwise passes, 2 + n times).
    """

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        state = self._state[0]
        key = self._call_key()
        if state.recording:
            y = self.base(x, *args, **kwargs)
            state.outputs[key] = y
            return y
        if not state.dirty and key in state.outputs:
            return state.outputs[key]
        return self.base(x, *args, **kwargs)


class DecomposedModule(_Twin):
    """Stands in for a Linear / Conv1D / Embedding leaf; with no mask it *is* the frozen target leaf."""

    def __init__(self, path: str, base: nn.Module, C: int, state: PassState) -> None:
        super().__init__(path, base, state)
        kind = weight_kind(base)
        if kind is None:
            raise TypeError(f"'{path}' is a {type(base).__name__}; only Linear, Conv1D and Embedding can be decomposed")
        W = weight_matrix(base).detach()
        self.kind, self.C = kind, C
        self.d_out, self.d_in = W.shape
        self.V = nn.Parameter(torch.empty(self.d_in, C, dtype=W.dtype, device=W.device))
        self.U = nn.Parameter(torch.empty(C, self.d_out, dtype=W.dtype, device=W.device))
        self.reset_parameters()
        self.positions: list[int] | None = None  # sequence positions that get masks; None: every position

    def _select_in(self, x: Tensor) -> Tensor:
        """The positions of an input that get masks (token ids [.., S] or vectors [.., S, d]); no sequence: all."""
        seq_dim = -1 if self.kind is WeightKind.embedding else -2
        if self.positions is None or x.dim() < (2 if self.kind is WeightKind.embedding else 3):
            return x
        return x[(slice(None),) * (x.dim() + seq_dim) + (self.positions,)]

    def _select_out(self, y: Tensor) -> Tensor:
        return y if self.positions is None or y.dim() < 3 else y[..., self.positions, :]

    def selected_input(self, key: tuple[str, int]) -> Tensor:
        """The recorded input of call `key` at the masked positions."""
        return self._select_in(self._state[0].inputs[key])

    @torch.no_grad()
    def reset_parameters(self, neurons: bool = False, side: UnitSide = UnitSide.auto) -> None:
        """Fresh random V, U (from torch's global RNG); the faithfulness warm-up then fits them to W.

        `neurons`: component c starts as unit c of the wider side, or of `side` (an MLP-in's hidden unit: its row of W,
        written to that unit; an MLP-out's hidden unit: its column of W), the rest small and random. Units are the
        basis an elementwise nonlinearity privileges; SPD may still rotate, split or merge them.
        """
        self.V.copy_(torch.randn_like(self.V) / self.d_in**0.5)
        self.U.copy_(torch.randn_like(self.U) / self.C**0.5)
        if not neurons:
            return
        W = self.target_weight().detach()
        self.V.mul_(1e-3)
        self.U.mul_(1e-3)
        outputs = self.d_out >= self.d_in if side is UnitSide.auto else side is UnitSide.outputs
        idx = torch.arange(min(self.C, self.d_out if outputs else self.d_in))
        if outputs:  # units are outputs: V_c = W[c] / |W[c]|, U_c = |W[c]| e_c
            norms = W[idx].norm(dim=1).clamp_min(1e-12)  # unit read directions keep x . V_c, the CI input, O(|x|)
            self.V[:, idx] = (W[idx] / norms[:, None]).T
            self.U[idx] = 0.0
            self.U[idx, idx] = norms
        else:  # units are inputs: V_c = e_c, U_c = W[:, c]
            self.V[:, idx] = 0.0
            self.V[idx, idx] = 1.0
            self.U[idx] = W[:, idx].T

    def target_weight(self) -> Float[Tensor, "d_out d_in"]:
        return weight_matrix(self.base)

    def component_weight(self) -> Float[Tensor, "d_out d_in"]:
        return einops.einsum(self.V, self.U, "d_in C, C d_out -> d_out d_in")

    def weight_delta(self) -> Float[Tensor, "d_out d_in"]:
        return self.target_weight() - self.component_weight()

    def component_acts(self, x: Tensor) -> Float[Tensor, "*batch C"]:
        """h = x . V (for an embedding: the rows V[token])."""
        if self.kind is WeightKind.embedding:
            return self.V[x]
        return x @ self.V

    def cached_acts(self, key: tuple[str, int]) -> Tensor:
        """x . V on the recorded input's masked positions, computed once per V (in-place updates bump its version)."""
        state = self._state[0]
        version, acts = state.acts.get(key, (-1, None))
        if version != self.V._version:
            acts = self.component_acts(self.selected_input(key))
            state.acts[key] = (self.V._version, acts)
        return acts

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        state = self._state[0]
        key = self._call_key()
        if state.recording:
            y = self.base(x, *args, **kwargs)
            state.inputs[key], state.outputs[key] = x, y
            return y
        clean = not state.dirty and key in state.outputs
        info = state.masks.get(self.path)
        if info is None:
            return state.outputs[key] if clean else self.base(x, *args, **kwargs)
        acts = self.cached_acts(key) if clean else self.component_acts(self._select_in(x))
        y = state.outputs[key] if clean else self.base(x, *args, **kwargs)
        state.dirty = True
        if self.positions is None or y.dim() < 3:
            return self.masked_output(acts, y, info)
        out = y.clone()  # unmasked positions keep the target's output
        out[..., self.positions, :] = self.masked_output(acts, self._select_out(y), info)
        return out

    def masked_output(self, acts: Tensor, y: Tensor, info: MaskInfo) -> Tensor:
        """(h * m) U + m_delta * (x Delta^T) + b, computed as (h * (m - m_delta)) U + m_delta (y - b) + b.

        y is the frozen layer's output on the same input, so x Delta^T = (y - b) - h U needs no extra matmul.
        """
        b = bias_of(self.base)
        if info.delta_mask is None:
            out = (acts * info.mask) @ self.U
            out = out if b is None else out + b
        else:
            dm = info.delta_mask.unsqueeze(-1)
            y_nob = y if b is None else y - b
            out = torch.addcmul((acts * (info.mask - dm)) @ self.U, dm, y_nob)  # one pass over [.., d_out], not two
            out = out if b is None else out + b
        if info.route is not None:
            out = torch.where(info.route.unsqueeze(-1), out, y)
        return out
