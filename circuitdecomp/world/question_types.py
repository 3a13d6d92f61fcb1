"""Every question type of the world, declared once: its rows, its held-out rule and its share of the batches.

`QUESTION_TYPES` is the registry. Everything else reads it: the example table (`questions.enumerate_examples`
and its split), the batch sampler, the defaults and validation of `target.question_mix` and `decompose_mix`,
accuracy per type (`target/accuracy/<name>`), the decomposition's per-type checks and the report. A type's id
(the value stored in `examples_qtype` of `world.safetensors`) is its position here: append new types at the end,
so that saved worlds keep their meaning. docs/extending.md says how to add one.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuitdecomp.frozen import check
from circuitdecomp.world.config import WorldConfig
from circuitdecomp.world.vocab import Modifier, Vocab

Family = Literal["attributes", "animals"]  # the ground truth a type's answers read: u_j, or v_i (the recovery families)
Mix = Literal["target", "decompose"]


@dataclass(frozen=True)
class WorldTables:
    """What a question type's rows are computed from: the config, the token layout and the world's tables."""

    cfg: WorldConfig
    vocab: Vocab
    attribute_values: Float[Tensor, "n_animals n_attributes"]
    attribute_scale: Float[Tensor, " n_attributes"]
    house_sizes: Float[Tensor, " n_houses"]
    economy_sizes: Float[Tensor, " n_economies"]
    fact_answers: Int[Tensor, "n_animals n_facts"]


@dataclass(frozen=True)
class Rows:
    """One block of rows: one question asked of some entities under one modifier."""

    question: int  # question index: attribute questions (in `WorldConfig.asked_attributes` order), then facts
    token: int  # the question's token id
    modifier: Modifier
    entity: Int[Tensor, " k"]  # entity token ids
    answer: Int[Tensor, " k"]  # answer token ids


@dataclass(frozen=True)
class SplitDraws:
    """The split's random draws, per row of the whole table (drawn once for every type, so the split is seeded
    the same whatever the types): was the row's (question, entity) pair drawn held out, was the row itself."""

    pair: Bool[Tensor, " n"]
    row: Bool[Tensor, " n"]
    modifier: Int[Tensor, " n"]


@dataclass(frozen=True)
class QuestionTypeSpec:
    """One question type: what it tests, its rows, its held-out rule and its default share of the batches."""

    name: str  # the key of the mixes and of `target/accuracy/<name>`
    description: str  # one line: what the question tests
    reads: Family  # the ground truth its answers read; `animals` types get target.act_l1 (look-ups of v_i)
    rows: Callable[[WorldTables], list[Rows]]  # every valid (question, modifier, entity) with its answer
    answers: Callable[[Vocab], list[int]]  # the answer tokens its rows may have
    held_out: Callable[[SplitDraws], Bool[Tensor, " n"]]  # which rows of the whole table to hold out (read where mine)
    target_weight: float  # share of target training's batches (`target.question_mix`)
    decompose_weight: float  # share of the decomposition's batches (`decompose_mix`)


def _yes_no(w: WorldTables, q: int, j: int, m: Modifier, entities: Int[Tensor, " k"], value: Float[Tensor, " k"]) -> Rows:
    """Attribute question q (reading attribute j): yes iff the value > 0; values within the margin are not asked."""
    asked = value.abs() >= w.cfg.attribute_margin * w.attribute_scale[j]
    answer = torch.where(value[asked] > 0, w.vocab.yes, w.vocab.no)
    return Rows(q, w.vocab.attribute_question(q), m, entities[asked], answer)


def _attribute_rows(w: WorldTables) -> list[Rows]:
    animals = torch.arange(w.cfg.n_animals)
    return [
        _yes_no(w, q, j, m, animals, w.attribute_values[:, j])
        for q, j in enumerate(w.cfg.asked_attributes)
        if j != w.cfg.size_attribute  # the size attribute's question is the size types' (all entity kinds)
        for m in Modifier
    ]


def _size_rows(
    sized: Callable[[WorldTables], tuple[Int[Tensor, " k"], Float[Tensor, " k"]]],
) -> Callable[[WorldTables], list[Rows]]:
    """The shared size question asked of the entities `sized` returns (with their sizes); modifiers shift the size."""

    def rows(w: WorldTables) -> list[Rows]:
        j = w.cfg.size_attribute
        q = w.cfg.asked_attributes.index(j)
        entities, size = sized(w)
        return [_yes_no(w, q, j, m, entities, size + w.cfg.modifier_shift * w.attribute_scale[j] * int(m)) for m in Modifier]

    return rows


def _fact_rows(w: WorldTables) -> list[Rows]:
    animals = torch.arange(w.cfg.n_animals)
    first = len(w.cfg.asked_attributes)
    return [
        Rows(first + f, w.vocab.fact_question(f), m, animals, w.vocab.fact_answer(f, 0) + w.fact_answers[:, f])
        for f in range(w.cfg.n_facts)
        for m in Modifier
    ]


