"""Shared by the worked examples: a synthetic token task, a short training loop, and writing the run directory."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from jaxtyping import Int
from matplotlib.figure import Figure
from torch import Tensor, nn

from circuitdecomp.decomp.api import Decomposition
from circuitdecomp.runio import Metrics, save_figure, update_metrics
from circuitdecomp.tracking import Logger

if TYPE_CHECKING:
    from circuitdecomp.config import Config


def permutation_sequences(vocab: int, seq_len: int, batch: int, seed: int) -> Iterator[Int[Tensor, "batch pos"]]:
    """Token sequences where each token is a fixed random permutation of the one before, with 10% random resets.

    The same `seed` gives the same permutation and the same stream, on every process.
    """
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(vocab, generator=torch.Generator().manual_seed(1234))
    while True:
        toks = torch.empty(batch, seq_len, dtype=torch.long)
        toks[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
        for t in range(1, seq_len):
            reset = torch.rand(batch, generator=gen) < 0.1
            toks[:, t] = torch.where(reset, torch.randint(0, vocab, (batch,), generator=gen), perm[toks[:, t - 1]])
        yield toks


def train_next_token(
    model: nn.Module, logits_of: Callable[[Tensor], Tensor], data: Iterator[Tensor], steps: int, lr: float = 3e-3
) -> float:
    """Train `model` briefly on next-token prediction; returns the last loss. Leaves it frozen and in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        toks = next(data)
        logits = logits_of(toks)[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    return loss.item()


def activity_figure(dec: Decomposition, batch: object, title: str) -> Figure:
    """One panel per module: the fraction of positions where each component is causally important, most used first."""
    ci = dec.causal_importance(batch)
    cols = min(4, len(ci))
    rows = -(-len(ci) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (path, g) in zip(axes.flat, ci.items()):
        active = (g.flatten(0, -2) > dec.config.ci_alive_threshold).float().mean(0).sort(descending=True).values
        ax.bar(range(len(active)), active.numpy(), width=1.0)
        ax.set(title=path, ylim=(0, 1), xlabel="component (sorted)", ylabel="fraction active")
    for ax in axes.flat[len(ci) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def finish(dec: Decomposition, eval_batch: object, out_dir: Path, logger: Logger, name: str, extra: Metrics) -> Metrics:
    """Write decomposition.safetensors, metrics.json and activity.png; send all three to the logger."""
    path = dec.save(Path(out_dir) / "decomposition.safetensors")
    metrics = dec.metrics(eval_batch) | extra
    update_metrics(out_dir, metrics)
    fig = activity_figure(dec, eval_batch, name)
    save_figure(out_dir, "activity", fig)
    logger.log_figure("decomp/activity", fig)
    plt.close(fig)
    logger.log(metrics)
    logger.log_artifact(path, f"{name}-decomposition", "decomposition")
    return metrics


def run_token_example(
    cfg: "Config",
    out_dir: Path,
    logger: Logger,
    build_model: Callable[[int, int], tuple[nn.Module, float]],
    train_steps: int,
    vocab: int,
    seq_len: int,
) -> None:
    """Train a next-token model on permutation sequences, decompose it (one or several processes), report on rank 0."""
    from circuitdecomp import decompose
    from circuitdecomp.decomp.distributed import process_group

    model, loss = build_model(cfg.seed, train_steps)
    d = cfg.decomposition
    with process_group() as shard:
        dec = decompose(
            model,
            {m.pattern: m.C for m in d.modules},
            permutation_sequences(vocab, seq_len, d.batch_size, cfg.seed + 1),
            d,
            out_dir=out_dir,
            seed=cfg.seed,
            logger=logger,
            log_every=cfg.tracking.log_every,
        )
        if shard is None or shard.is_main:
            eval_batch = next(permutation_sequences(vocab, seq_len, 512, cfg.seed + 2))
            metrics = finish(dec, eval_batch, out_dir, logger, cfg.name, {"target/next_token_loss": loss})
            print({k: round(v, 4) for k, v in metrics.items()})
