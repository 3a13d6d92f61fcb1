"""Diagnostic (no ground truth in the init): SPD on the MLP-in started at the directions the target's answers attribute to.

For each attribute question (a question token of the vocabulary; its inputs are the training rows that ask it), the
gradient of the answer's logit difference (yes - no) at the read-out position with respect to the MLP's input, averaged
over those rows, is the direction the MLP reads to decide that question. The MLP-in components start at those
directions (orthonormalised, then completed to a basis of the residual, ΣUV = W exactly), and SPD trains from there
with the config's decomposition settings, like `scripts/truth_start.py` but with nothing of the world's ground truth.
The directions themselves are the control (`attributions read directly`): their best |cos| with the attributes is
printed before training, and after it they are scored as a dictionary (values = projections of the MLP's input) by the
pipeline's code, into `controls/attributions/recovery/...` of metrics.json, so what SPD adds to them is the difference.

    python scripts/attribution_start.py hydra.run.dir=runs/pipeline/<copy of a target run> target=trained \\
        'decomposition.modules=[{pattern: "blocks.*.mlp.in", C: 128}]' decomposition.output_loss=kl ...
    python scripts/alignment.py runs/pipeline/<same dir>

Ground truth is read only to print the scores (a scoring use).
"""

from pathlib import Path

import torch

from circuitdecomp.cli import hydra_script
from circuitdecomp.config import Config
from circuitdecomp.tracking import Logger

MODULE = "blocks.0.mlp.in"


def attribution_directions(model: torch.nn.Module, world, n_rows: int = 256) -> torch.Tensor:
    """[n_attribute_questions, d_model]: per attribute question, the mean gradient of logit(yes) - logit(no) at the
    read-out position with respect to the MLP-in's input there, over up to `n_rows` of its training rows (unit rows)."""
    ex = world.examples  # inputs and the question each asks (its token): no ground truth
    captured: list[torch.Tensor] = []

    def keep_input(module, args):
        x = args[0].detach().requires_grad_(True)
        captured.append(x)
        return (x, *args[1:])

    handle = model.blocks[0].mlp.get_submodule("in").register_forward_pre_hook(keep_input)
    out = []
    try:
        for q in range(world.vocab.n_attribute_questions):
            rows = ((ex.question == q) & ex.is_train).nonzero().flatten()[:n_rows]  # yes/no questions come first
            captured.clear()
            logits = model(ex.tokens[rows])[:, -1]
            (logits[:, world.vocab.yes] - logits[:, world.vocab.no]).sum().backward()
            grad = captured[0].grad[:, -1]  # [rows, d_model] at the read-out position
            g = grad.mean(0)
            out.append(g / g.norm())
    finally:
        handle.remove()
    return torch.stack(out)


@torch.no_grad()
def score_read_directly(model: torch.nn.Module, world, G: torch.Tensor, n_inputs: int, run_seed: int) -> dict[str, float]:
    """The control: the attribution directions as a dictionary, values = projections of the MLP's input at the read-out
    position, scored by the pipeline's code on the inputs the features stage scores on (a scoring use of ground truth)."""
    from circuitdecomp.evaluate.recovery import Units, score_recovery, to_metrics
    from circuitdecomp.evaluate.truth import ground_truth
    from circuitdecomp.world.sampler import held_out_batch

    held = held_out_batch(world, n_inputs, run_seed)
    seen: list[torch.Tensor] = []
    handle = model.blocks[0].mlp.get_submodule("in").register_forward_pre_hook(lambda m, a: seen.append(a[0][:, -1]))
    try:
        model(held.tokens)
    finally:
        handle.remove()
    result = score_recovery(Units(G, seen[0] @ G.T), ground_truth(world, held), simplicity=False)
    return to_metrics(result, "controls/attributions/recovery")


@hydra_script("attribution_start")
def main(cfg: Config, out_dir: Path, logger: Logger) -> None:
    from circuitdecomp.frozen import ConfigError
    from circuitdecomp.pipeline.decompose import component_model, decompose_target
    from circuitdecomp.runio import update_metrics
    from circuitdecomp.target.model import load_model
    from circuitdecomp.world.world import make_world

    world = make_world(cfg.world, cfg.seed)
    model = load_model(world, cfg.target, cfg.seed, out_dir)
    G = attribution_directions(model, world)  # [n_q, d_model]
    E = world.geometry.entity_basis
    asked = torch.tensor(world.cfg.asked_attributes)
    read = E.T @ (E @ G.T)  # entity part of each direction (scoring only)
    read = read / read.norm(dim=0, keepdim=True).clamp_min(1e-12)
    own = (world.attribute_directions[asked] @ read).diagonal().abs()
    best = (world.attribute_directions @ read).abs().amax(1)
    print(
        f"attributions read directly: |cos| of each question's direction (entity part) with its own u_j: min {own.min():.3f} "
        f"median {own.median():.3f}; best |cos| per attribute min {best.min():.3f} median {best.median():.3f}; "
        f"share of each direction inside the entity span: median {(E @ G.T).norm(dim=0).median():.3f}"
    )
    cm = component_model(model, cfg, world)
    comp = cm.component(MODULE)
    d = G.shape[1]
    if comp.C < d:
        raise ConfigError(f"{MODULE} has C={comp.C} components; the attribution start needs >= {d} (d_model)")
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    basis, _ = torch.linalg.qr(torch.cat([G.T, torch.randn(d, d - G.shape[0], generator=gen)], dim=1))  # [d, d]
    with torch.no_grad():
        W = comp.target_weight()
        comp.V[:, :d] = basis
        comp.U[:d] = (W @ basis).T
        comp.V[:, d:] *= 1e-3
        comp.U[d:] *= 1e-3
    _, metrics = decompose_target(cfg, world, model, out_dir, logger, cm=cm)
    control = score_read_directly(model, world, G, cfg.evaluation.n_inputs, cfg.seed)
    update_metrics(out_dir, control)
    for family in ("animals", "attributes"):
        key = f"controls/attributions/recovery/{family}"
        print(
            f"{key}: one-to-one at |cos| >= 0.9 {control[key + '/one_to_one_frac_cos90']:.3f}, "
            f"coefficient recall {control[key + '/one_to_one_coef_recall']:.3f}"
        )
    for key in sorted(metrics):
        if key.startswith(("decomp/final/", "decomp/ci_l0/", "decomp/faithfulness/components/relative")):
            print(f"{key}: {metrics[key]:.4g}")


if __name__ == "__main__":
    main()
