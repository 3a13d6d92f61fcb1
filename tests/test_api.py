"""The public call `circuitdecomp.decompose`: the README example, round trips, bad input, and planted mechanisms."""

import itertools
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO
from torch import nn

import circuitdecomp
from circuitdecomp import DecompositionConfig, decompose
from circuitdecomp.decomp.span import data_span, project_onto


def _frozen_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 6)).requires_grad_(False)


def _batches(shape=(32, 6)):
    gen = torch.Generator().manual_seed(0)
    while True:
        yield torch.rand(*shape, generator=gen)


CFG = DecompositionConfig(steps=6, warmup_steps=2, compile=False)


def test_readme_example_runs_verbatim(tmp_path, monkeypatch):
    text = (Path(REPO) / "README.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "decompose(" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["V"].shape == (8, 16) and namespace["U"].shape == (16, 4)
    assert (tmp_path / "decomposition.safetensors").exists()


def test_decompose_save_load_round_trip(tmp_path):
    model = _frozen_mlp()
    x = torch.rand(7, 6)
    before = model(x)
    dec = decompose(model, {"0": 5, "2": 3}, _batches(), CFG)
    assert torch.equal(model(x), before) and isinstance(model[0], nn.Linear)  # the model is given back unchanged
    assert dec.paths == ["0", "2"]
    assert dec.V("0").shape == (6, 5) and dec.U("0").shape == (5, 4) and dec.U("2").shape == (3, 6)
    ci = dec.causal_importance(x)
    assert ci["0"].shape == (7, 5) and ((ci["2"] >= 0) & (ci["2"] <= 1)).all()
    dirs = dec.directions(x, threshold=0.0)
    assert dirs["0"].read.shape == (len(dirs["0"].components), 6) and dirs["0"].write.shape[1] == 4
    assert torch.allclose(dirs["0"].read.norm(dim=1), torch.ones(len(dirs["0"].components)))
    metrics = dec.metrics(x)
    assert {"decomp/eval/recon_ci_masked", "decomp/n_live/0", "decomp/ci_l0/2", "decomp/final/stochastic_recon"} <= set(metrics)
    path = dec.save(tmp_path / "dec.safetensors")
    again = circuitdecomp.Decomposition.load(path, _frozen_mlp())
    for p in dec.paths:
        assert torch.equal(again.V(p), dec.V(p)) and torch.equal(again.U(p), dec.U(p))
        assert torch.allclose(again.causal_importance(x)[p], ci[p])
    with pytest.raises(ValueError, match="does not match this model"):
        circuitdecomp.Decomposition.load(path, nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 6)).requires_grad_(False))


def test_decompose_into_an_out_dir_saves_once_and_a_rerun_loads_instead_of_training(tmp_path):
    """One engine (decomp/engine.py): the file a finished run leaves is what a re-run, the toys and the pipeline load."""
    from circuitdecomp.decomp import engine

    dec = decompose(_frozen_mlp(), {"0": 5}, _batches(), CFG, out_dir=tmp_path, seed=4)
    saved = tmp_path / "decomposition.safetensors"
    assert saved.exists() and dec.result is not None
    assert engine.saved_config(saved)["steps"] == CFG.steps
    again = decompose(_frozen_mlp(), {"0": 5}, _batches(), CFG, out_dir=tmp_path, seed=4)
    assert again.result is None  # loaded, not trained
    assert torch.equal(again.V("0"), dec.V("0")) and torch.equal(again.U("0"), dec.U("0"))
    with pytest.raises(ValueError, match="does not match this model"):
        decompose(_frozen_mlp(), {"0": 3}, _batches(), CFG, out_dir=tmp_path)


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        return self.used(x)


