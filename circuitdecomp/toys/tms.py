"""Toy Model of Superposition: out = ReLU(W2 W1 x + b), trained with W2 = W1^T, decomposed untied."""

import logging

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from circuitdecomp.progress import progress
from circuitdecomp.toys.config import TMSConfig
from circuitdecomp.toys.data import sparse_features

log = logging.getLogger(__name__)


class TMS(nn.Module):
    """linear1: features -> hidden (no bias); linear2: hidden -> features (bias); ReLU output."""

    def __init__(self, n_features: int, n_hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(n_features, n_hidden, bias=False)
        self.linear2 = nn.Linear(n_hidden, n_features, bias=True)

    def forward(self, x: Float[Tensor, "batch n_features"]) -> Float[Tensor, "batch n_features"]:
        return F.relu(self.linear2(self.linear1(x)))


def train_tms(cfg: TMSConfig, seed: int) -> TMS:
    """Train with tied weights (the paper's targets), then write W1^T into linear2."""
    torch.manual_seed(seed)
    model = TMS(cfg.n_features, cfg.n_hidden)
    nn.init.zeros_(model.linear2.bias)
    W1, b = model.linear1.weight, model.linear2.bias
    opt = torch.optim.AdamW([W1, b], lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    with progress(cfg.train_steps, f"train TMS {cfg.n_features}-{cfg.n_hidden} (seed {seed})") as bar:
        for _ in range(cfg.train_steps):
            x = sparse_features(cfg.batch_size, cfg.n_features, cfg.feature_prob, gen)
            out = F.relu(F.linear(F.linear(x, W1), W1.T, b))
            loss = (out - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
    with torch.no_grad():
        model.linear2.weight.copy_(W1.T)
    return model


def features_reproduced(model: TMS, magnitude: float = 1.0, tol: float = 0.3) -> Tensor:
    """Per feature: does a lone input of `magnitude` come back within `tol` (relative) on its own output?"""
    n = model.linear1.in_features
    with torch.no_grad():
        out = model(torch.eye(n) * magnitude)
    return (out.diagonal() - magnitude).abs() < tol * magnitude


def train_checked_tms(cfg: TMSConfig, seed: int) -> tuple[TMS, int]:
    """Train until every feature is reproduced (the usual recipe fails on many seeds); returns (model, seed used)."""
    for attempt in range(cfg.max_attempts):
        s = seed + 1000 * attempt
        model = train_tms(cfg, s)
        ok = features_reproduced(model)
        if bool(ok.all()) or not cfg.check_features:
            log.info("TMS target (seed %d) reproduces all %d features", s, ok.numel())
            return model, s
        log.warning(
            "TMS target seed %d reproduces only %d/%d features; retraining with another seed", s, int(ok.sum()), ok.numel()
        )
    raise RuntimeError(
        f"no TMS target reproduced every feature in {cfg.max_attempts} attempts; raise target.max_attempts or target.train_steps"
    )
