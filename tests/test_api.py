"""The public call `circuitdecomp.decompose` on a plain model: runs, saves, loads, and refuses bad input."""

import itertools

import pytest
import torch
from torch import nn

import circuitdecomp
from circuitdecomp import DecompositionConfig, decompose


def _frozen_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 6)).requires_grad_(False)


def _batches():
    gen = torch.Generator().manual_seed(0)
    while True:
        yield torch.rand(32, 6, generator=gen)


CFG = DecompositionConfig(steps=6, warmup_steps=2, compile=False)


def test_decompose_save_load_round_trip(tmp_path):
    dec = decompose(_frozen_mlp(), {"0": 5, "2": 3}, _batches(), CFG)
    assert dec.paths == ["0", "2"]
    assert dec.V("0").shape == (6, 5) and dec.U("0").shape == (5, 4) and dec.U("2").shape == (3, 6)
    x = torch.rand(7, 6)
    ci = dec.causal_importance(x)
    assert ci["0"].shape == (7, 5) and ((ci["2"] >= 0) & (ci["2"] <= 1)).all()
    path = dec.save(tmp_path / "dec.safetensors")
    again = circuitdecomp.Decomposition.load(path, _frozen_mlp())
    for p in dec.paths:
        assert torch.equal(again.V(p), dec.V(p)) and torch.equal(again.U(p), dec.U(p))
    for p in dec.paths:
        assert torch.allclose(again.causal_importance(x)[p], ci[p])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="require grad"):
        decompose(nn.Linear(3, 3), {"*": 2}, _batches(), CFG)
    with pytest.raises(ValueError, match=r"\['nothing\*'\] match no decomposable module"):
        decompose(_frozen_mlp(), {"nothing*": 2}, _batches(), CFG)
    with pytest.raises(ValueError, match=r"cannot run on the first batch \(tensor of shape \(32, 5\)"):
        decompose(_frozen_mlp(), {"0": 2}, (torch.rand(32, 5) for _ in itertools.count()), CFG)
    with pytest.raises(ValueError, match="batches is empty"):
        decompose(_frozen_mlp(), {"0": 2}, [], CFG)
    with pytest.raises(ValueError, match="ran out"):
        decompose(_frozen_mlp(), {"0": 2}, [torch.rand(4, 6)] * 3, CFG)
