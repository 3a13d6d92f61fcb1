"""Residual MLP "compressed computation": 100 features, y_i = x_i + ReLU(x_i), through 50 neurons."""

import logging

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from circuitdecomp.progress import progress
from circuitdecomp.toys.config import ResidMLPConfig
from circuitdecomp.toys.data import sparse_features

log = logging.getLogger(__name__)


class MLPBlock(nn.Module):
    def __init__(self, d_embed: int, d_mlp: int) -> None:
        super().__init__()
        self.mlp_in = nn.Linear(d_embed, d_mlp, bias=False)
        self.mlp_out = nn.Linear(d_mlp, d_embed, bias=False)

    def forward(self, resid: Tensor) -> Tensor:
        return self.mlp_out(F.relu(self.mlp_in(resid)))


class ResidMLP(nn.Module):
    """Fixed unit-norm random embedding W_E, read-off W_U = W_E^T, residual MLP blocks in between."""

    def __init__(self, cfg: ResidMLPConfig, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        W_E = torch.randn(cfg.n_features, cfg.d_embed, generator=gen)
        # a frozen Linear, not a bare matmul: SPD's masked passes reuse a module's recorded output (the embedding
        # runs once per step, not once per pass), and only modules can be recorded
        # (skip_init: no draw from the global RNG, so the MLP's initialisation is what it was with a bare buffer)
        self.embed = torch.nn.utils.skip_init(nn.Linear, cfg.n_features, cfg.d_embed, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_((W_E / W_E.norm(dim=-1, keepdim=True)).T)
        self.embed.requires_grad_(False)
        self.layers = nn.ModuleList(MLPBlock(cfg.d_embed, cfg.d_mlp) for _ in range(cfg.n_layers))

    @property
    def W_E(self) -> Float[Tensor, "n_features d_embed"]:
        return self.embed.weight.T

    def forward(self, x: Float[Tensor, "batch n_features"]) -> Float[Tensor, "batch n_features"]:
        resid = self.embed(x)
        for layer in self.layers:
            resid = resid + layer(resid)
        return resid @ self.embed.weight


def resid_labels(x: Tensor) -> Tensor:
    return x + F.relu(x)


def sample_resid(cfg: ResidMLPConfig, n: int, gen: torch.Generator) -> Tensor:
    return sparse_features(n, cfg.n_features, cfg.feature_prob, gen, low=-1.0, high=1.0)


def train_resid_mlp(cfg: ResidMLPConfig, seed: int) -> ResidMLP:
    """AdamW (wd 0.01), cosine lr, MSE to x + ReLU(x) on the read-off; the embedding stays fixed."""
    torch.manual_seed(seed)
    model = ResidMLP(cfg, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.train_steps))
    gen = torch.Generator().manual_seed(seed + 1)
    with progress(cfg.train_steps, "train resid MLP") as bar:
        for _ in range(cfg.train_steps):
            x = sample_resid(cfg, cfg.batch_size, gen)
            loss = (model(x) - resid_labels(x)).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    return model


def resid_mlp_quality(model: ResidMLP, cfg: ResidMLPConfig, seed: int) -> dict[str, float]:
    """Loss of the trained model against the naive baseline that outputs x (ignoring the ReLU part)."""
    gen = torch.Generator().manual_seed(seed + 2)
    x = sample_resid(cfg, 8192, gen)
    with torch.no_grad():
        loss = (model(x) - resid_labels(x)).pow(2).mean().item()
    naive = (x - resid_labels(x)).pow(2).mean().item()
    return {"target/loss": loss, "target/naive_loss": naive, "target/loss_ratio": loss / naive}
