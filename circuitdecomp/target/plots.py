"""Figures of the animal-world target: how many animals each look-up unit serves, and what its units read."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from torch import nn  # noqa: E402

from circuitdecomp.target.circuits import best_cos, lookup_units, served_animals, unit_table  # noqa: E402
from circuitdecomp.world.world import World  # noqa: E402


def circuits_figure(model: nn.Module, world: World, active_fraction: float, title: str) -> Figure:
    """Three panels: animals per look-up unit, unit-by-animal activations, best |cos| of read directions."""
    table = unit_table(model, world)
    lookup = lookup_units(table)
    served = served_animals(table, active_fraction)[lookup]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), layout="constrained")
    axes[0].hist(served.numpy(), bins=min(50, max(5, int(served.max().item()) if served.numel() else 5)), color="C0")
    mean = served.mean().item() if served.numel() else float("nan")
    axes[0].set(
        xlabel=f"animals that drive the unit to >= {active_fraction:.0%} of its peak",
        ylabel="look-up units",
        title=f"How many animals each look-up unit serves\n({int(lookup.sum())} look-up units, mean {mean:.1f} animals)",
    )
    shown = min(64, world.cfg.n_animals)
    favourite = table.fact.argmax(0)
    units = (lookup & (favourite < shown)).nonzero().squeeze(1)  # units whose favourite animal is shown
    if units.numel():
        acts = table.fact[:shown][:, units]
        acts = acts / acts.amax(0).clamp_min(1e-9)
        order = favourite[units].argsort()  # sorted by favourite animal: a clean diagonal means one animal per unit
        im = axes[1].imshow(
            acts[:, order].numpy(),
            aspect="auto",
            cmap="viridis",
            vmin=min(0.0, float(acts.min())),
            vmax=1,
            interpolation="nearest",
        )
        fig.colorbar(im, ax=axes[1], label="activation / the unit's peak over these animals", shrink=0.9)
        for axis in (axes[1].xaxis, axes[1].yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set(
        xlabel=f"look-up unit (the {units.numel()} whose favourite animal is shown, sorted by it)",
        ylabel=f"animal (first {shown} of {world.cfg.n_animals})",
        title="Which animals drive each look-up unit\n(largest activation over fact questions)",
    )
    w_in = model.blocks[0].mlp.get_submodule("in").weight.detach()
    E = world.geometry.entity_basis
    alive = (table.fact.amax(0) > 0) | (table.attribute.amax(0) > 0)
    if alive.any():
        cos_v = best_cos(w_in[alive], world.animal_directions, E)
        cos_u = best_cos(w_in[alive], world.attribute_directions, E)
        is_lookup = lookup[alive]
        for mask, colour, label in ((is_lookup, "tab:blue", "look-up units"), (~is_lookup, "tab:red", "other alive units")):
            axes[2].scatter(cos_u[mask].numpy(), cos_v[mask].numpy(), c=colour, s=8, label=f"{label} ({int(mask.sum())})")
        axes[2].legend(fontsize=8, loc="upper left")
        lo = max(0.0, float(torch.minimum(cos_u, cos_v).min()) - 0.05)  # zoomed to the data; 1 (a perfect read) in view
        axes[2].set(xlim=(lo, 1.02), ylim=(lo, 1.02))
    axes[2].set(
        xlabel="best |cos| with an attribute direction u_j",
        ylabel="best |cos| with an animal direction v_i",
        title="What each alive unit reads\n(its W_in row, entity part)",
    )
    fig.suptitle(title)
    return fig
