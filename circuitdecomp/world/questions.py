"""Every question the world can ask, with its answer, question type and train/held-out split."""

from dataclasses import dataclass, fields

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuitdecomp.world.config import WorldConfig
from circuitdecomp.world.vocab import Modifier, QuestionType, Vocab


@dataclass(frozen=True)
class Examples:
    """A table of inputs [question, modifier, entity] with answers; rows in a fixed, seeded order."""

    tokens: Int[Tensor, "n 3"]
    answer: Int[Tensor, " n"]
    qtype: Int[Tensor, " n"]
    entity: Int[Tensor, " n"]  # entity id = the entity's token id (animals first)
    question: Int[Tensor, " n"]  # question index: attribute questions, then facts
    modifier: Int[Tensor, " n"]  # -1 tiny, 0 plain, +1 huge
    is_train: Bool[Tensor, " n"]

    def __len__(self) -> int:
        return self.answer.shape[0]

    def subset(self, keep: Bool[Tensor, " n"] | Int[Tensor, " k"]) -> "Examples":
        """Rows selected by a mask or an index."""
        return Examples(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    def as_dict(self) -> dict[str, Tensor]:
        return {f"examples_{f.name}": getattr(self, f.name) for f in fields(self)}


def _rows(
    vocab: Vocab,
    question: int,
    q_token: int,
    entity: Int[Tensor, " k"],
    modifier: int,
    answer: Int[Tensor, " k"],
    qtype: QuestionType,
) -> dict[str, Tensor]:
    k = entity.shape[0]
    tokens = torch.stack([torch.full((k,), q_token), torch.full((k,), vocab.modifier(Modifier(modifier))), entity], dim=1)
    return {
        "tokens": tokens,
        "answer": answer,
        "qtype": torch.full((k,), int(qtype)),
        "entity": entity,
        "question": torch.full((k,), question),
        "modifier": torch.full((k,), modifier),
    }


def enumerate_examples(
    cfg: WorldConfig,
    vocab: Vocab,
    attribute_values: Float[Tensor, "n_animals n_attributes"],
    attribute_scale: Float[Tensor, " n_attributes"],
    house_sizes: Float[Tensor, " n_houses"],
    economy_sizes: Float[Tensor, " n_economies"],
    fact_answers: Int[Tensor, "n_animals n_facts"],
    gen: torch.Generator,
) -> Examples:
    """All valid inputs. Attribute answers are yes iff the (shifted) value > 0; pairs within the margin are not asked."""
    parts: list[dict[str, Tensor]] = []
    animals = torch.arange(cfg.n_animals)
    sized = [
        (animals, attribute_values[:, cfg.size_attribute], QuestionType.size_animal),
        (vocab.house(0) + torch.arange(cfg.n_houses), house_sizes, QuestionType.size_house),
        (vocab.economy(0) + torch.arange(cfg.n_economies), economy_sizes, QuestionType.size_economy),
    ]
    for q, j in enumerate(cfg.asked_attributes):
        margin = cfg.attribute_margin * attribute_scale[j]
        for m in Modifier:
            if j == cfg.size_attribute:
                # the shared size question: modifiers shift the value, and houses/economies are asked too
                groups = [(e, v + cfg.modifier_shift * attribute_scale[j] * int(m), t) for e, v, t in sized]
            else:
                groups = [(animals, attribute_values[:, j], QuestionType.attribute)]
            for ents, value, qtype in groups:
                asked = value.abs() >= margin
                parts.append(
                    _rows(
                        vocab,
                        q,
                        vocab.attribute_question(q),
                        ents[asked],
                        int(m),
                        torch.where(value[asked] > 0, vocab.yes, vocab.no),
                        qtype,
                    )
                )
    for f in range(cfg.n_facts):
        for m in Modifier:
            answers = vocab.fact_answer(f, 0) + fact_answers[:, f]
            parts.append(
                _rows(vocab, len(cfg.asked_attributes) + f, vocab.fact_question(f), animals, int(m), answers, QuestionType.fact)
            )
    table = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return Examples(**table, is_train=_split(cfg, table, gen))


def _split(cfg: WorldConfig, table: dict[str, Tensor], gen: torch.Generator) -> Bool[Tensor, " n"]:
    """Held-out rows: whole (attribute question, entity) pairs, and modified variants of (fact, animal) pairs.

    Holding out every modifier of an attribute pair means only a circuit that reads the attribute direction
    can answer it. A fact cannot be inferred, so its plain variant always stays in training and only the
    'tiny'/'huge' variants are held out: they test that look-ups ignore the modifier.
    """
    n_entities = cfg.n_animals + cfg.n_houses + cfg.n_economies
    pair = table["question"] * n_entities + table["entity"]
    held_pair = torch.rand(cfg.n_questions * n_entities, generator=gen) < cfg.holdout_fraction
    held_row = torch.rand(pair.shape[0], generator=gen) < cfg.holdout_fraction
    is_fact = table["qtype"] == int(QuestionType.fact)
    held = torch.where(is_fact, held_row & (table["modifier"] != 0), held_pair[pair])
    return ~held
