"""Benchmark: SPD step time vs the target's own training step, measured in the same run.

`python scripts/bench_spd.py [--steps N] [--threads T] [--clock wall|cpu]`; the last line is one JSON object
{"tms52_step_ms", "tms52_ratio", "resid1_step_ms", "resid1_ratio"}. `--clock cpu --threads 1` times the process's
CPU time instead of wall time: steadier when other jobs share the cores (it still counts their cache and memory
contention, not their share of the CPU).
"""

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from circuitdecomp.decomp.allocator import keep_freed_memory
from circuitdecomp.decomp.config import DecompositionConfig, ModuleSpec
from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.decomp.train import fresh_state, spd_losses
from circuitdecomp.toys.config import ResidMLPConfig, TMSConfig
from circuitdecomp.toys.data import sparse_features
from circuitdecomp.toys.resid_mlp import ResidMLP, resid_labels
from circuitdecomp.toys.tms import TMS

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_ms(step: Callable[[], None], n: int, clock: Callable[[], float], warmup: int = 5) -> float:
    """Median time of `step` in ms over n calls on `clock`, after a warm-up."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n):
        t0 = clock()
        step()
        times.append(clock() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def spd_step_fn(model: torch.nn.Module, cfg: DecompositionConfig, sample: Callable[[torch.Generator], torch.Tensor]):
    """SPD's losses, backward and optimiser step (the engine's optimiser), without train_step's logging checks."""
    cm = ComponentModel(model, cfg)
    opt = fresh_state(cm, cfg, 0).opt
    gens = (torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))

    def step() -> None:
        total, _, _ = spd_losses(cm, sample(gens[0]), cfg, 0.5, gens[1])
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    return step


def bench_tms(n: int, clock: Callable[[], float]) -> tuple[float, float]:
    t = TMSConfig()
    model = TMS(5, 2)
    W1, b = model.linear1.weight, model.linear2.bias
    opt = torch.optim.AdamW([W1, b], lr=t.lr)
    gen = torch.Generator().manual_seed(0)

    def target_step() -> None:  # the paper's TMS training step, at the SPD batch size
        x = sparse_features(4096, 5, t.feature_prob, gen)
        loss = (F.relu(F.linear(F.linear(x, W1), W1.T, b)) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cfg = DecompositionConfig(modules=[ModuleSpec("linear1", 20), ModuleSpec("linear2", 20)], batch_size=4096)
    spd = spd_step_fn(TMS(5, 2), cfg, lambda g: sparse_features(4096, 5, t.feature_prob, g))
    return time_ms(spd, n, clock), time_ms(target_step, n, clock)


def bench_resid(n: int, clock: Callable[[], float]) -> tuple[float, float]:
    t = ResidMLPConfig()
    model = ResidMLP(t, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)

    def sample(g: torch.Generator) -> torch.Tensor:
        return sparse_features(2048, t.n_features, t.feature_prob, g, low=-1.0)

    def target_step() -> None:
        x = sample(gen)
        loss = (model(x) - resid_labels(x)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cfg = DecompositionConfig(
        modules=[ModuleSpec("layers.*.mlp_in", 100), ModuleSpec("layers.*.mlp_out", 100)],
        batch_size=2048,
        importance_coeff=1e-5,
        pnorm=2.0,
    )
    spd = spd_step_fn(ResidMLP(t, 0), cfg, sample)
    return time_ms(spd, n, clock), time_ms(target_step, n, clock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall time, or this process's CPU time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as train_decomposition does; the target step runs under the same setting
    tms_spd, tms_target = bench_tms(args.steps, CLOCKS[args.clock])
    print(
        f"TMS 5-2   batch 4096 C=20 : SPD step {tms_spd:7.2f} ms | target step {tms_target:6.2f} ms "
        f"| ratio {tms_spd / tms_target:5.1f}x"
    )
    res_spd, res_target = bench_resid(args.steps, CLOCKS[args.clock])
    print(
        f"resid_mlp1 batch 2048 C=100: SPD step {res_spd:7.2f} ms | target step {res_target:6.2f} ms "
        f"| ratio {res_spd / res_target:5.1f}x"
    )
    print(
        json.dumps(
            {
                "tms52_step_ms": round(tms_spd, 2),
                "tms52_ratio": round(tms_spd / tms_target, 2),
                "resid1_step_ms": round(res_spd, 2),
                "resid1_ratio": round(res_spd / res_target, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
