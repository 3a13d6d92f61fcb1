"""Mechanism checks: attribute read-outs along u_j, and ablations of the size direction and of single animals."""

import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuitdecomp.target.evaluate import accuracy_by_type, predict
from circuitdecomp.target.model import readout_logits
from circuitdecomp.world.question_types import QuestionType
from circuitdecomp.world.questions import Examples
from circuitdecomp.world.vocab import READOUT_POS
from circuitdecomp.world.world import World

HOOK = "blocks.0.hook_resid_mid"  # the residual the first MLP (and, through the skip path, the unembedding) reads


@torch.no_grad()
def resid_mid(model: nn.Module, examples: Examples, batch_size: int = 4096) -> Float[Tensor, "n d_model"]:
    """Residual at the read-out position after the first attention layer."""
    out = []
    for s in range(0, len(examples), batch_size):
        _, cache = model.run_with_cache(examples.tokens[s : s + batch_size], names_filter=lambda n: n == HOOK)
        out.append(cache[HOOK][:, READOUT_POS])
    return torch.cat(out)


def _project_out(direction: Float[Tensor, " d_model"]):
    d = direction / direction.norm()

    def hook(x: Tensor, hook: object) -> Tensor:
        return x - (x @ d)[..., None] * d

    return hook


def ablated_accuracy(model: nn.Module, examples: Examples, direction: Float[Tensor, " d_model"], prefix: str) -> dict[str, float]:
    """Accuracy per question type with `direction` projected out of the residual the MLP reads."""
    with model.hooks(fwd_hooks=[(HOOK, _project_out(direction))]):
        logits = predict(model, examples)
    return accuracy_by_type(logits, examples, prefix)


def probe_set(world: World, max_rows: int = 12_000, min_attribute_rows: int = 2_000, seed: int = 0) -> Examples:
    """Every size and fact row plus a random sample of attribute rows (ablations need not see all of them)."""
    ex = world.examples
    gen = torch.Generator().manual_seed(seed)
    is_attr = ex.qtype == int(QuestionType.attribute)
    attr = is_attr.nonzero().squeeze(1)
    attr = attr[torch.randperm(attr.numel(), generator=gen)[: max(min_attribute_rows, max_rows - int((~is_attr).sum()))]]
    return ex.subset(torch.cat([(~is_attr).nonzero().squeeze(1), attr]))


def mechanism_metrics(model: nn.Module, world: World, n_animals_ablated: int = 8, seed: int = 0) -> dict[str, float]:
    """`target/mechanisms/*`: read-outs, the size ablation and single-animal ablations."""
    probe = probe_set(world, seed=seed)
    x = resid_mid(model, probe)
    true = world.entity_attribute_values()[probe.entity]
    read = x @ world.attribute_directions.T
    err = read - true
    metrics = {
        "target/mechanisms/attribute_readout_max_error": err.abs().max().item(),
        "target/mechanisms/attribute_readout_r2": (1 - err.pow(2).sum() / (true - true.mean(0)).pow(2).sum()).item(),
    }
    E = world.geometry.entity_basis
    entity_part = (x @ E.T) @ E
    metrics["target/mechanisms/entity_part_max_error"] = (
        (entity_part - world.entity_embeddings()[probe.entity]).abs().max().item()
    )
    metrics |= accuracy_by_type(predict(model, probe), probe, "target/mechanisms/intact")
    metrics |= ablated_accuracy(model, probe, world.size_direction, "target/mechanisms/ablate_size")
    metrics |= _animal_ablations(model, world, probe, n_animals_ablated, seed)
    metrics |= _attribute_reads(model, world, probe)
    return metrics


def _attribute_reads(model: nn.Module, world: World, probe: Examples) -> dict[str, float]:
    """Does an attribute question's answer depend on its u_j alone? At the read-out, the residual's entity part is
    replaced by its component along the asked u_j (`keep_only_u`), or u_j is projected out (`remove_u`).

    `keep_only_u` near the intact accuracy and `remove_u` near chance say the decision reads u_j and nothing else of
    the entity, however many units carry it. `keep_only_u_kl` (KL of the answer distribution, intact || kept, mean
    over rows) says whether the logits themselves, not only the decision, ignore the rest: SPD reproduces logits.
    """
    rows = probe.subset(probe.qtype == int(QuestionType.attribute))
    if not len(rows):
        return {}
    u = world.attribute_directions[torch.tensor(world.cfg.asked_attributes)[rows.question]]  # [n, d_model]
    E = world.geometry.entity_basis

    def edit(keep_only: bool):
        def hook(x: Tensor, hook: object) -> Tensor:
            r = x[:, READOUT_POS]
            along = (r * u).sum(-1, keepdim=True) * u
            x = x.clone()
            x[:, READOUT_POS] = r - (r @ E.T) @ E + along if keep_only else r - along
            return x

        return hook

    answers = slice(world.vocab.answers_start, None)
    with torch.no_grad():
        intact = readout_logits(model, rows.tokens)
        out = {"intact": intact}
        for name, keep in (("keep_only_u", True), ("remove_u", False)):
            with model.hooks(fwd_hooks=[(HOOK, edit(keep))]):
                out[name] = readout_logits(model, rows.tokens)
    prefix = "target/mechanisms/attribute_reads"
    metrics = {f"{prefix}/{k}": (v.argmax(-1) == rows.answer).float().mean().item() for k, v in out.items()}
    log_p, log_q = intact[:, answers].log_softmax(-1), out["keep_only_u"][:, answers].log_softmax(-1)
    metrics[f"{prefix}/keep_only_u_kl"] = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()
    return metrics


def _animal_ablations(model: nn.Module, world: World, probe: Examples, k: int, seed: int) -> dict[str, float]:
    """Project out single animals' directions: their own facts should break, other animals' facts should not."""
    gen = torch.Generator().manual_seed(seed + 1)
    facts = probe.subset(probe.qtype == int(QuestionType.fact))
    own, others = [], []
    for i in torch.randperm(world.cfg.n_animals, generator=gen)[:k].tolist():
        with model.hooks(fwd_hooks=[(HOOK, _project_out(world.animal_directions[i]))]):
            correct = predict(model, facts).argmax(-1) == facts.answer
        mine = facts.entity == i
        own.append(correct[mine].float().mean().item())
        others.append(correct[~mine].float().mean().item())
    return {
        "target/mechanisms/ablate_animal/own_facts": sum(own) / len(own),
        "target/mechanisms/ablate_animal/other_facts": sum(others) / len(others),
        "target/mechanisms/ablate_animal/chance": 1.0 / world.cfg.n_fact_answers,
    }
