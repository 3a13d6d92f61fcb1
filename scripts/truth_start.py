"""Diagnostic (uses ground truth in the decomposition's init): does SPD's objective keep the attribute basis?

Starts the MLP-in components of a finished target at the world's entity basis (attribute and kind directions) plus
its context basis, exactly (ΣUV = W), trains SPD from there with the config's decomposition settings, and writes
`decomposition.safetensors`; the pipeline's features stage then scores it like any other:

    python scripts/truth_start.py hydra.run.dir=runs/pipeline/<copy of a target run> target=trained \\
        'decomposition.modules=[{pattern: "blocks.*.mlp.in", C: 80}]' decomposition.output_loss=kl ...
    python scripts/pipeline.py hydra.run.dir=<same dir> <same overrides> 'stages=[target,decompose,features]'

If the features stay on the attributes and the losses end below a random start's, the objective identifies the
attribute basis and a random start fails by optimisation; if the components leave it, the objective does not.
Ground truth here is part of the *diagnostic*, never of a reported decomposition (docs/targets.md).

`TRUTH_START_TILT=<eps>` (environment) starts instead at a random rotation of the entity basis, Q = qr(I + eps G)
with G Gaussian / sqrt(d_entity), to ask whether SPD rotates back (a basin) or stays where it starts (flat).
"""

import os
from pathlib import Path

import torch

from circuitdecomp.cli import hydra_script
from circuitdecomp.config import Config
from circuitdecomp.tracking import Logger

MODULE = "blocks.0.mlp.in"


@hydra_script("truth_start")
def main(cfg: Config, out_dir: Path, logger: Logger) -> None:
    from circuitdecomp.frozen import ConfigError
    from circuitdecomp.pipeline.decompose import component_model, decompose_target
    from circuitdecomp.target.model import load_model
    from circuitdecomp.world.world import make_world

    world = make_world(cfg.world, cfg.seed)
    model = load_model(world, cfg.target, cfg.seed, out_dir)
    cm = component_model(model, cfg, world)
    comp = cm.component(MODULE)
    entity = world.geometry.entity_basis
    tilt = float(os.environ.get("TRUTH_START_TILT", "0"))
    if tilt:
        n = len(entity)
        gen = torch.Generator().manual_seed(cfg.seed + 5)
        q, _ = torch.linalg.qr(torch.eye(n) + tilt * torch.randn(n, n, generator=gen) / n**0.5)
        entity = q.T @ entity
        start = (world.attribute_directions @ entity[: world.cfg.n_attributes].T).abs().diagonal()
        print(f"tilted start (TRUTH_START_TILT={tilt}): |cos| with u_j min {start.min():.3f}, mean {start.mean():.3f}")
    basis = torch.cat([entity, world.geometry.context_basis])  # [d_model, d_model], orthonormal rows
    if comp.C < basis.shape[0]:
        raise ConfigError(f"{MODULE} has C={comp.C} components; the truth start needs >= {basis.shape[0]} (d_model)")
    with torch.no_grad():
        W = comp.target_weight()
        comp.V[:, : len(basis)] = basis.T
        comp.U[: len(basis)] = (W @ basis.T).T
        comp.V[:, len(basis) :] *= 1e-3
        comp.U[len(basis) :] *= 1e-3
    _, metrics = decompose_target(cfg, world, model, out_dir, logger, cm=cm)
    V = comp.V.detach() / comp.V.detach().norm(dim=0, keepdim=True)
    stay = (world.attribute_directions @ V[:, : world.cfg.n_attributes]).abs().diagonal()
    print(f"|cos| of each attribute component with its starting u_j after training: min {stay.min():.3f}, mean {stay.mean():.3f}")
    for key in sorted(metrics):
        if key.startswith(("decomp/final/", "decomp/ci_l0/", "decomp/faithfulness/components/relative")):
            print(f"{key}: {metrics[key]:.4g}")


if __name__ == "__main__":
    main()
