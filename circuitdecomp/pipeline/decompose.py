"""The decomposition stage of the animal world: SPD on the target through the generic engine, then its checks.

Everything animal-specific stays here (data, read-out position, question types); `circuitdecomp/decomp/` only
sees a model, a batch sampler and an output function.
"""

import copy
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from circuitdecomp.config import Config, SpdStart
from circuitdecomp.decomp import engine
from circuitdecomp.decomp.components import MaskInfo
from circuitdecomp.decomp.losses import ci_masks, rounded_ci_masks_ste
from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.decomp.train import ci_l0
from circuitdecomp.pipeline.attributions import MODULE as ATTRIBUTED
from circuitdecomp.pipeline.attributions import answer_attributions, start_at
from circuitdecomp.runio import Metrics, save_figure, update_metrics
from circuitdecomp.tracking import Logger
from circuitdecomp.world.question_types import NAMES
from circuitdecomp.world.questions import Examples
from circuitdecomp.world.sampler import Sampler, held_out_batch
from circuitdecomp.world.world import World

log = logging.getLogger(__name__)


class AnswerLogits:
    """The outputs SPD must reproduce: the answer tokens' logits at the read-out (last) position.

    Other positions answer nothing, and no question's answer is a non-answer token: their logits are not the
    model's behaviour on this data (reproducing them made every unembedding row causally important on every input).
    The decomposed copy's unembedding computes the answer rows only (`decomposition_view`); `answers_start` maps
    answer token ids to its outputs.
    """

    def __init__(self, answers_start: int):
        self.answers_start = answers_start

    def __call__(self, out: Float[Tensor, "batch seq n_answers"]) -> Float[Tensor, "batch n_answers"]:
        return out[:, -1]


def component_model(model: nn.Module, cfg: Config, world: World) -> ComponentModel:
    """A copy of the target reduced to what it must reproduce (`decomposition_view`), wrapped for SPD; components
    initialised from the decomposition seed. `model` itself is left as it was."""
    view = decomposition_view(model, world.vocab.answers_start)
    seed = engine.resolve_seed(cfg.decomposition, cfg.seed)
    return engine.component_model(view, cfg.decomposition, seed, AnswerLogits(world.vocab.answers_start))


def decomposition_view(model: nn.Module, answers_start: int) -> nn.Module:
    """A copy of the target that computes the answer logits at the read-out position, exactly, and nothing else.

    * After the last attention layer nothing moves between positions: the last block's MLP and the unembedding
      run on the read-out (last) position only (forward pre-hooks), which skips 2/3 of their work on three-token
      questions in every pass, target and masked.
    * The unembedding keeps its answer rows only (every answer is one of them; the rest is not behaviour on this
      data), so its components live in the answer space (C ~ d_model instead of ~ d_vocab) and a masked pass
      writes n_answers logits instead of d_vocab.
    `tests/test_target.py` checks the view's logits against the full forward's.
    """
    view = copy.deepcopy(model)
    view.blocks[-1].mlp.register_forward_pre_hook(_last_position)
    view.unembed.register_forward_pre_hook(_last_position)
    full = view.unembed.original_component
    answers = nn.Linear(full.in_features, full.out_features - answers_start, bias=full.bias is not None)
    with torch.no_grad():
        answers.weight.copy_(full.weight[answers_start:])
        if full.bias is not None:
            answers.bias.copy_(full.bias[answers_start:])
    view.unembed.set_original_component(answers)
    return view


def _last_position(module: nn.Module, args: tuple) -> tuple:
    # contiguous: a strided [batch, 1, d] slice sends every linear down torch.matmul's batched path, one weight
    # copy per example (2.4x slower on CPU; profile 2026-12-07)
    return (args[0][:, -1:].contiguous(), *args[1:])


@torch.no_grad()
def rounded_ci_masks(cm: ComponentModel, delta: bool) -> dict[str, MaskInfo]:
    """Masks = CI rounded to {0, 1} (the decomposition's claim of what each input needs), delta on or off."""
    return rounded_ci_masks_ste(cm.causal_importance().lower, delta)  # the training term's cut (no grad here)


