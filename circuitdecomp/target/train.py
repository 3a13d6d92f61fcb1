"""Training the animal-world transformer: cross-entropy at the read-out plus sparsity pressure on the MLP."""

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from circuitdecomp.checkpoint import (
    Retry,
    latest_checkpoint,
    load_checkpoint,
    read_retry,
    retry_or_raise,
    run_fingerprint,
    save_checkpoint,
)
from circuitdecomp.interrupt import DivergenceError, Interrupted, check_finite, stop_on_signals
from circuitdecomp.progress import progress
from circuitdecomp.target.config import TransformerTargetConfig
from circuitdecomp.target.model import build_model, n_templates, question_of_units, readout_forward
from circuitdecomp.tracking import Logger
from circuitdecomp.world.geometry import nearest_neighbour_cos
from circuitdecomp.world.question_types import ids_reading
from circuitdecomp.world.sampler import Sampler
from circuitdecomp.world.vocab import READOUT_POS
from circuitdecomp.world.world import World

log = logging.getLogger(__name__)
CKPT_DIR = "checkpoints/target"  # beside the decomposition's checkpoints/ when both run in one directory


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


def _init(model: nn.Module, cfg: TransformerTargetConfig, world: World, gen: torch.Generator) -> None:
    """Strong question information, MLP input bias `init_bias`, and one template unit per animal.

    Question information starts with norm `context_init_norm` at the read-out (TransformerLens' init gives
    ~0.09 against the entities' 1): units then first split by question, not by entity, which is what lets the
    attribute units become per-question linear read-outs instead of memorising (results log, round 2).

    With `animal_templates`, unit k < n_animals starts as a detector of animal perm[k] (a seeded permutation):
    it reads the animal's fixed embedding v_i (what any of its training inputs shows at the read-out) and fires
    above `template_threshold` cosine (or halfway to the nearest other animal, if that is higher), with response
    1 on the animal itself: like initialising an SAE encoder from data. Training sets its gating, threshold and
    votes; its read direction barely moves (|cos| with v_i stays ~0.999). Without templates the look-up units
    end up shared by ~30-100 animals each (results log).
    """
    with torch.no_grad():
        if cfg.context_init_norm:
            _scale_context(model, world, cfg.context_init_norm)
        for block in model.blocks:
            block.mlp.get_submodule("in").bias.fill_(cfg.init_bias)
        k = n_templates(world, cfg)
        if k:
            animals = torch.randperm(k, generator=gen)
            v = world.animal_directions[animals]
            # in a crowded world the threshold rises to halfway to the nearest other animal, so that at init each
            # template still fires for its own animal only
            nearest = nearest_neighbour_cos(world.animal_directions)[animals] if k > 1 else torch.zeros(1)
            threshold = torch.maximum(torch.tensor(cfg.template_threshold), (1 + nearest) / 2)
            gain = 1.0 / (1.0 - threshold)  # response 1 on the animal itself
            w_in = model.blocks[0].mlp.get_submodule("in")
            w_in.weight[:k] = gain[:, None] * v
            w_in.bias[:k] = -gain * threshold
        group_question = question_of_units(world, cfg)
        if len(group_question):  # each group learns the one entity read its question needs
            _gate_groups(model, world, k, group_question)


@torch.no_grad()
def _contexts(model: nn.Module, world: World) -> tuple[Tensor, Tensor]:
    """Every distinct (question, modifier) prefix of the world and the question information it leaves at the read-out."""
    prefixes = torch.unique(world.examples.tokens[:, :READOUT_POS], dim=0)
    probe = torch.cat([prefixes, torch.zeros_like(prefixes[:, :1])], dim=1)  # entity 0: the attention ignores it
    _, cache = model.run_with_cache(probe, names_filter=lambda n: n == "blocks.0.hook_resid_mid")
    return prefixes, cache["blocks.0.hook_resid_mid"][:, READOUT_POS] - model.W_E[0]


@torch.no_grad()
def _scale_context(model: nn.Module, world: World, norm: float) -> None:
    """Rescale layer 0's attention output so question information at the read-out has mean norm `norm`."""
    _, context = _contexts(model, world)
    factor = norm / context.norm(dim=1).mean().item()
    o = model.blocks[0].attn.get_submodule("o").original_component
    o.parametrizations.weight.original.mul_(factor)  # o is parametrized (WriteContext): scale the free tensors
    o.parametrizations.bias.original.mul_(factor)


