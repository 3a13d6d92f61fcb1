"""The world generated from a config and a seed, its ground-truth tables, and its file `world.safetensors`.

Keys of `world.safetensors` (all in the residual basis where circuits read them; d_model = `WorldConfig.resid_dim`):

* `attribute_directions` [n_attributes, d_model]: orthonormal u_j, a random rotation (not the first axes).
* `animal_directions` [n_animals, d_model]: unit v_i = sum_j attribute_values[i, j] u_j; the animal tokens' embedding rows.
* `attribute_values` [n_animals, n_attributes]: coefficients of v_i on the u_j (normalised profiles, unit rows).
* `profiles` [n_animals, n_attributes]: the raw profiles A before normalisation.
* `attribute_scale` [n_attributes]: std of each attribute's values over animals (the unit of margins and modifier shifts).
* `kind_directions` [n_kinds, d_model]: 'house', 'economy' directions, orthogonal to the attribute span.
* `house_sizes` [n_houses], `economy_sizes` [n_economies]: their size values (coefficient on u_size).
* `entity_embeddings` [n_entities, d_model]: fixed embedding rows of animals, houses, economies (token ids 0..n_entities-1).
* `entity_attribute_values` [n_entities, n_attributes], `entity_kind_values` [n_entities, n_kinds]: the true
  coefficients c'_j and kind coefficients of each entity's embedding.
* `context_basis` [d_context, d_model]: orthonormal complement of the entity subspace (question information lives here).
* `fact_answers` [n_animals, n_facts] (int64): answer index of each fact; rows are unique.
* `asked_attributes` [n_attribute_questions] (int64): the attribute each attribute question reads.
* `examples_tokens` [n, 3], `examples_answer`, `examples_qtype`, `examples_entity`, `examples_question`,
  `examples_modifier`, `examples_is_train` [n]: every valid input. Per-input ground truth at the read-out
  position (the entity's own position): c_i(x) = [examples_entity == i] for animals i, c'_j(x) =
  entity_attribute_values[examples_entity, j]; the modifier is question information, not an entity coefficient.

Metadata: `config` (the WorldConfig as JSON), `seed`, `size_attribute`, `circuits` (JSON: which circuit reads what).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitdecomp.rundir import WORLD_FILE
from circuitdecomp.runio import load_tensors, require_keys, save_tensors, to_plain
from circuitdecomp.world.config import WorldConfig
from circuitdecomp.world.geometry import Geometry, animal_coefficients, make_geometry, make_profiles
from circuitdecomp.world.questions import Examples, enumerate_examples
from circuitdecomp.world.vocab import Vocab


@dataclass(frozen=True)
class World:
    """Ground truth by construction: directions, tables and every valid input."""

    cfg: WorldConfig
    seed: int
    geometry: Geometry
    profiles: Float[Tensor, "n_animals n_attributes"]
    attribute_values: Float[Tensor, "n_animals n_attributes"]
    attribute_scale: Float[Tensor, " n_attributes"]
    house_sizes: Float[Tensor, " n_houses"]
    economy_sizes: Float[Tensor, " n_economies"]
    fact_answers: Int[Tensor, "n_animals n_facts"]
    examples: Examples

    @property
    def vocab(self) -> Vocab:
        return Vocab.of(self.cfg)

    @property
    def d_model(self) -> int:
        return self.cfg.resid_dim

    @property
    def attribute_directions(self) -> Float[Tensor, "n_attributes d_model"]:
        return self.geometry.attribute_directions

    @property
    def animal_directions(self) -> Float[Tensor, "n_animals d_model"]:
        return self.attribute_values @ self.geometry.attribute_directions

    @property
    def size_direction(self) -> Float[Tensor, " d_model"]:
        return self.geometry.attribute_directions[self.cfg.size_attribute]

    def entity_attribute_values(self) -> Float[Tensor, "n_entities n_attributes"]:
        """True c'_j of every entity: animals' values; houses and economies only have a size."""
        others = torch.zeros(self.cfg.n_houses + self.cfg.n_economies, self.cfg.n_attributes)
        others[:, self.cfg.size_attribute] = torch.cat([self.house_sizes, self.economy_sizes])
        return torch.cat([self.attribute_values, others])

    def entity_kind_values(self) -> Float[Tensor, "n_entities n_kinds"]:
        """Coefficient of each entity on each other-kind direction (1 for its own kind)."""
        kinds = torch.zeros(self.vocab.n_entities, self.cfg.n_kinds)
        col = 0
        for start, count in [
            (self.cfg.n_animals, self.cfg.n_houses),
            (self.cfg.n_animals + self.cfg.n_houses, self.cfg.n_economies),
        ]:
            if count:
                kinds[start : start + count, col] = 1.0
                col += 1
        return kinds

    def entity_embeddings(self) -> Float[Tensor, "n_entities d_model"]:
        """Fixed embedding rows: sum of attribute and kind coefficients times their directions."""
        return (
            self.entity_attribute_values() @ self.geometry.attribute_directions
            + self.entity_kind_values() @ self.geometry.kind_directions
        )

    def tensors(self) -> dict[str, Tensor]:
        """Everything `world.safetensors` holds (keys documented in this module's docstring)."""
        return {
            "attribute_directions": self.attribute_directions,
            "animal_directions": self.animal_directions,
            "attribute_values": self.attribute_values,
            "profiles": self.profiles,
            "attribute_scale": self.attribute_scale,
            "kind_directions": self.geometry.kind_directions,
            "context_basis": self.geometry.context_basis,
            "house_sizes": self.house_sizes,
            "economy_sizes": self.economy_sizes,
            "entity_embeddings": self.entity_embeddings(),
            "entity_attribute_values": self.entity_attribute_values(),
            "entity_kind_values": self.entity_kind_values(),
            "fact_answers": self.fact_answers,
            "asked_attributes": torch.tensor(self.cfg.asked_attributes, dtype=torch.long),
            **self.examples.as_dict(),
        }

    def circuits(self) -> dict[str, str]:
        """Which ideal circuit reads which direction (saved as metadata)."""
        size = self.cfg.size_attribute
        return {
            "attribute question q": "u_{asked_attributes[q]} (sign of the value)",
            "size question": f"u_{size} for animals, houses and economies, plus the modifier (question information)",
            "fact question f": "v_i of the animal (a look-up; answers are random per animal)",
        }


def fact_answer_table(cfg: WorldConfig, gen: torch.Generator) -> Int[Tensor, "n_animals n_facts"]:
    """Random answers per animal and fact, with answer tuples unique per animal."""
    n, k, f = cfg.n_animals, cfg.n_fact_answers, cfg.n_facts
    if k**f <= 1 << 22:  # few enough tuples: a random subset of all codes, read as base-k digits
        codes = torch.randperm(k**f, generator=gen)[:n]
        return torch.stack([(codes // k**p) % k for p in range(f)], dim=1)
    digits = torch.randint(0, k, (n, f), generator=gen)
    while True:  # many tuples: redraw the (rare) rows that collide until all are unique
        _, inverse, counts = torch.unique(digits, dim=0, return_inverse=True, return_counts=True)
        dup = counts[inverse] > 1
        if not bool(dup.any()):
            return digits
        digits[dup] = torch.randint(0, k, (int(dup.sum()), f), generator=gen)


def make_world(cfg: WorldConfig, seed: int) -> World:
    """Generate the world; the same (config, seed) always gives the same world."""
    gen = torch.Generator().manual_seed(seed)
    geometry = make_geometry(cfg, gen)
    profiles = make_profiles(cfg, gen)
    values = animal_coefficients(profiles)
    scale = values.std(dim=0).clamp_min(1e-6)
    size_scale = float(scale[cfg.size_attribute])
    # houses and economies draw sizes from the animals' size distribution, so one reader serves all three
    houses = torch.randn(cfg.n_houses, generator=gen) * size_scale
    economies = torch.randn(cfg.n_economies, generator=gen) * size_scale
    facts = fact_answer_table(cfg, gen)
    examples = enumerate_examples(cfg, Vocab.of(cfg), values, scale, houses, economies, facts, gen)
    return World(cfg, seed, geometry, profiles, values, scale, houses, economies, facts, examples)


def save_world(world: World, out_dir: Path) -> Path:
    """Write `world.safetensors` into the run dir."""
    meta = {
        "config": json.dumps(to_plain(world.cfg)),
        "seed": str(world.seed),
        "size_attribute": str(world.cfg.size_attribute),
        "circuits": json.dumps(world.circuits()),
    }
    return save_tensors(Path(out_dir) / WORLD_FILE, world.tensors(), meta)


def load_world_tensors(out_dir: Path) -> dict[str, Tensor]:
    """Read a run's `world.safetensors`, failing if the ground-truth keys are missing."""
    path = Path(out_dir) / WORLD_FILE
    tensors = load_tensors(path)
    require_keys(tensors, ["attribute_directions", "animal_directions", "attribute_values", "entity_embeddings"], path)
    return tensors
