"""The features stage's figure: how well a dictionary's directions and values match the ground truth."""

import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator

from circuitdecomp.evaluate.recovery import GroundTruth, RecoveryResult, Units
from circuitdecomp.features.config import Projection

PROJECTION_WORDS = {  # what `features.projection` did to the directions, for the figure's title
    Projection.none: "as the decomposition gives them",
    Projection.data: "projected onto the span of the data",
    Projection.tokens: "projected onto the read-out tokens' embeddings",
}


def recovery_figure(result: RecoveryResult, units: Units, truth: GroundTruth, title: str) -> plt.Figure:
    """Per family: histogram of each true feature's best |cos|, and true vs recovered coefficient for a few features
    (the first whose coefficient varies, each with its best-matching recovered feature; listed in the legend)."""
    fams = result.families
    fig, axes = plt.subplots(2, len(fams), figsize=(5.5 * len(fams), 7.5), squeeze=False, layout="constrained")
    for k, (fam_scores, fam) in enumerate(zip(fams, truth.families)):
        d = fam_scores.full.directions
        best = d.best_cos.abs()
        ax = axes[0, k]
        lo = max(0.0, min(float(best.min()), 0.9) - 0.05)  # zoomed to the data, the 0.9 line always in view
        ax.hist(best.numpy(), bins=30, range=(lo, 1), color="tab:blue")
        ax.axvline(0.9, color="k", ls="--", lw=0.8, label="0.9: counted as recovered")
        ax.set_xlim(lo, 1)
        ax.legend(fontsize=7, loc="best")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{fam.name}: {100 * d.frac_cos90:.0f}% of {len(best)} true features have |cos| ≥ 0.9", fontsize=9)
        ax.set_xlabel("best |cos| of a true feature with any recovered feature", fontsize=9)
        ax.set_ylabel("true features", fontsize=9)
        ax = axes[1, k]
        scored = fam.coefficients.std(0) > 0
        idx = scored.nonzero().flatten()[:6]
        for i in idx.tolist():
            u = int(d.best_unit[i])
            sign = float(torch.sign(d.best_cos[i]))
            ax.scatter(
                fam.coefficients[:, i].numpy(),
                sign * units.values[:, u].numpy(),
                s=4,
                alpha=0.5,
                label=f"#{i} (|cos| {float(best[i]):.2f})",
                zorder=2 + float(best[i]),  # the best-matched feature drawn on top
            )
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()  # zoomed to the points: the diagonal does not widen them
        ax.autoscale(False)
        diag = [min(x0, y0), max(x1, y1)]
        ax.plot(diag, diag, "k--", lw=0.8, label="recovered = true", zorder=4)
        c = fam_scores.full.coefficients
        ax.set_title(
            f"{fam.name}: first {idx.numel()} of {int(scored.sum())} varying features "
            f"(coefficient recall {c.recall:.2f} over all)",
            fontsize=9,
        )
        ax.legend(title=f"{fam.name} feature", fontsize=6, title_fontsize=7, markerscale=2, loc="best")
        ax.set_xlabel("true coefficient of the feature on the input", fontsize=9)
        ax.set_ylabel("value of its best-matching recovered feature\n(sign-corrected)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig
