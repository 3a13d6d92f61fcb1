"""Token layout of the world: which vocabulary ids are entities, questions, modifiers and answers."""

from dataclasses import dataclass
from enum import IntEnum

from circuitdecomp.world.config import WorldConfig

SEQ_LEN = 3  # [question, modifier, entity]; the answer is read at the entity's own position
READOUT_POS = 2


class Modifier(IntEnum):
    """Modifier slot of a sequence; `plain` means no modifier. Value = sign of the size shift."""

    tiny = -1
    plain = 0
    huge = 1


@dataclass(frozen=True)
class Vocab:
    """Contiguous id ranges, in this order: animals, houses, economies, questions, modifiers, answers."""

    n_animals: int
    n_houses: int
    n_economies: int
    n_attribute_questions: int
    n_facts: int
    n_fact_answers: int

    @classmethod
    def of(cls, cfg: WorldConfig) -> "Vocab":
        return cls(cfg.n_animals, cfg.n_houses, cfg.n_economies, len(cfg.asked_attributes), cfg.n_facts, cfg.n_fact_answers)

    def animal(self, i: int) -> int:
        return i

    def house(self, h: int) -> int:
        return self.n_animals + h

    def economy(self, e: int) -> int:
        return self.n_animals + self.n_houses + e

    @property
    def n_entities(self) -> int:
        return self.n_animals + self.n_houses + self.n_economies

    def attribute_question(self, q: int) -> int:
        """Token of the q-th attribute question (q indexes `WorldConfig.asked_attributes`)."""
        return self.n_entities + q

    def fact_question(self, f: int) -> int:
        return self.n_entities + self.n_attribute_questions + f

    @property
    def n_questions(self) -> int:
        return self.n_attribute_questions + self.n_facts

    def modifier(self, m: Modifier) -> int:
        return self.n_entities + self.n_questions + (int(m) + 1)

    @property
    def answers_start(self) -> int:
        return self.n_entities + self.n_questions + len(Modifier)

    @property
    def no(self) -> int:
        return self.answers_start

    @property
    def yes(self) -> int:
        return self.answers_start + 1

    def fact_answer(self, f: int, k: int) -> int:
        """Token of answer k to fact f (each fact has its own answer tokens)."""
        return self.answers_start + 2 + f * self.n_fact_answers + k

    @property
    def d_vocab(self) -> int:
        return self.answers_start + 2 + self.n_facts * self.n_fact_answers
