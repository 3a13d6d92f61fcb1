"""Figures of the animal-world target: how many animals each look-up unit serves, and what its units read."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from circuitdecomp.target.circuits import best_cos, lookup_units, served_animals, unit_table  # noqa: E402
from circuitdecomp.world.world import World  # noqa: E402


def circuits_figure(model: nn.Module, world: World, active_fraction: float, title: str) -> Figure:
    """Three panels: animals per look-up unit, unit-by-animal activations, best |cos| of read directions."""
    table = unit_table(model, world)
    lookup = lookup_units(table)
    served = served_animals(table, active_fraction)[lookup]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].hist(served.numpy(), bins=min(50, max(5, int(served.max().item()) if served.numel() else 5)), color="C0")
    axes[0].set(
        xlabel=f"animals per look-up unit (>= {active_fraction:.0%} of peak)",
        ylabel="units",
        title=f"{int(lookup.sum())} look-up units, mean {served.mean().item() if served.numel() else float('nan'):.2f}",
    )
    shown = min(64, world.cfg.n_animals)
    favourite = table.fact.argmax(0)
    units = (lookup & (favourite < shown)).nonzero().squeeze(1)  # units whose favourite animal is shown
    if units.numel():
        acts = table.fact[:shown][:, units]
        acts = acts / acts.amax(0).clamp_min(1e-9)
        order = favourite[units].argsort()  # sorted by favourite animal: a clean diagonal means one animal per unit
        axes[1].imshow(acts[:, order].numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    axes[1].set(
        xlabel="look-up unit (sorted by favourite animal)",
        ylabel=f"animal (first {shown})",
        title="activation / unit peak, fact questions",
    )
    w_in = model.blocks[0].mlp.get_submodule("in").weight.detach()
    E = world.geometry.entity_basis
    alive = (table.fact.amax(0) > 0) | (table.attribute.amax(0) > 0)
    if alive.any():
        cos_v = best_cos(w_in[alive], world.animal_directions, E)
        cos_u = best_cos(w_in[alive], world.attribute_directions, E)
        colors = torch.where(lookup[alive], 0, 1).numpy()
        axes[2].scatter(cos_u.numpy(), cos_v.numpy(), c=colors, cmap="coolwarm", s=8)
    axes[2].set(
        xlabel="best |cos| with an attribute u_j",
        ylabel="best |cos| with an animal v_i",
        xlim=(0, 1.02),
        ylim=(0, 1.02),
        title="read directions (entity part of W_in rows); blue = look-up units",
    )
    fig.suptitle(title)
    fig.tight_layout()
    return fig
