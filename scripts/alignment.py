"""How close a decomposition's read directions come to the attributes (a scoring use of ground truth).

    python scripts/alignment.py runs/pipeline/<run> [module, default blocks.0.mlp.in]

For each attribute u_j: the best |cos| between u_j and the entity part of any component's read direction V_c (all
components, live or not), printed as min / median / max over attributes. For 128 random directions in the
34-dimensional entity space of the demo world the median is ~0.48 (chance); a component per attribute gives ~1.
"""

import sys
from pathlib import Path

import torch

from circuitdecomp.runio import load_tensors
from circuitdecomp.target.run import load_target_run


def main(argv: list[str]) -> int:
    if not argv or not (Path(argv[0]) / "decomposition.safetensors").exists():
        print(__doc__, file=sys.stderr)
        return 2
    run, module = Path(argv[0]), argv[1] if len(argv) > 1 else "blocks.0.mlp.in"
    world, _ = load_target_run(run)
    tensors = load_tensors(run / "decomposition.safetensors")
    if f"{module}/V" not in tensors:
        modules = sorted({k.split("/")[0] for k in tensors})
        print(f"error: {module} is not decomposed in {run}; modules: {modules}", file=sys.stderr)
        return 2
    E = world.geometry.entity_basis
    V = E.T @ (E @ tensors[f"{module}/V"])  # entity part of each read direction
    V = V / V.norm(dim=0, keepdim=True).clamp_min(1e-12)
    best = (world.attribute_directions @ V).abs().amax(1)
    q = best.quantile(torch.tensor([0.0, 0.5, 1.0]))
    print(f"{run} {module}: best |cos| per attribute min {q[0]:.3f} median {q[1]:.3f} max {q[2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
