"""Worked example: decompose a plain `nn.Sequential` MLP with the public API.

The MLP learns y = |x| on 16 sparse inputs: each |x_i| takes two ReLU neurons (reading +x_i and -x_i), so
the decomposition should find about one live component per neuron in each matrix.

    python examples/mlp_sequential.py experiment=example_mlp
    torchrun --standalone --nproc_per_node=2 examples/mlp_sequential.py experiment=example_mlp hydra.run.dir=runs/example_mlp_ddp
"""

from pathlib import Path

import torch
from common import finish
from torch import nn

from circuitdecomp import decompose
from circuitdecomp.cli import hydra_script
from circuitdecomp.config import Config
from circuitdecomp.decomp.distributed import process_group
from circuitdecomp.tracking import Logger

N_FEATURES, HIDDEN, FEATURE_PROB = 16, 32, 0.05
TRAIN_STEPS = 1500


def sparse_inputs(batch: int, seed: int):
    """Each feature on with probability FEATURE_PROB, uniform in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        on = torch.rand(batch, N_FEATURES, generator=gen) < FEATURE_PROB
        yield (2 * torch.rand(batch, N_FEATURES, generator=gen) - 1) * on


def build_model(seed: int, steps: int) -> tuple[nn.Sequential, float]:
    """The MLP trained to compute |x| (frozen), and its final training MSE."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(N_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_FEATURES))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = sparse_inputs(256, seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x = next(data)
        loss = (model(x) - x.abs()).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.requires_grad_(False), loss.item()


@hydra_script("example_mlp")
def main(cfg: Config, out_dir: Path, logger: Logger) -> None:
    model, mse = build_model(cfg.seed, TRAIN_STEPS)
    d = cfg.decomposition
    with process_group() as shard:
        dec = decompose(
            model,
            {m.pattern: m.C for m in d.modules},
            sparse_inputs(d.batch_size, cfg.seed + 1),
            d,
            out_dir=out_dir,
            seed=cfg.seed,
            logger=logger,
            log_every=cfg.tracking.log_every,
        )
        if shard is None or shard.is_main:
            metrics = finish(dec, next(sparse_inputs(4096, cfg.seed + 2)), out_dir, logger, cfg.name, {"target/mse": mse})
            print({k: round(v, 4) for k, v in metrics.items()})


if __name__ == "__main__":
    main()