@torch.no_grad()
def faithfulness_metrics(cm: ComponentModel, examples: Examples) -> Metrics:
    """Accuracy of the masked model (rounded CI) relative to the target's, two ways, and with masks = CI unrounded.

    * `components`: every decomposed matrix is its components ΣUV masked by rounded CI, nothing else (also per
      question type: where the components fall short).
    * `with_remainder`: the same masks plus the remainder W - ΣUV of every decomposed matrix, always on (the delta
      component with mask 1), whether or not the decomposition trains a delta (`use_delta`). With the remainder, a
      decomposition whose components do not sum to W is judged with what it leaves out put back in (with every
      component on it is the target exactly). Without a trained delta the remainder is not asked to mean anything:
      read this score beside `decomp/weight_share_outside/<path>` (and `delta_share`); a good score with a large
      share outside says the remainder, not the components, does the work.
    * `ci_masks`: masks = CI itself, components only; what rounding costs is the gap to `components`.
    """
    answer = examples.answer - cm.output_fn.answers_start  # outputs are answer logits (AnswerLogits)
    target = cm.run_target(examples.tokens)
    target_acc = (target.argmax(-1) == answer).float().mean().item()
    out: Metrics = {}
    for remainder in (False, True):
        cm.run_target(examples.tokens)
        masked = cm(examples.tokens, rounded_ci_masks(cm, remainder))  # delta on = the remainder W - ΣUV at mask 1
        acc = (masked.argmax(-1) == answer).float().mean().item()
        name = "with_remainder" if remainder else "components"
        out[f"decomp/faithfulness/{name}/accuracy"] = acc
        out[f"decomp/faithfulness/{name}/relative_accuracy"] = acc / max(target_acc, 1e-12)
        out[f"decomp/faithfulness/{name}/agreement"] = (masked.argmax(-1) == target.argmax(-1)).float().mean().item()
        if not remainder:  # where the components fall short, by question type
            right = masked.argmax(-1) == answer
            for qtype, qname in enumerate(NAMES):
                rows = examples.qtype == qtype
                if rows.any():
                    out[f"decomp/faithfulness/{name}/accuracy/{qname}"] = right[rows].float().mean().item()
    cm.run_target(examples.tokens)  # masks = CI itself: what rounding costs is the gap to the rounded score above
    soft = cm(examples.tokens, ci_masks(cm.causal_importance().lower, False))
    out["decomp/faithfulness/ci_masks/relative_accuracy"] = (soft.argmax(-1) == answer).float().mean().item() / max(
        target_acc, 1e-12
    )
    out["decomp/faithfulness/target_accuracy"] = target_acc
    return out


@torch.no_grad()
def weight_share_outside(cm: ComponentModel) -> Metrics:
    """Per decomposed matrix (embeddings included): ||W - ΣUV||_F / ||W||_F, the share of the weights the components
    leave out, whatever the data. W is the decomposed copy's (`decomposition_view`: the unembedding's answer rows).
    A matrix that is exactly zero (the planted target's W_Q, W_K: uniform attention) has no share: it is left out,
    and `decomp/weight_outside_norm/<module>` gives ||ΣUV||_F for it instead."""
    out: Metrics = {}
    for path in cm.paths:
        comp = cm.component(path)
        w = comp.target_weight().norm()
        if w == 0:
            out[f"decomp/weight_outside_norm/{path}"] = comp.weight_delta().norm().item()
            continue
        out[f"decomp/weight_share_outside/{path}"] = (comp.weight_delta().norm() / w).item()
    return out


@torch.no_grad()
def delta_share(cm: ComponentModel, tokens: Int[Tensor, "batch seq"]) -> Metrics:
    """Per module: ||x (W - ΣUV)|| / max(||x W||, ||x ΣUV||) over the masked positions: how much of the action the delta
    carries (1 for a matrix whose target action is nil but whose components act: all of their action is spurious)."""
    cm.run_target(tokens)
    out: Metrics = {}
    for path in cm.paths:
        comp = cm.component(path)
        if comp.kind.value == "embedding":
            continue  # an embedding's input is token ids: its delta is the rows' residual (weight_share_outside)
        x = comp.selected_input((path, 0))
        full = x @ comp.target_weight().T
        rest = x @ comp.weight_delta().T
        out[f"decomp/delta_share/{path}"] = (rest.norm() / torch.max(full.norm(), (full - rest).norm()).clamp_min(1e-12)).item()
    return out


@torch.no_grad()
def ci_by_question(cm: ComponentModel, examples: Examples) -> dict[str, Float[Tensor, "n_qtypes C"]]:
    """Mean CI of each component per question type (rows in registry order); the largest over masked positions."""
    cm.run_target(examples.tokens)
    ci = cm.causal_importance().lower
    out = {}
    for path, g in ci.items():
        g = g.amax(1) if g.dim() == 3 else g
        rows = [
            g[examples.qtype == q].mean(0) if bool((examples.qtype == q).any()) else torch.zeros(g.shape[-1])
            for q in range(len(NAMES))
        ]
        out[path] = torch.stack(rows)
    return out


