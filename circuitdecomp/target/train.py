"""Training the animal-world transformer: cross-entropy at the read-out plus sparsity pressure on the MLP."""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from circuitdecomp.progress import progress
from circuitdecomp.target.config import TransformerTargetConfig
from circuitdecomp.target.model import build_model
from circuitdecomp.tracking import Logger
from circuitdecomp.world.sampler import Sampler
from circuitdecomp.world.vocab import READOUT_POS, QuestionType
from circuitdecomp.world.world import World

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """The trained (still parametrized) model and how training went."""

    model: nn.Module
    seconds: float
    final_loss: float
    final_batch_accuracy: float


def lr_at(step: int, cfg: TransformerTargetConfig) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress_ = (step - cfg.warmup_steps) / max(1, cfg.train_steps - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress_)))


def _init(model: nn.Module, cfg: TransformerTargetConfig, sampler: Sampler, world: World) -> None:
    """MLP input bias `init_bias`; optionally the first `template_share` of the units start as data templates.

    A negative bias makes each unit start out firing for few inputs, so it specialises on them. A template
    unit reads the entity embedding of a random training fact input (drawn with replacement, so some animals
    get several templates and some none) with a threshold at `template_threshold` of its own response: like
    initialising an SAE encoder from data, it starts as a detector of one input, and training may move it.
    """
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.get_submodule("in").bias.fill_(cfg.init_bias)
        k = round(cfg.template_share * model.blocks[0].mlp.get_submodule("in").weight.shape[0])
        if k:
            facts = sampler.train.subset(sampler.train.qtype == int(QuestionType.fact))
            rows = torch.randint(0, len(facts), (k,), generator=sampler.gen)
            emb = world.entity_embeddings()[facts.entity[rows]]
            gain = 1.0 / (1.0 - cfg.template_threshold)  # response 1 on the template's own entity
            w_in = model.blocks[0].mlp.get_submodule("in")
            w_in.weight[:k] = gain * emb
            w_in.bias[:k] = -gain * cfg.template_threshold * emb.pow(2).sum(1)


def _weighted_l1(h: Tensor, block: nn.Module, rows: Tensor) -> Tensor:
    """Sum of activations times their output norms on the selected rows, averaged over the batch.

    Weighting by the output norm makes the penalty invariant to moving scale from W_out into W_in (the SAE
    decoder-norm trick). Only fact questions are penalised: that is where one unit per animal is the cheapest
    solution, while attribute readers must output values proportional to |u_j . x| and an L1 there only
    starves them (measured: held-out attribute accuracy fell to 57-62% with L1 on every question).
    """
    per_row = (h * block.mlp.get_submodule("out").weight.norm(dim=0)).sum(-1)
    return (per_row * rows).sum() / h.shape[0]


def train_target(world: World, cfg: TransformerTargetConfig, seed: int, logger: Logger, log_every: int = 100,
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None) -> TrainResult:
    """Train a fresh constrained target on the world's training split."""
    torch.manual_seed(seed)
    model = build_model(world, cfg, seed)
    sampler = Sampler(world.examples, cfg.question_mix, seed)
    _init(model, cfg, sampler, world)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    acts: list[Tensor] = []

    def keep(h: Tensor, hook: object) -> None:
        acts.append(h[:, READOUT_POS])  # the MLP at the entity's position is where circuits read v_i and u_j

    hooks = [(f"blocks.{layer}.mlp.hook_post", keep) for layer in range(cfg.n_layers)]
    start = time.perf_counter()
    loss_v, acc_v = float("nan"), float("nan")
    with model.hooks(fwd_hooks=hooks), progress(cfg.train_steps, "train target") as bar:
        for step in range(cfg.train_steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch = sampler.sample(cfg.batch_size)
            acts.clear()
            logits = model(batch.tokens)[:, READOUT_POS]
            ce = F.cross_entropy(logits, batch.answer, label_smoothing=cfg.label_smoothing)
            is_fact = (batch.qtype == int(QuestionType.fact)).float()
            l1 = sum(_weighted_l1(h, model.blocks[layer], is_fact) for layer, h in enumerate(acts))
            loss = ce + cfg.act_l1 * l1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            if step % log_every == 0 or step == cfg.train_steps - 1:
                loss_v, acc_v = loss.item(), (logits.argmax(-1) == batch.answer).float().mean().item()
                metrics = {"target/train/loss": loss_v, "target/train/ce": ce.item(), "target/train/l1": float(l1.detach()) if isinstance(l1, Tensor) else l1,
                           "target/train/batch_accuracy": acc_v, "target/train/lr": lr_at(step, cfg)}
                logger.log(metrics, step=step)
                bar.set_postfix(loss=f"{loss_v:.3f}", acc=f"{acc_v:.3f}")
            if evaluate is not None and cfg.eval_every and step and step % cfg.eval_every == 0:
                model.eval()
                metrics = evaluate(model)
                model.train()
                logger.log(metrics, step=step)
                log.info("step %d: %s", step, " ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in metrics.items()))
    return TrainResult(model.eval(), time.perf_counter() - start, loss_v, acc_v)
