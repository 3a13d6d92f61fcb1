"""A sparse autoencoder with four sparsity mechanisms (ReLU + L1, TopK, BatchTopK, Matryoshka) and its losses.

It knows nothing about language models: it encodes and decodes rows of `d_model` numbers.
  z = act((x - b_dec) W_enc + b_enc),   x̂ = z W_dec + b_dec,   rows of W_dec have unit norm,
so a latent's value is the coefficient of its decoder direction in the reconstruction.
"""

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from circuitdecomp.baselines.config import SAEKind, SAESpec


class SAEOutput(NamedTuple):
    latents: Float[Tensor, "batch n_latents"]
    pre: Float[Tensor, "batch n_latents"]  # pre-activations (AuxK picks dead latents from these)
    recon: Float[Tensor, "batch d_model"]


class SparseAutoencoder(nn.Module):
    """One SAE; `spec` fixes its kind, width and sparsity."""

    def __init__(self, spec: SAESpec, d_model: int, generator: torch.Generator) -> None:
        super().__init__()
        self.spec = spec
        w_dec = torch.randn(spec.width, d_model, generator=generator)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())  # tied initialisation (Gao et al. 2024; Conerly et al. 2024)
        self.b_enc = nn.Parameter(torch.zeros(spec.width))
        self.b_dec = nn.Parameter(torch.zeros(d_model))  # the pre-encoder bias: subtracted before encoding
        # BatchTopK's inference threshold: an EMA of the smallest activation each training batch kept
        self.register_buffer("threshold", torch.tensor(0.0))

    def pre_activations(self, x: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch n_latents"]:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "batch n_latents"], batch_sparsity: bool) -> Float[Tensor, "batch n_latents"]:
        """Sparse non-negative latents; `batch_sparsity` picks BatchTopK's batch-wide top k (training) over its threshold."""
        z = torch.relu(pre)
        match self.spec.kind:
            case SAEKind.relu:
                return z
            case SAEKind.topk:
                return z * top_k_mask(z, self.spec.k)
            case SAEKind.batchtopk | SAEKind.matryoshka:
                if batch_sparsity:
                    return z * batch_top_k_mask(z, self.spec.k)
                return z * (z > self.threshold)

    def decode(self, latents: Float[Tensor, "batch n_latents"]) -> Float[Tensor, "batch d_model"]:
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "batch d_model"], batch_sparsity: bool = False) -> SAEOutput:
        pre = self.pre_activations(x)
        z = self.activate(pre, batch_sparsity)
        return SAEOutput(z, pre, self.decode(z))

    @torch.no_grad()
    def update_threshold(self, latents: Float[Tensor, "batch n_latents"], momentum: float) -> None:
        """BatchTopK: move the inference threshold towards the smallest latent this batch kept."""
        kept = latents[latents > 0]
        if kept.numel() > 0:
            self.threshold.mul_(momentum).add_((1 - momentum) * kept.min())

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Unit-norm decoder rows (after each optimiser step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def reinitialise(self, idx: Int[Tensor, " n"], directions: Float[Tensor, "n d_model"]) -> None:
        """Point latents `idx` at new unit directions (decoder and encoder), their encoder norm that of the other latents."""
        others = torch.ones(self.spec.width, dtype=torch.bool)
        others[idx] = False
        scale = self.W_enc[:, others].norm(dim=0).mean() if bool(others.any()) else torch.tensor(1.0)
        self.W_dec[idx] = directions
        self.W_enc[:, idx] = directions.T * scale
        self.b_enc[idx] = 0.0

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Drop the gradient component along each decoder row: the step then only rotates it (norm stays ~1)."""
        g = self.W_dec.grad
        if g is not None:
            g -= (g * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec


def top_k_mask(z: Float[Tensor, "batch n_latents"], k: int) -> Float[Tensor, "batch n_latents"]:
    """1 at each row's k largest entries, 0 elsewhere."""
    return torch.zeros_like(z).scatter_(1, z.topk(k, dim=1, sorted=False).indices, 1.0)


def batch_top_k_mask(z: Float[Tensor, "batch n_latents"], k: int) -> Float[Tensor, "batch n_latents"]:
    """1 at the k * batch largest positive entries of the whole batch: k per input on average, more where needed."""
    flat = z.flatten()
    n_keep = min(k * z.shape[0], flat.numel())
    # the n_keep-th largest value as a threshold (ties have probability 0); unsorted topk is the fastest way on CPU
    threshold = flat.topk(n_keep, sorted=False).values.min()
    return ((z >= threshold) & (z > 0)).float()


def mse(recon: Float[Tensor, "batch d_model"], x: Float[Tensor, "batch d_model"]) -> Float[Tensor, ""]:
    """Squared error summed over d_model, averaged over the batch."""
    return (recon - x).pow(2).sum(dim=1).mean()


def matryoshka_loss(
    sae: SparseAutoencoder, latents: Float[Tensor, "batch n_latents"], x: Float[Tensor, "batch d_model"]
) -> Float[Tensor, ""]:
    """Mean reconstruction error of the nested prefixes, each decoding alone (the full width is the last prefix)."""
    errors = [mse(latents[:, :m] @ sae.W_dec[:m] + sae.b_dec, x) for m in sae.spec.prefix_sizes]
    return torch.stack(errors).mean()


def l1_penalty(latents: Float[Tensor, "batch n_latents"]) -> Float[Tensor, ""]:
    """Sum of latent values per input, averaged (decoder rows have unit norm, so no norm weighting is needed)."""
    return latents.sum(dim=1).mean()


def aux_k_loss(
    sae: SparseAutoencoder,
    pre: Float[Tensor, "batch n_latents"],
    residual: Float[Tensor, "batch d_model"],
    dead: Bool[Tensor, " n_latents"],
    k_aux: int,
) -> Float[Tensor, ""]:
    """AuxK (Gao et al. 2024): the top `k_aux` dead latents reconstruct the main error, relative to its variance."""
    n_dead = int(dead.sum())
    if n_dead == 0 or k_aux == 0:
        return pre.new_zeros(())
    z = pre.masked_fill(~dead, 0.0).clamp_min(0.0)
    z = z * top_k_mask(z, min(k_aux, n_dead))
    target = residual.detach()
    scale = (target - target.mean(dim=0)).pow(2).sum(dim=1).mean().clamp_min(1e-12)
    return mse(z @ sae.W_dec, target) / scale
