"""Accuracy per question type and logit saturation of a target on the world's inputs."""

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from circuitdecomp.target.model import readout_logits
from circuitdecomp.world.question_types import NAMES, QuestionType
from circuitdecomp.world.questions import Examples
from circuitdecomp.world.world import World


@torch.no_grad()
def predict(model: nn.Module, examples: Examples, batch_size: int = 4096) -> Float[Tensor, "n d_vocab"]:
    """Read-out logits for every row, in batches."""
    return torch.cat([readout_logits(model, examples.tokens[s : s + batch_size]) for s in range(0, len(examples), batch_size)])


def accuracy_by_type(logits: Float[Tensor, "n d_vocab"], examples: Examples, prefix: str) -> dict[str, float]:
    """`<prefix>/<question_type>` accuracies (argmax over the whole vocabulary), for registered types that have rows."""
    correct = logits.argmax(-1) == examples.answer
    out = {}
    for qtype, name in enumerate(NAMES):
        rows = examples.qtype == qtype
        if rows.any():
            out[f"{prefix}/{name}"] = correct[rows].float().mean().item()
    return out


def saturation(logits: Float[Tensor, "n d_vocab"], examples: Examples) -> dict[str, float]:
    """How saturated the answers are: probability of the right answer, its logit margin, share above p=0.99."""
    p = logits.softmax(-1).gather(1, examples.answer[:, None]).squeeze(1)
    right = logits.gather(1, examples.answer[:, None]).squeeze(1)
    others = logits.scatter(1, examples.answer[:, None], float("-inf")).max(-1).values
    margin = right - others
    return {
        "target/saturation/mean_p_correct": p.mean().item(),
        "target/saturation/frac_p_above_0.99": (p > 0.99).float().mean().item(),
        "target/saturation/mean_logit_margin": margin.mean().item(),
        "target/saturation/median_logit_margin": margin.median().item(),
        "target/saturation/max_logit": logits.max().item(),
    }


def evaluate_target(model: nn.Module, examples: Examples) -> dict[str, float]:
    """Held-out accuracy (`target/accuracy/<type>`), training accuracy and saturation."""
    logits = predict(model, examples)
    held, train = ~examples.is_train, examples.is_train
    metrics = accuracy_by_type(logits[held], examples.subset(held), "target/accuracy")
    metrics |= accuracy_by_type(logits[train], examples.subset(train), "target/train_accuracy")
    metrics["target/accuracy/min"] = min(v for k, v in metrics.items() if k.startswith("target/accuracy/"))
    metrics |= saturation(logits, examples)
    return metrics


def attribute_linear_ceiling(world: World, l2: float = 1e-4) -> float:
    """Held-out accuracy on attribute questions of one logistic regression per question on the entity embedding.

    The best a linear read of u_j learnt from the training split does (plain rows; modifiers do not change these
    answers): a target cannot be expected to beat it, and with too few training animals per attribute dimension
    it stays below 99% (world=demo with 256 animals: 98.0%).
    """
    ex = world.examples
    rows = ex.subset((ex.qtype == int(QuestionType.attribute)) & (ex.modifier == 0))
    x = world.entity_embeddings()[rows.entity].double()
    y = (rows.answer == world.vocab.yes).double()
    correct = total = 0
    for q in rows.question.unique().tolist():
        mine = rows.question == q
        train, held = mine & rows.is_train, mine & ~rows.is_train
        if not held.any():
            continue
        w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

        def loss() -> Tensor:
            opt.zero_grad()
            value = F.binary_cross_entropy_with_logits(x[train] @ w[:-1] + w[-1], y[train]) + l2 * w[:-1].pow(2).sum()
            value.backward()
            return value

        with torch.enable_grad():
            opt.step(loss)
        with torch.no_grad():
            correct += int(((x[held] @ w[:-1] + w[-1] > 0).double() == y[held]).sum())
        total += int(held.sum())
    return correct / max(total, 1)
