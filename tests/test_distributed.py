"""Data-parallel SPD: two gloo processes follow the one-process run with the same global batch; rank 0 alone writes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO
from torch import nn

from circuitdecomp import DecompositionConfig, decompose
from circuitdecomp.decomp import losses as L
from circuitdecomp.decomp.config import MaskSampling, OutputLoss
from circuitdecomp.decomp.distributed import Shard
from circuitdecomp.runio import load_tensors, save_tensors
from circuitdecomp.tracking import NullLogger

# Every sharded code path: KL on per-token logits, an embedding, two mask samples, all three recon losses, delta.
CFG = DecompositionConfig(
    steps=6,
    warmup_steps=3,
    compile=False,
    output_loss=OutputLoss.kl,
    n_mask_samples=2,
    layerwise_recon_coeff=1.0,
    subset_recon_coeff=1.0,
    faithfulness_coeff=0.1,
    checkpoint_every=2,
    lr=1e-2,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 11)).requires_grad_(False)


def _batches():
    gen = torch.Generator().manual_seed(0)
    while True:
        yield torch.randint(0, 11, (8, 5), generator=gen)  # the global batch: 8 sequences of 5 tokens


class Recorder(NullLogger):
    def __init__(self) -> None:
        self.calls = 0

    def log(self, metrics, step=None) -> None:
        self.calls += 1


def _decompose(out_dir: Path | None, logger=None):
    return decompose(_model(), {"0": 6, "1": 6, "3": 6}, _batches(), CFG, out_dir=out_dir, logger=logger, log_every=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        logger = Recorder()
        dec = _decompose(tmp / f"rank{rank}", logger)
        save_tensors(tmp / f"params{rank}.safetensors", {k: v.detach() for k, v in dec.cm.named_trainables().items()})
        (tmp / f"logged{rank}").write_text(str(logger.calls))
    finally:
        dist.destroy_process_group()


def test_two_processes_agree_with_each_other_and_with_one_process(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), tmp_path), nprocs=2, start_method="fork")
    single = {k: v.detach() for k, v in _decompose(None).cm.named_trainables().items()}
    ranks = [load_tensors(tmp_path / f"params{r}.safetensors") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == single.keys()
    worst = 0.0
    for k in single:
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # every rank took the same step
        worst = max(worst, (ranks[0][k] - single[k]).abs().max().item())
    assert worst < 1e-5, worst  # the one-process run, up to float summation order
    assert int((tmp_path / "logged0").read_text()) == CFG.steps and int((tmp_path / "logged1").read_text()) == 0
    assert len(list((tmp_path / "rank0" / "checkpoints").glob("*.safetensors"))) == 2
    assert not (tmp_path / "rank1").exists()  # rank 1 writes nothing


def test_sharded_masks_are_rows_of_the_global_draw():
    ci = {"m": torch.rand(6, 3, 4)}
    full = L.sample_masks(ci, MaskSampling.continuous, True, torch.Generator().manual_seed(1))
    for rank in (0, 1, 2):
        shard = Shard(rank, 3)
        local = shard.sample_masks({"m": shard.take(ci["m"])}, MaskSampling.continuous, True, torch.Generator().manual_seed(1))
        assert torch.equal(local["m"].mask, full["m"].mask[2 * rank : 2 * rank + 2])
        assert torch.equal(local["m"].delta_mask, full["m"].delta_mask[2 * rank : 2 * rank + 2])


def test_batches_that_do_not_split_and_unsplittable_settings_are_refused():
    with pytest.raises(ValueError, match="7 rows along dim 0, not divisible by 2 processes"):
        Shard(0, 2).local(torch.zeros(7, 3))
    assert Shard(1, 2).local({"x": torch.arange(4), "y": (torch.arange(4),)})["y"][0].tolist() == [2, 3]
    with pytest.raises(ValueError, match="importance_beta=0.0 and restarts=4 are not supported with 2 processes"):
        Shard(0, 2).check_config(DecompositionConfig(restarts=4))


@pytest.mark.integration
@pytest.mark.slow
def test_torchrun_runs_an_example_with_one_wandb_run(tmp_path):
    """The real launcher: two processes, rank 0 alone logs to wandb and writes the run's files."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"} | {"OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "examples/mlp_sequential.py",
        "experiment=example_mlp",
        "decomposition.steps=4",
        "decomposition.warmup_steps=2",
        "decomposition.compile=false",
        "decomposition.batch_size=64",
        "tracking.mode=offline",
        f"hydra.run.dir={tmp_path}",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
    assert (tmp_path / "decomposition.safetensors").exists() and (tmp_path / "metrics.json").exists()
