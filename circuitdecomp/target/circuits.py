"""Does the target contain the world's circuits? Animals per look-up unit, and which directions units read."""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from circuitdecomp.target.model import readout_logits
from circuitdecomp.world.vocab import Modifier
from circuitdecomp.world.world import World

ALIVE = 0.05  # a unit is alive on a question family if its peak reaches this share of the strongest unit's peak
ANIMAL_DEPENDENT = 0.5  # ... and a look-up unit if its activation across animals varies (std / mean above this)


@torch.no_grad()
def mlp_readout(model: nn.Module, tokens: Int[Tensor, "batch 3"], layer: int = 0) -> Float[Tensor, "batch d_mlp"]:
    """MLP activations (after the ReLU) of one layer at the read-out position."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == f"blocks.{layer}.mlp.hook_post")
    return cache[f"blocks.{layer}.mlp.hook_post"][:, -1]  # the read-out is the last position


def _tokens(world: World, question_tokens: list[int]) -> Int[Tensor, "q n_animals 3"]:
    """[question, plain, animal] for every question in the list and every animal."""
    n = world.cfg.n_animals
    rows = [
        torch.stack([torch.full((n,), q), torch.full((n,), world.vocab.modifier(Modifier.plain)), torch.arange(n)], 1)
        for q in question_tokens
    ]
    return torch.stack(rows)


@dataclass(frozen=True)
class UnitTable:
    """Per-unit activations on animals: peak over facts [n_animals, d_mlp] and over attribute questions."""

    fact: Float[Tensor, "n_animals d_mlp"]
    attribute: Float[Tensor, "n_animals d_mlp"]


def unit_table(model: nn.Module, world: World) -> UnitTable:
    """Each unit's largest activation per animal, over fact questions and over attribute questions."""
    v = world.vocab
    facts = _tokens(world, [v.fact_question(f) for f in range(v.n_facts)])
    attrs = _tokens(world, [v.attribute_question(q) for q in range(v.n_attribute_questions)])
    fact = torch.stack([mlp_readout(model, t) for t in facts]).amax(0)
    attribute = torch.stack([mlp_readout(model, t) for t in attrs]).amax(0)
    return UnitTable(fact, attribute)


def lookup_units(table: UnitTable) -> Tensor:
    """Boolean mask of look-up units: alive on fact questions, with an activation that depends on the animal."""
    peak = table.fact.amax(0)
    spread = table.fact.std(0) / table.fact.mean(0).clamp_min(1e-9)
    return (peak > ALIVE * peak.max().clamp_min(1e-9)) & (spread > ANIMAL_DEPENDENT)


def served_animals(table: UnitTable, active_fraction: float) -> Float[Tensor, " d_mlp"]:
    """How many animals drive each unit to at least `active_fraction` of its peak (on fact questions)."""
    peak = table.fact.amax(0).clamp_min(1e-9)
    return (table.fact >= active_fraction * peak).sum(0).float()


def participation(table: UnitTable) -> Float[Tensor, " d_mlp"]:
    """Threshold-free count of animals per unit: (sum_i a_i)^2 / sum_i a_i^2."""
    a = table.fact
    return a.sum(0).pow(2) / a.pow(2).sum(0).clamp_min(1e-18)


def best_cos(
    weights: Float[Tensor, "k d_model"], directions: Float[Tensor, "m d_model"], basis: Float[Tensor, "e d_model"]
) -> Float[Tensor, " k"]:
    """Best |cos| of each weight row, projected onto the entity subspace, with any of the directions."""
    w = (weights @ basis.T) @ basis
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (w @ directions.T).abs().amax(1)


@dataclass(frozen=True)
class AttributeCircuits:
    """Per attribute question q (reading u_j): how the MLP answers it, seen from the weights it uses."""

    effective_cos: Float[Tensor, " n_questions"]  # |cos(g_q, u_j)|, g_q: least-squares read of the yes-no logit difference
    purity: Float[Tensor, " n_questions"]  # share of the active units' entity reads that lies along u_j (1: each reads u_j only)
    active_units: Float[Tensor, " n_questions"]  # units on for at least 5% of the animals asked