def test_bad_input_fails_at_once_naming_the_problem():
    with pytest.raises(ValueError, match=r"2 parameters that require grad \(weight, bias"):
        decompose(nn.Linear(3, 3), {"*": 2}, _batches(), CFG)
    with pytest.raises(ValueError, match=r"\['nothing\*'\] match no decomposable module; available: 0, 2"):
        decompose(_frozen_mlp(), {"nothing*": 2}, _batches(), CFG)
    model = _frozen_mlp()
    with pytest.raises(ValueError, match=r"cannot run on the first batch \(\(32, 5\)\)"):
        decompose(model, {"0": 2}, _batches((32, 5)), CFG)
    assert isinstance(model[0], nn.Linear)  # given back as it was
    with pytest.raises(ValueError, match=r"module '0' got an input of shape \(6,\).*no batch dimension"):
        decompose(_frozen_mlp(), {"0": 2}, _batches((6,)), CFG)
    shapes = itertools.chain([torch.rand(32, 6)], (torch.rand(16, 6) for _ in itertools.count()))
    with pytest.raises(ValueError, match=r"a batch has shape \(16, 6\), the first had \(32, 6\)"):
        decompose(_frozen_mlp(), {"0": 2}, shapes, CFG)
    with pytest.raises(ValueError, match="module 'unused' did not run"):
        decompose(Unused().requires_grad_(False), {"*": 2}, _batches(), CFG)
    with pytest.raises(ValueError, match="batches is empty"):
        decompose(_frozen_mlp(), {"0": 2}, [], CFG)
    with pytest.raises(ValueError, match="ran out"):
        decompose(_frozen_mlp(), {"0": 2}, [torch.rand(4, 6)] * 3, CFG)


