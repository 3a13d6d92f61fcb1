"""A start for SPD from the target's own answers: per yes/no question, the direction its MLP reads to decide it.

For each yes/no question token, the mean over the training rows that ask it of d(logit yes - logit no) / d(MLP input)
at the read-out position. It reads the model, its inputs and the vocabulary's layout, no ground truth
(`tests/test_ground_truth_free.py` runs it on a guarded world). `spd_start=attributions` starts the MLP-in's
components there; the features stage scores the directions read directly as a control either way.
"""

import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.world.world import World

MODULE = "blocks.0.mlp.in"


def _mlp_in(model: nn.Module) -> nn.Module:
    return model.blocks[0].mlp.get_submodule("in")


def answer_attributions(model: nn.Module, world: World, n_rows: int = 256) -> Float[Tensor, "n_questions d_model"]:
    """Unit rows: per yes/no question, the mean answer gradient w.r.t. the MLP's input at the read-out position."""
    ex = world.examples  # inputs and the question each asks (its token)
    captured: list[Tensor] = []

    def keep_input(module: nn.Module, args: tuple) -> tuple:
        x = args[0].detach().requires_grad_(True)
        captured.append(x)
        return (x, *args[1:])

    handle = _mlp_in(model).register_forward_pre_hook(keep_input)
    out = []
    try:
        with torch.enable_grad():
            for q in range(world.vocab.n_attribute_questions):  # the yes/no questions come first in the vocabulary
                rows = ((ex.question == q) & ex.is_train).nonzero().flatten()[:n_rows]
                captured.clear()
                logits = model(ex.tokens[rows])[:, -1]
                (logits[:, world.vocab.yes] - logits[:, world.vocab.no]).sum().backward()
                g = captured[0].grad[:, -1].mean(0)
                out.append(g / g.norm())
    finally:
        handle.remove()
    return torch.stack(out)


@torch.no_grad()
def mlp_inputs(model: nn.Module, tokens: Tensor) -> Float[Tensor, "batch d_model"]:
    """The MLP's input at the read-out position."""
    seen: list[Tensor] = []
    handle = _mlp_in(model).register_forward_pre_hook(lambda m, a: seen.append(a[0][:, -1]))
    try:
        model(tokens)
    finally:
        handle.remove()
    return seen[0]


@torch.no_grad()
def start_at(cm: ComponentModel, directions: Float[Tensor, "k d_model"], seed: int, module: str = MODULE) -> None:
    """The module's first d_in components become `directions` (orthonormalised) completed to a basis, ΣUV = W exactly;
    the rest start near 0. Refuses a module with fewer components than its input width."""
    comp = cm.component(module)
    d = directions.shape[1]
    if comp.C < d:
        raise ValueError(f"{module} has C={comp.C} components; the attribution start needs >= {d} (its input width)")
    gen = torch.Generator().manual_seed(seed + 5)
    basis, _ = torch.linalg.qr(torch.cat([directions.T, torch.randn(d, d - directions.shape[0], generator=gen)], dim=1))
    comp.V[:, :d] = basis
    comp.U[:d] = (comp.target_weight() @ basis).T
    comp.V[:, d:] *= 1e-3
    comp.U[d:] *= 1e-3