@torch.no_grad()
def attribute_circuits(model: nn.Module, world: World) -> AttributeCircuits:
    """Which directions the circuit answering each attribute question reads, as a whole and unit by unit.

    g_q is the least-squares fit of logit(yes) - logit(no) over all animals on their attribute values: the direction
    the whole circuit reads (for a clamp of u_j . x, as planted, g_q is along u_j up to sampling noise).
    Purity weights each unit by
    how much it moves that logit difference (|W_U[yes] - W_U[no]| . W_out[:, k]) times the share of animals it is on for.
    """
    v, n = world.vocab, world.cfg.n_animals
    mlp = model.blocks[0].mlp
    w_in, w_out = mlp.get_submodule("in").weight, mlp.get_submodule("out").weight
    vote = (model.unembed.weight[v.yes] - model.unembed.weight[v.no]) @ w_out  # [d_mlp]
    E = world.geometry.entity_basis
    reads = (w_in @ E.T) @ E
    U = world.attribute_directions
    x = torch.cat([world.attribute_values, torch.ones(n, 1)], dim=1).double()  # animals' u-coordinates and an intercept
    tokens = _tokens(world, [v.attribute_question(q) for q in range(v.n_attribute_questions)])
    cos, purity, active = [], [], []
    for q, j in enumerate(world.cfg.asked_attributes):
        logits = readout_logits(model, tokens[q])
        fit = torch.linalg.lstsq(x, (logits[:, v.yes] - logits[:, v.no]).double()[:, None], driver="gelsd").solution
        g = fit[:-1, 0].float()  # in u-coordinates: its cosine with u_j is its j-th share
        cos.append(g[j].abs() / g.norm().clamp_min(1e-12))
        u = U[j]
        h = mlp_readout(model, tokens[q])
        on = (h > 1e-4 * h.max()).float().mean(0)  # share of animals each unit is on for (above rounding noise)
        weight = vote.abs() * on
        purity.append((weight * (reads @ u).abs()).sum() / (weight * reads.norm(dim=1)).sum().clamp_min(1e-12))
        active.append((on > 0.05).sum().float())
    return AttributeCircuits(torch.stack(cos), torch.stack(purity), torch.stack(active))


def circuit_metrics(model: nn.Module, world: World, active_fraction: float) -> dict[str, float]:
    """`target/circuits/*`: how close the MLP's units are to the planted look-up and attribute circuits."""
    table = unit_table(model, world)
    lookup = lookup_units(table)
    served = served_animals(table, active_fraction)
    w_in = model.blocks[0].mlp.get_submodule("in").weight.detach()
    E = world.geometry.entity_basis
    attr_peak = table.attribute.amax(0)
    attribute_units = (attr_peak > ALIVE * attr_peak.max().clamp_min(1e-9)) & ~lookup
    serving = table.fact >= active_fraction * table.fact.amax(0).clamp_min(1e-9)
    covered = (serving[:, lookup & (served <= 2)]).any(1).float().mean() if lookup.any() else torch.tensor(0.0)
    metrics = {
        "target/circuits/n_lookup_units": float(lookup.sum()),
        "target/circuits/animals_per_lookup_unit": served[lookup].mean().item() if lookup.any() else float("nan"),
        "target/circuits/animals_per_lookup_unit_median": served[lookup].median().item() if lookup.any() else float("nan"),
        "target/circuits/animals_per_lookup_unit_participation": participation(table)[lookup].mean().item()
        if lookup.any()
        else float("nan"),
        "target/circuits/lookup_units_per_animal": serving[:, lookup].sum(1).float().mean().item(),
        "target/circuits/animals_with_own_unit": covered.item(),  # served by a unit that serves at most 2 animals
        "target/circuits/n_attribute_units": float(attribute_units.sum()),
    }
    if lookup.any():
        metrics["target/circuits/lookup_read_cos_v"] = best_cos(w_in[lookup], world.animal_directions, E).mean().item()
        metrics["target/circuits/lookup_read_entity_share"] = (
            ((w_in[lookup] @ E.T).norm(dim=1) / w_in[lookup].norm(dim=1)).mean().item()
        )
    if attribute_units.any():
        metrics["target/circuits/attribute_read_cos_u"] = (
            best_cos(w_in[attribute_units], world.attribute_directions, E).mean().item()
        )
    if len(model.blocks) == 1:  # the gradient formula in `attribute_circuits` is for one layer
        circuits = attribute_circuits(model, world)
        metrics |= {
            "target/circuits/attribute_effective_read_cos_u": circuits.effective_cos.mean().item(),
            "target/circuits/attribute_effective_read_cos_u_min": circuits.effective_cos.min().item(),
            "target/circuits/attribute_read_purity": circuits.purity.mean().item(),
            "target/circuits/attribute_units_per_question": circuits.active_units.mean().item(),
        }
    return metrics