@torch.no_grad()
def _gate_groups(model: nn.Module, world: World, first: int, group_question: Tensor) -> None:
    """Per-question groups read no entity direction and start gated to their own question token.

    Each unit's read of the question information is the least-norm solution of `read . context(p) + bias = +1`
    for prefixes p of its question and -1 for every other prefix (there are fewer prefixes than context
    dimensions, so it is exact): the unit is alive on its question from step 0, and nowhere else.
    """
    w_in = model.blocks[0].mlp.get_submodule("in")
    prefixes, context = _contexts(model, world)
    design = torch.cat([context, torch.ones(len(context), 1)], dim=1)  # [prefixes, d_model + 1]
    wanted = torch.where(prefixes[:, 0, None] == group_question[None, :], 1.0, -1.0)  # [prefixes, group units]
    solution = torch.linalg.pinv(design) @ wanted  # least norm: no entity read (contexts have none)
    n = len(group_question)
    w_in.weight[first : first + n] = solution[:-1].T
    w_in.bias[first : first + n] = solution[-1]


def _weighted_l1(h: Tensor, block: nn.Module, rows: Tensor, units: slice = slice(None)) -> Tensor:
    """Sum of activations times their output norms on the selected rows and units, averaged over the batch.

    Weighting by the output norm makes the penalty invariant to moving scale from W_out into W_in (the SAE
    decoder-norm trick). Four such terms with their own strengths: every unit on fact questions (one unit per
    animal is the cheapest look-up), template units on the other questions (a look-up stays off there instead of
    memorising attribute answers), shared units on the other questions (kept weak: attribute readers must output
    values proportional to |u_j . x|; 0.03 starves them, held-out attribute accuracy 0.62), and per-question group
    units on every question but their own (`question_gate_l1`).
    """
    per_row = (h * block.mlp.get_submodule("out").weight[:, units].norm(dim=0)).sum(-1)
    return (per_row * rows).sum() / h.shape[0]


def train_target(
    world: World,
    cfg: TransformerTargetConfig,
    seed: int,
    logger: Logger,
    log_every: int = 100,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    out_dir: Path | None = None,
) -> TrainResult:
    """Train a fresh constrained target on the world's training split.

    With `out_dir`, checkpoints go to `checkpoints/target/` there and training resumes from the newest one;
    SIGTERM / Ctrl-C write one and raise Interrupted; with `target.retry_lr_factor` > 0 a divergence goes back
    to the last periodic checkpoint with a lower learning rate.
    """
    while True:
        try:
            return _train_once(world, cfg, seed, logger, log_every, evaluate, out_dir)
        except DivergenceError as err:
            retry_or_raise(err, out_dir, cfg.retry_lr_factor, cfg.max_retries, "target", CKPT_DIR)


