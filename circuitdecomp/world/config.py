"""The synthetic animal/attribute world's config: sizes, profile distribution, questions, held-out split."""

from dataclasses import dataclass
from enum import Enum

from circuitdecomp.frozen import Frozen, check

N_MODIFIER_CHANNELS = 2  # context directions the planted target reserves: the size shift and the fact flag


class ProfileKind(str, Enum):
    """How animal attribute profiles A [n_animals, n_attributes] are drawn."""

    gaussian = "gaussian"  # isotropic: animal directions uniform on the entity sphere; no activation-only method can find u_j
    anisotropic = "anisotropic"  # per-attribute scales from 2 down to 0.5: the attribute basis is PCA-identifiable
    sparse = "sparse"  # each animal has a random `sparse_density` share (at least 2) of non-zero attributes


@dataclass
class WorldConfig(Frozen):
    """Everything that decides a world; with the top-level seed it fixes every direction, table and split."""

    name: str = "demo"
    n_attributes: int = 32
    n_animals: int = 512  # ~14 training animals per attribute dimension (256: a linear read-out of the embeddings
    # reaches only 98.0% held-out on attribute questions, world/attribute_linear_ceiling)
    d_model: int | None = None  # None: the smallest multiple of 16 that fits (see `resid_dim`)
    profile: ProfileKind = ProfileKind.gaussian  # Experimental: anisotropic / sparse (the target missed 99% on both, session 3)
    sparse_density: float = 0.25  # only for profile=sparse
    n_houses: int = 64  # houses: a size and a shared 'house' direction outside the attribute span
    n_economies: int = 32  # economies: likewise, with an 'economy' direction
    size_attribute: int = 0  # the attribute that houses and economies share with animals
    attribute_questions: list[int] | None = None  # attributes that get a yes/no question; None: every attribute
    n_facts: int = 3  # animal-specific look-up questions (habitat, diet, ...)
    n_fact_answers: int = 8  # answers per fact; answer tuples are unique per animal
    # in attribute std units: (entity, question) pairs closer to the threshold are not asked (0.25: the trained target
    # reached 98.6% held-out; results log, session 3)
    attribute_margin: float = 0.5
    modifier_shift: float = 1.0  # 'tiny' / 'huge' shift the size value by -/+ this many attribute stds
    holdout_fraction: float = 0.1  # share of (question, entity) pairs kept out of training

    def __post_init__(self) -> None:
        check(bool(self.name), "world.name is empty; give the world a name (it titles figures)")
        check(
            self.n_animals >= 1, f"world.n_animals={self.n_animals}: a world needs at least one animal; set world.n_animals >= 1"
        )
        check(self.n_attributes >= 1, f"world.n_attributes={self.n_attributes}: set world.n_attributes >= 1")
        check(self.n_houses >= 0 and self.n_economies >= 0, "world.n_houses and world.n_economies must be >= 0")
        check(
            0 <= self.size_attribute < self.n_attributes,
            f"world.size_attribute={self.size_attribute} names a missing attribute: the world has attributes "
            f"0..{self.n_attributes - 1}; pick one of those or raise world.n_attributes",
        )
        for j in self.attribute_questions or []:
            check(
                0 <= j < self.n_attributes,
                f"world.attribute_questions contains {j}, a missing attribute: the world has attributes "
                f"0..{self.n_attributes - 1}; drop it or raise world.n_attributes",
            )
        if self.attribute_questions is not None:
            check(
                len(set(self.attribute_questions)) == len(self.attribute_questions),
                f"world.attribute_questions={self.attribute_questions} repeats an attribute; list each once",
            )
            check(
                self.size_attribute in self.attribute_questions,
                f"world.attribute_questions={self.attribute_questions} lacks world.size_attribute={self.size_attribute}: "
                "the shared size question needs it; add it",
            )
        check(self.n_facts >= 1 and self.n_fact_answers >= 2, "world.n_facts must be >= 1 and world.n_fact_answers >= 2")
        check(
            self.n_fact_answers**self.n_facts >= self.n_animals,
            f"world.n_fact_answers**world.n_facts = {self.n_fact_answers}**{self.n_facts} < world.n_animals={self.n_animals}: "
            "answer tuples cannot be unique per animal; raise world.n_facts or world.n_fact_answers",
        )
        check(0 < self.sparse_density <= 1, f"world.sparse_density={self.sparse_density} must be in (0, 1]")
        check(0 <= self.attribute_margin < 1, f"world.attribute_margin={self.attribute_margin} must be in [0, 1)")
        check(self.modifier_shift >= 0, f"world.modifier_shift={self.modifier_shift} must be >= 0")
        check(0 <= self.holdout_fraction < 0.5, f"world.holdout_fraction={self.holdout_fraction} must be in [0, 0.5)")
        if self.d_model is not None:
            check(
                self.n_attributes <= self.d_model,
                f"world.n_attributes={self.n_attributes} exceeds world.d_model={self.d_model}: attribute directions "
                "must be orthonormal in the residual stream; raise world.d_model (or set it to null) or lower world.n_attributes",
            )
            check(
                self.d_model >= self.min_d_model,
                f"world.d_model={self.d_model} is too small: {self.entity_dim} entity directions plus {self.context_dim_needed} "
                f"context directions (one per question, {N_MODIFIER_CHANNELS} for modifiers and the fact flag) need "
                f"d_model >= {self.min_d_model} (and >= {self.n_answers} answer tokens); "
                "raise world.d_model or set it to null (automatic)",
            )
        super().__post_init__()

    @property
    def asked_attributes(self) -> list[int]:
        """Attributes that have a question, in question order."""
        return list(range(self.n_attributes)) if self.attribute_questions is None else list(self.attribute_questions)

    @property
    def n_kinds(self) -> int:
        """Entity kinds besides animals (houses, economies) that are present."""
        return int(self.n_houses > 0) + int(self.n_economies > 0)

    @property
    def n_questions(self) -> int:
        return len(self.asked_attributes) + self.n_facts

    @property
    def entity_dim(self) -> int:
        """Dimension of the entity subspace: attribute span plus one direction per other kind."""
        return self.n_attributes + self.n_kinds

    @property
    def context_dim_needed(self) -> int:
        """Context directions the planted target needs: orthonormal question codes plus modifier and fact flag."""
        return self.n_questions + N_MODIFIER_CHANNELS

    @property
    def n_answers(self) -> int:
        """Answer tokens: yes, no, and n_fact_answers per fact."""
        return 2 + self.n_facts * self.n_fact_answers

    @property
    def min_d_model(self) -> int:
        # the planted target also needs an orthonormal unembedding direction per answer
        return max(self.entity_dim + self.context_dim_needed, self.n_answers)

    @property
    def resid_dim(self) -> int:
        """The residual width actually used: world.d_model, or the smallest multiple of 16 that fits."""
        return self.d_model if self.d_model is not None else -(-self.min_d_model // 16) * 16
