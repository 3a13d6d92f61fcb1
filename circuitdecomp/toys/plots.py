"""Figures for toy decompositions: CI on single-feature inputs, per module."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def ci_heatmap(ci: dict[str, torch.Tensor], title: str = "", live_threshold: float = 0.1) -> Figure:
    """One panel per module: rows = single active input feature, columns = components (live ones first)."""
    fig, axes = plt.subplots(1, len(ci), figsize=(4 * len(ci), 3.4), squeeze=False, layout="constrained")
    for ax, (path, g) in zip(axes[0], ci.items()):
        g = g.flatten(0, -2).float()
        peak = g.max(0).values
        live = (peak > live_threshold).nonzero().flatten()
        rest = (peak <= live_threshold).nonzero().flatten()
        # live components by the feature that turns them on most (one component per feature shows as a diagonal),
        # then the rest, most used first
        order = torch.cat(
            [live[torch.sort(g[:, live].argmax(0), stable=True).indices], rest[g[:, rest].sum(0).argsort(descending=True)]]
        )
        g = g[:, order][:, : max(1, int((peak > 0.01).sum()) + 2)]  # drop the always-off tail
        im = ax.imshow(g.numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set(
            title=path, xlabel="component (live first, grouped by the feature\nthat uses it most)", ylabel="active input feature"
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=axes[0].tolist(), shrink=1.0, label="causal importance\n(0 = ablatable, 1 = needed)")
    fig.suptitle(title)
    return fig


def close_figure(fig: Figure) -> None:
    """Free a figure once it is saved or logged (pyplot keeps every open figure alive)."""
    plt.close(fig)
