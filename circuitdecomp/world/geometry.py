"""Directions of the world: a random rotation of the residual space cut into entity and context subspaces."""

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdecomp.world.config import ProfileKind, WorldConfig


@dataclass(frozen=True)
class Geometry:
    """Orthonormal rows of one random rotation: attributes u_j, other-kind directions, context basis."""

    attribute_directions: Float[Tensor, "n_attributes d_model"]
    kind_directions: Float[Tensor, "n_kinds d_model"]  # 'house', 'economy': outside the attribute span
    context_basis: Float[Tensor, "d_context d_model"]  # complement of the entity subspace (questions live here)

    @property
    def entity_basis(self) -> Float[Tensor, "d_entity d_model"]:
        return torch.cat([self.attribute_directions, self.kind_directions])

    def context_projector(self) -> Float[Tensor, "d_model d_model"]:
        """P with P x = the part of x outside the entity subspace (symmetric)."""
        return self.context_basis.T @ self.context_basis


def random_rotation(d: int, gen: torch.Generator) -> Float[Tensor, "d_model d_model"]:
    """Haar-random orthogonal matrix (QR of a Gaussian with the sign fix), rows orthonormal."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # without the sign fix QR is not Haar-distributed
    return q.T.contiguous()


def make_geometry(cfg: WorldConfig, gen: torch.Generator) -> Geometry:
    """Split a random rotation: first n_attributes rows are u_j, then kind directions, the rest is context."""
    rows = random_rotation(cfg.resid_dim, gen)
    a, e = cfg.n_attributes, cfg.entity_dim
    return Geometry(rows[:a].float(), rows[a:e].float(), rows[e:].float())


def make_profiles(cfg: WorldConfig, gen: torch.Generator) -> Float[Tensor, "n_animals n_attributes"]:
    """Attribute profiles A, drawn per `cfg.profile`; rows are never zero."""
    shape = (cfg.n_animals, cfg.n_attributes)
    profiles = torch.randn(shape, generator=gen, dtype=torch.float64)
    match cfg.profile:
        case ProfileKind.gaussian:
            pass
        case ProfileKind.anisotropic:
            profiles = profiles * torch.linspace(2.0, 0.5, cfg.n_attributes, dtype=torch.float64)
        case ProfileKind.sparse:
            # exactly k non-zero attributes per animal, k >= 2: with one, animals sharing it would coincide (+-u_j)
            k = min(cfg.n_attributes, max(2, round(cfg.sparse_density * cfg.n_attributes)))
            support = torch.rand(shape, generator=gen).argsort(dim=1)[:, :k]
            keep = torch.zeros(shape, dtype=torch.bool).scatter_(1, support, True)
            profiles = profiles * keep
    return profiles.float()


def animal_coefficients(profiles: Float[Tensor, "n_animals n_attributes"]) -> Float[Tensor, "n_animals n_attributes"]:
    """Normalised profiles: the coefficients of v_i on the u_j (rows of unit norm)."""
    return profiles / profiles.norm(dim=1, keepdim=True)


def nearest_neighbour_cos(directions: Float[Tensor, "n d_model"]) -> Float[Tensor, " n"]:
    """Largest cosine of each unit row with any other row (how crowded the animals are)."""
    cos = directions @ directions.T
    cos.fill_diagonal_(-2.0)
    return cos.max(dim=1).values