def _train_once(
    world: World,
    cfg: TransformerTargetConfig,
    seed: int,
    logger: Logger,
    log_every: int,
    evaluate: Callable[[nn.Module], dict[str, float]] | None,
    out_dir: Path | None,
) -> TrainResult:
    """One attempt of `train_target`: resume or start, then train until done, stopped or diverged."""
    torch.manual_seed(seed)
    model = build_model(world, cfg, seed)
    sampler = Sampler(world.examples, cfg.question_mix, seed)
    _init(model, cfg, world, sampler.gen)
    if not cfg.train_attention:  # question information stays the random code it starts as (entities are fixed too)
        for p in list(model.embed.parameters()) + [p for b in model.blocks for p in b.attn.parameters()]:
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    gens = {"sampler": sampler.gen, "torch": torch.default_generator}
    fingerprint = run_fingerprint(seed, target=cfg, world=world.cfg)  # before any retry lowers cfg.lr
    ckpt = None if out_dir is None else latest_checkpoint(out_dir, CKPT_DIR)
    retry = Retry() if ckpt is None else read_retry(ckpt)
    if retry.lr_scale != 1.0:  # the run diverged earlier and went on with a lower learning rate
        cfg = dataclasses.replace(cfg, lr=cfg.lr * retry.lr_scale)
    first = 0 if ckpt is None else load_checkpoint(ckpt, named, opt, gens, fingerprint)
    if out_dir is not None and ckpt is None:  # what a retry goes back to; fails early on a full disk
        save_checkpoint(out_dir, 0, named, opt, gens, folder=CKPT_DIR, fingerprint=fingerprint)
    acts: list[Tensor] = []

    def keep(h: Tensor, hook: object) -> None:
        acts.append(h[:, READOUT_POS])  # the MLP at the entity's position is where circuits read v_i and u_j

    hooks = [] if cfg.n_layers == 1 else [(f"blocks.{layer}.mlp.hook_post", keep) for layer in range(cfg.n_layers)]
    n_tpl = n_templates(world, cfg)
    group_question = question_of_units(world, cfg)
    groups = slice(n_tpl, n_tpl + len(group_question))
    shared = slice(groups.stop, None)
    # act_l1 presses towards one unit per animal on the look-up questions: the types whose answers read v_i (facts)
    lookup_types = ids_reading("animals")
    start = time.perf_counter()
    loss_v, acc_v = float("nan"), float("nan")
    with stop_on_signals() as stop, model.hooks(fwd_hooks=hooks), progress(cfg.train_steps, "train target", initial=first) as bar:
        for step in range(first, cfg.train_steps):
            if stop.set:
                if out_dir is not None:
                    save_checkpoint(
                        out_dir, step, named, opt, gens, folder=CKPT_DIR, retry=retry, by_signal=True, fingerprint=fingerprint
                    )
                raise Interrupted(f"target training stopped by {stop.signal_name} at step {step}")
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch = sampler.sample(cfg.batch_size)
            acts.clear()
            if cfg.n_layers == 1:
                logits, h = readout_forward(model, batch.tokens)
                acts.append(h)
            else:
                logits = model(batch.tokens)[:, READOUT_POS]
            ce = F.cross_entropy(logits, batch.answer, label_smoothing=cfg.label_smoothing)
            is_lookup = torch.isin(batch.qtype, lookup_types).float()
            l1 = sum(_weighted_l1(h, model.blocks[layer], is_lookup) for layer, h in enumerate(acts))
            gate = _weighted_l1(acts[0][:, :n_tpl], model.blocks[0], 1.0 - is_lookup, units=slice(0, n_tpl))
            attr_l1 = _weighted_l1(acts[0][:, shared], model.blocks[0], 1.0 - is_lookup, units=shared)
            off_question = (batch.tokens[:, 0, None] != group_question[None, :]).float()  # [batch, group units]
            q_gate = _weighted_l1(acts[0][:, groups] * off_question, model.blocks[0], torch.ones_like(is_lookup), units=groups)
            loss = ce + cfg.act_l1 * l1 + cfg.lookup_gate_l1 * gate + cfg.attribute_l1 * attr_l1 + cfg.question_gate_l1 * q_gate
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf")).item()
            terms = {"ce": ce, "act_l1": l1, "lookup_gate_l1": gate, "attribute_l1": attr_l1, "question_gate_l1": q_gate}
            check_finite(
                "target training",
                step,
                loss,
                terms,
                grad_norm,
                cfg.max_loss,
                f"lower target.lr (now {cfg.lr:g}) and re-run, or set target.retry_lr_factor=0.5 to retry automatically.",
            )
            opt.step()
            bar.update(1)
            if step % log_every == 0 or step == cfg.train_steps - 1:
                loss_v, acc_v = loss.item(), (logits.argmax(-1) == batch.answer).float().mean().item()
                metrics = {
                    "target/train/loss": loss_v,
                    "target/train/ce": ce.item(),
                    "target/train/l1": float(l1.detach()) if isinstance(l1, Tensor) else l1,
                    "target/train/batch_accuracy": acc_v,
                    "target/train/lr": lr_at(step, cfg),
                }
                logger.log(metrics, step=step)
                bar.set_postfix(loss=f"{loss_v:.3f}", acc=f"{acc_v:.3f}")
            if evaluate is not None and cfg.eval_every and step and step % cfg.eval_every == 0:
                model.eval()
                metrics = evaluate(model)
                model.train()
                logger.log(metrics, step=step)
                log.info("step %d: %s", step, " ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in metrics.items()))
            if out_dir is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.train_steps):
                save_checkpoint(out_dir, step + 1, named, opt, gens, folder=CKPT_DIR, retry=retry, fingerprint=fingerprint)
    return TrainResult(model.eval(), time.perf_counter() - start, loss_v, acc_v)