def planted_mlp(n: int = 8, d_out: int = 12, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """x -> B ReLU(A x): mechanism i reads a_i (row i of a random rotation A), fires neuron i, writes b_i."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.linalg.qr(torch.randn(n, n, generator=gen))[0]
    B = torch.linalg.qr(torch.randn(d_out, n, generator=gen))[0]
    model = nn.Sequential(nn.Linear(n, n, bias=False), nn.ReLU(), nn.Linear(n, d_out, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(A)
        model[2].weight.copy_(B)
    return model.requires_grad_(False), A, B


def sparse_mechanism_inputs(A: torch.Tensor, batch: int, p: float = 0.1, seed: int = 1):
    """Each mechanism on with probability p, at a strength in [-1, 1]: x = sum_i s_i a_i.

    Both signs matter: with strengths >= 0 the ReLU would hide the cross-talk of one component serving two
    mechanisms (reads a_i - a_j, writes e_i - e_j), and that merged solution would be cheaper than the planted one.
    """
    gen = torch.Generator().manual_seed(seed)
    while True:
        s = (2 * torch.rand(batch, A.shape[0], generator=gen) - 1) * (torch.rand(batch, A.shape[0], generator=gen) < p)
        yield s @ A


def best_cosines(found: torch.Tensor, planted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each planted row, the largest |cos| with any found row, and which row that was."""
    cos = (planted / planted.norm(dim=1, keepdim=True)) @ (found / found.norm(dim=1, keepdim=True)).T
    return cos.abs().max(1)


def planted_recovery(dec, A: torch.Tensor, B: torch.Tensor) -> dict[str, torch.Tensor]:
    """|cos| of the best-matching component's read (V column) and write (U row) with each planted mechanism."""
    eye = torch.eye(A.shape[0])
    out = {}
    for path, read, write in (("0", A, eye), ("2", eye, B.T)):
        out[f"{path}/read"], idx = best_cosines(dec.V(path).T, read)
        U = dec.U(path)[idx]
        out[f"{path}/write"] = ((U / U.norm(dim=1, keepdim=True)) * (write / write.norm(dim=1, keepdim=True))).sum(1).abs()
    return out


def test_planted_rank1_mechanisms_are_recovered():
    """Acceptance: a model the project never saw, 8 rank-1 mechanisms per matrix, recovered through the public API."""
    model, A, B = planted_mlp()
    cfg = DecompositionConfig(
        steps=1500, batch_size=256, lr=3e-3, warmup_steps=100, importance_coeff=3e-3, compile=False, eval_every=10**6
    )
    dec = decompose(model, {"0": 16, "2": 16}, sparse_mechanism_inputs(A, 256), cfg, seed=0)
    cos = planted_recovery(dec, A, B)
    assert min(c.min().item() for c in cos.values()) > 0.99, {k: v.numpy().round(3) for k, v in cos.items()}
    live = dec.live_components(next(sparse_mechanism_inputs(A, 4096, seed=5)))
    assert len(live["0"]) == 8 and len(live["2"]) == 8  # one component per mechanism, the other 8 unused
    ci = dec.causal_importance(A)  # one mechanism at a time, at full strength: one component each
    assert ((ci["0"] > 0.5).sum(1) == 1).all() and ((ci["2"] > 0.5).sum(1) == 1).all()


@pytest.mark.slow
def test_planted_recovery_over_ten_planted_models():
    """The README's robustness figure: planted models 0-9, the acceptance test's settings (about 2.5 minutes)."""
    cfg = DecompositionConfig(
        steps=1500, batch_size=256, lr=3e-3, warmup_steps=100, importance_coeff=3e-3, compile=False, eval_every=10**6
    )
    worst, live_counts = 1.0, set()
    for seed in range(10):
        model, A, B = planted_mlp(seed=seed)
        dec = decompose(model, {"0": 16, "2": 16}, sparse_mechanism_inputs(A, 256), cfg, seed=0)
        worst = min(worst, *(c.min().item() for c in planted_recovery(dec, A, B).values()))
        live_counts |= {len(v) for v in dec.live_components(next(sparse_mechanism_inputs(A, 4096, seed=5))).values()}
    print(f"min |cos| over 10 planted models x 32 directions: {worst:.3f}; live components per matrix: {live_counts}")
    assert worst > 0.99 and live_counts == {8}


def test_data_span_and_projection_by_hand():
    basis = data_span(torch.tensor([[1.0, 0, 0], [2, 0, 0], [0, 3, 0]]))
    assert basis.shape == (2, 3) and torch.allclose(basis @ basis.T, torch.eye(2), atol=1e-6)
    assert torch.allclose(
        project_onto(torch.tensor([[1.0, 2, 3], [0, 0, 7]]), basis), torch.tensor([[1.0, 2, 0], [0, 0, 0]]), atol=1e-6
    )
    line = data_span(torch.tensor([[1.0, 2], [1, 2], [1, 2]]))  # the span, not the affine span (which is a point)
    assert line.shape == (1, 2) and torch.allclose(line.abs(), torch.tensor([[1.0, 2]]) / 5**0.5)
    assert torch.allclose(
        project_onto(torch.tensor([[1.0, 0, 5]]), data_span(torch.tensor([[1.0, 1, 0], [2, 2, 0]]))),
        torch.tensor([[0.5, 0.5, 0]]),
        atol=1e-6,
    )
    assert data_span(torch.zeros(4, 3)).shape == (0, 3)
    assert torch.equal(project_onto(torch.ones(2, 3), data_span(torch.zeros(4, 3))), torch.zeros(2, 3))
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(3, 5, generator=gen)
    tall = torch.randn(20_000, 3, generator=gen) @ M  # more rows than one QR chunk
    assert data_span(tall).shape == (3, 5) and torch.allclose(project_onto(M, data_span(tall)), M, atol=1e-5)
    noisy = tall + 1e-7 * torch.randn(20_000, 5, generator=gen)  # round-off-sized mass off the span
    assert data_span(noisy).shape == (3, 5) and data_span(noisy, rel_tol=1e-12).shape == (5, 5)
    with pytest.raises(ValueError, match=r"data_span: x has shape \(0, 3\): empty"):
        data_span(torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"rows \(2, 4\) and basis \(2, 3\) must be .* the same d"):
        project_onto(torch.ones(2, 4), basis)
    with pytest.raises(ValueError, match=r"rel_tol=0.0 must be in \(0, 1\)"):
        data_span(tall, rel_tol=0.0)


def subspace_mlp(n: int = 10, d: int = 20, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """y = sum_k relu(<a_k, x>) b_k: n orthonormal reads a_k spanning a random n-dim subspace of R^d, orthonormal b_k."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.linalg.qr(torch.randn(d, d, generator=gen))[0][:n]
    B = torch.linalg.qr(torch.randn(d, n, generator=gen))[0]
    model = nn.Sequential(nn.Linear(d, n, bias=False), nn.ReLU(), nn.Linear(n, d, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(A)
        model[2].weight.copy_(B)
    return model.requires_grad_(False), A


def test_directions_are_projected_onto_the_data_span():
    """Inputs span 10 of 20 dims: nothing trains V there, so raw reads miss the planted a_k; projected ones match."""
    model, A = subspace_mlp()
    cfg = DecompositionConfig(
        steps=1000, batch_size=256, lr=3e-3, warmup_steps=100, importance_coeff=3e-3, compile=False, eval_every=10**6
    )
    dec = decompose(model, {"0": 20}, sparse_mechanism_inputs(A, 256, p=0.05), cfg, seed=0)
    batch = next(sparse_mechanism_inputs(A, 4096, p=0.05, seed=5))
    proj, raw = dec.directions(batch)["0"], dec.directions(batch, project=False)["0"]
    assert torch.equal(proj.components, raw.components) and 10 <= len(proj.components) <= 11
    cos = (proj.read @ A.T).abs()  # [live, planted]
    assert (cos.max(0).values >= 0.95).all() and (cos.max(1).values >= 0.95).sum() >= 10, cos.max(0).values
    assert torch.allclose(proj.read @ A.T @ A, proj.read, atol=1e-5)  # inside span(a_k) = span of the inputs
    assert torch.allclose(proj.read.norm(dim=1), torch.ones(len(proj.components)))
    V = dec.V("0")[:, raw.components].T
    assert torch.allclose(raw.read, V / V.norm(dim=1, keepdim=True))  # project=False: the raw V columns
    assert torch.allclose(raw.read_inside, (raw.read @ A.T).norm(dim=1), atol=1e-5)  # |P v| / |v| by hand
    assert torch.equal(proj.read_inside, raw.read_inside) and raw.read_inside.median() < 0.95  # mass was cut
    assert ((raw.read @ A.T).abs().max(1).values >= 0.95).sum() < 10  # ... which the raw reads needed
    assert torch.allclose(proj.write_inside, torch.ones(len(proj.components)), atol=1e-4)  # outputs x A^T span R^10


def test_directions_outside_the_data_are_zero_rows_not_nans():
    dec = decompose(_frozen_mlp(), {"0": 5}, _batches(), CFG)
    with torch.no_grad():
        dec.cm.component("0").V[:, 0] = torch.tensor([0.0, 0, 0, 0, 0, 1])  # reads only the never-visited e_5
        dec.cm.component("0").V[:, 1] = 0.0
    x = torch.rand(16, 6) * torch.tensor([1.0, 1, 1, 1, 1, 0])
    for project in (True, False):
        d = dec.directions(x, threshold=-1.0, project=project)["0"]  # -1: every component live
        assert torch.equal(d.components, torch.arange(5)) and not d.read.isnan().any() and not d.write.isnan().any()
        assert d.read_inside[0] == 0 and d.read_inside[1] == 0 and (d.read_inside[2:] > 0).all()
        assert torch.equal(d.read[1], torch.zeros(6)) and torch.equal(d.read[0], torch.zeros(6) if project else torch.eye(6)[5])


def test_embedding_directions_keep_the_tokens_seen():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3)).requires_grad_(False)
    tokens = (torch.randint(0, 10, (32, 3)) for _ in itertools.count())
    dec = decompose(model, {"0": 3}, tokens, CFG)
    x = torch.tensor([[0, 1, 2], [2, 1, 0]])  # the one-hot inputs span e_0, e_1, e_2; the outputs rows 0-2 of the table
    proj, raw = dec.directions(x, threshold=-1.0)["0"], dec.directions(x, threshold=-1.0, project=False)["0"]
    assert torch.allclose(proj.read_inside, raw.read[:, :3].norm(dim=1)) and torch.equal(proj.read[:, 3:], torch.zeros(3, 7))
    assert torch.allclose(proj.read[:, :3], raw.read[:, :3] / raw.read[:, :3].norm(dim=1, keepdim=True))
    Q = torch.linalg.qr(model[0].weight[:3].T)[0]  # orthonormal basis of span(W^T[0], W^T[1], W^T[2]) in R^4
    assert torch.allclose(proj.write @ Q @ Q.T, proj.write, atol=1e-5)
    assert torch.allclose(proj.write_inside, (raw.write @ Q).norm(dim=1), atol=1e-5)
