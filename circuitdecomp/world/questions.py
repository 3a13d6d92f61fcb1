"""Every question the world can ask, with its answer, question type and train/held-out split.

Each type's rows and held-out rule come from the registry (`question_types.QUESTION_TYPES`); this module only
puts them into one table, in a fixed order, and draws the split.
"""

from dataclasses import dataclass, fields

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuitdecomp.world.config import WorldConfig
from circuitdecomp.world.question_types import QUESTION_TYPES, Rows, SplitDraws, WorldTables
from circuitdecomp.world.vocab import Vocab


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


def _table(vocab: Vocab, rows: Rows, qtype: int) -> dict[str, Tensor]:
    """The columns of one block of rows of question type `qtype`."""
    k = rows.entity.shape[0]
    tokens = torch.stack([torch.full((k,), rows.token), torch.full((k,), vocab.modifier(rows.modifier)), rows.entity], dim=1)
    return {
        "tokens": tokens,
        "answer": rows.answer,
        "qtype": torch.full((k,), qtype),
        "entity": rows.entity,
        "question": torch.full((k,), rows.question),
        "modifier": torch.full((k,), int(rows.modifier)),
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
    """All valid inputs: every registered type's rows, ordered by question index, then modifier, then type id
    (the order world files have always had: the split's draws depend on it)."""
    tables = WorldTables(cfg, vocab, attribute_values, attribute_scale, house_sizes, economy_sizes, fact_answers)
    blocks = [(rows, qtype) for qtype, spec in enumerate(QUESTION_TYPES) for rows in spec.rows(tables)]
    blocks.sort(key=lambda b: (b[0].question, int(b[0].modifier), b[1]))
    parts = [_table(vocab, rows, qtype) for rows, qtype in blocks]
    table = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return Examples(**table, is_train=_split(cfg, table, gen))


def _split(cfg: WorldConfig, table: dict[str, Tensor], gen: torch.Generator) -> Bool[Tensor, " n"]:
    """Training rows: each type's `held_out` rule picks its held-out rows from draws shared by every type.

    Both draws are made for the whole table whatever the types (a held-out pair per (question, entity), a held-out
    flag per row), so a type's rule changes which draws it reads, never the draws of the others.
    """
    n_entities = cfg.n_animals + cfg.n_houses + cfg.n_economies
    pair = table["question"] * n_entities + table["entity"]
    held_pair = torch.rand(cfg.n_questions * n_entities, generator=gen) < cfg.holdout_fraction
    held_row = torch.rand(pair.shape[0], generator=gen) < cfg.holdout_fraction
    draws = SplitDraws(pair=held_pair[pair], row=held_row, modifier=table["modifier"])
    held = torch.zeros_like(held_row)
    for qtype, spec in enumerate(QUESTION_TYPES):
        mine = table["qtype"] == qtype
        held[mine] = spec.held_out(draws)[mine]
    return ~held