def ci_question_figure(by_q: dict[str, Tensor], live: dict[str, Tensor], title: str) -> plt.Figure:
    """Heat-map per module: question types x live components, each column scaled to its maximum (a look-up
    component is important for one animal only, so its mean is small; the scaling shows which questions use it).
    Columns are sorted by the question type they serve most (white lines between the groups); each panel's title
    gives the range of the column maxima, the absolute mean CI that 1 stands for."""
    paths = [p for p in by_q if bool(live[p].any())] or list(by_q)
    fig, axes = plt.subplots(len(paths), 1, figsize=(12, 1.6 + 1.1 * len(paths)), squeeze=False, layout="constrained")
    for ax, path in zip(axes[:, 0], paths):
        m = by_q[path]
        idx = live[path].nonzero().flatten()
        if idx.numel() == 0:
            idx = torch.arange(min(m.shape[1], 1))
        peak = m[:, idx].max(0).values
        sub = m[:, idx] / peak.clamp_min(1e-12)
        order = np.lexsort((-sub.max(0).values.numpy(), sub.argmax(0).numpy()))
        im = ax.imshow(sub[:, order].numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        group = sub.argmax(0).numpy()[order]
        for x in np.flatnonzero(np.diff(group)):  # boundaries between the question-type groups
            ax.axvline(x + 0.5, color="white", lw=1)
        ax.set_yticks(range(len(NAMES)), NAMES, fontsize=7)
        ax.set_title(
            f"{path}: {idx.numel()} live components; column maxima (mean CI) {float(peak.min()):.2g} to {float(peak.max()):.2g}",
            fontsize=9,
        )
        ax.set_xticks([])
    axes[-1, 0].set_xlabel("live components, grouped by the question type they serve most", fontsize=9)
    bar = fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=min(1.0, 3 / len(paths)), aspect=25, pad=0.01)
    bar.set_label("mean CI / the column's maximum\n(each column scaled separately)", fontsize=9)
    fig.suptitle(
        f"{title}\nmean CI per question type (largest over the masked positions), each column divided by its maximum",
        fontsize=10,
    )
    return fig


def decompose_target(
    cfg: Config, world: World, model: nn.Module, out_dir: Path, logger: Logger, cm: ComponentModel | None = None
) -> tuple[ComponentModel, Metrics]:
    """SPD on the world's target (resumes from out_dir's checkpoints); saves decomposition + checks + CI figure.

    `cm`: a component model built by `component_model` whose components the caller has set (a diagnostic start,
    e.g. scripts/truth_start.py); None builds it from `decomposition.init`, then applies `spd_start`.
    """
    out_dir = Path(out_dir)
    d = cfg.decomposition
    seed = engine.resolve_seed(d, cfg.seed)
    if cm is None:
        cm = component_model(model, cfg, world)
        if cfg.spd_start is SpdStart.attributions:  # no ground truth: the target's own answer gradients
            start_at(cm, answer_attributions(model, world), seed)
            log.info("spd_start=attributions: %s starts at the answer gradients of each yes/no question", ATTRIBUTED)
    mix = dict(cfg.decompose_mix)
    sampler = Sampler(world.examples, mix, seed)
    held = held_out_batch(world, cfg.evaluation.n_inputs, cfg.seed)

    def sample(gen: torch.Generator) -> Tensor:
        return sampler.sample(d.batch_size, gen).tokens

    def eval_fn(m: ComponentModel, step: int) -> Metrics:
        m.run_target(held.tokens)
        l0 = ci_l0(m.causal_importance().lower, d.ci_alive_threshold)  # per masked position
        return {f"decomp/ci_l0/{p}": v for p, v in l0.items()} | faithfulness_metrics(m, held)

    metrics: Metrics = {}
    result = engine.fit(
        cm, sample, d, seed, out_dir=out_dir, logger=logger, eval_fn=eval_fn, log_every=cfg.tracking.log_every, name=cfg.name
    )
    if result is not None:  # None: finished earlier and loaded (the checks below are redone)
        metrics |= {f"decomp/final/{k}": v for k, v in result.final_losses.items()}
        metrics["decomp/ms_per_step"] = result.ms_per_step
    metrics |= eval_fn(cm, d.steps) | delta_share(cm, held.tokens) | weight_share_outside(cm)
    cm.run_target(held.tokens)
    live = {p: g.flatten(0, -2).amax(0) > d.ci_alive_threshold for p, g in cm.causal_importance().lower.items()}
    metrics |= {f"decomp/n_live/{p}": int(on.sum()) for p, on in live.items()}  # CI above threshold on some input
    by_q = ci_by_question(cm, held)
    fig = ci_question_figure(by_q, live, "Which question types use each live SPD component (held-out questions)")
    save_figure(out_dir, "ci_by_question", fig)
    logger.log_figure("decomp/ci_by_question", fig)
    plt.close(fig)
    update_metrics(out_dir, metrics)
    logger.log(metrics)
    return cm, metrics
