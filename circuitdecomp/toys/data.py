"""Sparse feature data shared by the toys: each feature on with probability p, value uniform in a range."""

import torch
from jaxtyping import Float
from torch import Tensor


def sparse_features(
    n: int, n_features: int, p: float, generator: torch.Generator, low: float = 0.0, high: float = 1.0
) -> Float[Tensor, "batch n_features"]:
    """Each entry independently active with probability p ("at least zero active"), value ~ U(low, high)."""
    on = torch.rand(n, n_features, generator=generator) < p
    values = torch.rand(n, n_features, generator=generator) * (high - low) + low
    return values * on