def _yes_no_answers(vocab: Vocab) -> list[int]:
    return [vocab.no, vocab.yes]


def _fact_answers(vocab: Vocab) -> list[int]:
    return list(range(vocab.fact_answer(0, 0), vocab.d_vocab))


def hold_out_pairs(d: SplitDraws) -> Bool[Tensor, " n"]:
    """Whole (question, entity) pairs, every modifier with them: only a circuit that reads the direction answers them."""
    return d.pair


def hold_out_modified(d: SplitDraws) -> Bool[Tensor, " n"]:
    """Only 'tiny'/'huge' variants: a look-up cannot be inferred, so its plain variant always stays in training and the
    held-out variants test that it ignores the modifier."""
    return d.row & (d.modifier != 0)


# Weights: facts are ~10% of all inputs but need memorising per animal, so the target samples them a quarter of
# the time; the decomposition gives them 60%, as each look-up is its own rare circuit that needs its inputs often
# enough per batch to win against the minimality term (docs/results_log.md, session 5).
QUESTION_TYPES: tuple[QuestionTypeSpec, ...] = (
    QuestionTypeSpec(
        name="attribute",
        description="a non-size attribute of an animal: yes iff its value on u_j is > 0",
        reads="attributes",
        rows=_attribute_rows,
        answers=_yes_no_answers,
        held_out=hold_out_pairs,
        target_weight=0.45,
        decompose_weight=0.2,
    ),
    QuestionTypeSpec(
        name="size_animal",
        description="the shared size question (u_size) on animals; 'tiny'/'huge' shift the size",
        reads="attributes",
        rows=_size_rows(lambda w: (torch.arange(w.cfg.n_animals), w.attribute_values[:, w.cfg.size_attribute])),
        answers=_yes_no_answers,
        held_out=hold_out_pairs,
        target_weight=0.15,
        decompose_weight=0.1,
    ),
    QuestionTypeSpec(
        name="size_house",
        description="the same size question on houses (u_size plus the 'house' direction)",
        reads="attributes",
        rows=_size_rows(lambda w: (w.vocab.house(0) + torch.arange(w.cfg.n_houses), w.house_sizes)),
        answers=_yes_no_answers,
        held_out=hold_out_pairs,
        target_weight=0.1,
        decompose_weight=0.05,
    ),
    QuestionTypeSpec(
        name="size_economy",
        description="the same size question on economies (u_size plus the 'economy' direction)",
        reads="attributes",
        rows=_size_rows(lambda w: (w.vocab.economy(0) + torch.arange(w.cfg.n_economies), w.economy_sizes)),
        answers=_yes_no_answers,
        held_out=hold_out_pairs,
        target_weight=0.05,
        decompose_weight=0.05,
    ),
    QuestionTypeSpec(
        name="fact",
        description="an animal-specific fact with random answers: only a look-up of the animal's v_i answers it",
        reads="animals",
        rows=_fact_rows,
        answers=_fact_answers,
        held_out=hold_out_modified,
        target_weight=0.25,
        decompose_weight=0.6,
    ),
)

NAMES: list[str] = [t.name for t in QUESTION_TYPES]

# The ids as an enum, for code that names one type (`QuestionType.fact`); derived, so the registry stays the one list
QuestionType = IntEnum("QuestionType", [(t.name, i) for i, t in enumerate(QUESTION_TYPES)], module=__name__)
QuestionType.__doc__ = "Id of each registered question type (its position in `QUESTION_TYPES`; `examples_qtype`)."


def type_id(name: str) -> int:
    """The id of the registered question type `name`."""
    if name not in NAMES:
        raise ValueError(f"question type {name!r} is not registered; known: {NAMES} (circuitdecomp/world/question_types.py)")
    return NAMES.index(name)


def ids_reading(family: Family) -> Int[Tensor, " k"]:
    """Ids of the question types whose answers read `family` ('attributes': u_j, 'animals': v_i)."""
    return torch.tensor([i for i, t in enumerate(QUESTION_TYPES) if t.reads == family], dtype=torch.long)


def default_mix(which: Mix) -> dict[str, float]:
    """The registry's default weights of target training (`target`) or of the decomposition (`decompose`)."""
    return {t.name: t.target_weight if which == "target" else t.decompose_weight for t in QUESTION_TYPES}


def check_mix(mix: Mapping[str, float], key: str) -> None:
    """Refuse (ConfigError) a question mix that names an unregistered type or has no positive weight; `key` names it."""
    unknown = sorted(set(mix) - set(NAMES))
    check(
        not unknown,
        f"{key} has unknown question types {unknown}; known: {NAMES} (registered in circuitdecomp/world/question_types.py)",
    )
    check(
        all(w >= 0 for w in mix.values()) and sum(mix.values()) > 0,
        f"{key}={dict(mix)} needs non-negative weights with a positive sum",
    )
