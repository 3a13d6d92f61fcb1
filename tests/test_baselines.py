"""SAE baselines: sparsity masks and losses by hand, planted-dictionary recovery per kind, the sweep, the table, the stage."""

import dataclasses
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from scipy.optimize import linear_sum_assignment
from test_recovery import make_truth

from circuitdecomp.baselines.config import ActivationSpace, BaselinesConfig, SAEKind, SAESpec, SAETrainConfig, Width
from circuitdecomp.baselines.sae import SparseAutoencoder, batch_top_k_mask, matryoshka_loss, top_k_mask
from circuitdecomp.baselines.sweep import practitioner_pick, sweep_specs, true_l0
from circuitdecomp.baselines.table import COLUMNS, Entry, Row, ThesisTable, oracle_row, thesis_table
from circuitdecomp.baselines.train import encode, resample_dead, train_sae
from circuitdecomp.cli import CONFIG_DIR
from circuitdecomp.config import load_config
from circuitdecomp.evaluate.dictionaries import half_size_dictionary, planted_dictionary, random_dictionary


def test_top_k_masks_match_a_sort():
    z = torch.relu(torch.randn(6, 10))
    mask = top_k_mask(z, 3)
    assert (mask.sum(dim=1) == 3).all()
    kept_min = torch.where(mask.bool(), z, math.inf).min(dim=1).values
    dropped_max = torch.where(mask.bool(), -math.inf, z).max(dim=1).values
    assert (kept_min >= dropped_max).all()
    batch = batch_top_k_mask(z, 2)  # the 12 largest of all 60 entries, wherever they are
    expected = torch.zeros(60)
    expected[z.flatten().argsort(descending=True)[:12]] = 1.0
    assert torch.equal(batch.flatten(), expected * (z.flatten() > 0))
    sparse = torch.zeros(4, 5)
    sparse[0, 1] = 1.0
    assert torch.equal(batch_top_k_mask(sparse, 3), (sparse > 0).float())  # fewer positives than k * batch: all kept


def test_matryoshka_loss_is_the_mean_of_prefix_errors():
    spec = SAESpec(SAEKind.matryoshka, 3, k=1, prefixes=(1,))
    sae = SparseAutoencoder(spec, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
        sae.b_dec.copy_(torch.tensor([0.5, 0.0]))
    z = torch.tensor([[2.0, 1.0, 0.0]])
    x = torch.tensor([[2.0, 1.0]])
    # prefix 1: x̂ = (2.5, 0), error 0.25 + 1 = 1.25; full: x̂ = (2.5, 1), error 0.25
    assert matryoshka_loss(sae, z, x).item() == pytest.approx((1.25 + 0.25) / 2)


def test_bad_specs_and_batches_are_named():
    with pytest.raises(ValueError, match=r"k <= width=4, got k=5"):
        SAESpec(SAEKind.topk, 4, k=5)
    with pytest.raises(ValueError, match="needs l1_coeff > 0"):
        SAESpec(SAEKind.relu, 4)
    with pytest.raises(ValueError, match=r"prefixes \(4,\) must increase strictly and stay below width=4"):
        SAESpec(SAEKind.matryoshka, 4, k=1, prefixes=(4,))
    with pytest.raises(ValueError, match="only matryoshka SAEs have prefixes"):
        SAESpec(SAEKind.topk, 4, k=1, prefixes=(2,))
    with pytest.raises(ValueError, match="baselines.train.lr=-1"):
        SAETrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="not both 0"):
        Width()
    spec, cfg = SAESpec(SAEKind.topk, 4, k=1), SAETrainConfig(steps=3)
    with pytest.raises(ValueError, match="flatten positions into the batch"):
        train_sae(iter([torch.randn(2, 3, 5)] * 3), spec, cfg, seed=0)
    with pytest.raises(ValueError, match="d_model=6 but the first batch had 5"):
        train_sae(iter([torch.randn(8, 5), torch.randn(8, 6)]), spec, cfg, seed=0)


def planted_batches(directions: torch.Tensor, k: int, batch: int, seed: int):
    """Exactly k planted features per input, values uniform in [0.5, 1.5]: x = Σ s_i d_i."""
    gen = torch.Generator().manual_seed(seed)
    n = directions.shape[0]
    while True:
        idx = torch.rand(batch, n, generator=gen).argsort(dim=1)[:, :k]
        s = torch.zeros(batch, n).scatter_(1, idx, 0.5 + torch.rand(batch, k, generator=gen))
        yield s @ directions, s


def mcc(found: torch.Tensor, planted: torch.Tensor) -> float:
    """Mean |cos| of planted directions with their one-to-one matched decoder rows."""
    cos = (planted / planted.norm(dim=1, keepdim=True)) @ (found / found.norm(dim=1, keepdim=True)).T
    rows, cols = linear_sum_assignment(cos.abs().numpy(), maximize=True)
    return cos.abs()[rows, cols].mean().item()


PLANTED = [
    SAESpec(SAEKind.topk, 40, k=2),
    SAESpec(SAEKind.batchtopk, 40, k=2),
    SAESpec(SAEKind.matryoshka, 40, k=2, prefixes=(8,)),
    SAESpec(SAEKind.relu, 40, l1_coeff=0.3),
]


@pytest.mark.parametrize("spec", PLANTED, ids=lambda s: s.kind.value)
def test_planted_sparse_dictionary_is_recovered(spec):
    """40 planted directions in 32 dimensions, 2 active per input: each kind finds them, with their values."""
    gen = torch.Generator().manual_seed(5)
    planted = torch.randn(40, 32, generator=gen)
    planted = planted / planted.norm(dim=1, keepdim=True)
    cfg = SAETrainConfig(steps=1200, batch_size=256, lr=1e-2)
    sae = train_sae((x for x, _ in planted_batches(planted, 2, 256, seed=1)), spec, cfg, seed=0).sae
    W = sae.W_dec.detach()
    assert torch.allclose(W.norm(dim=1), torch.ones(40), atol=1e-5)  # decoder rows stay unit norm
    assert mcc(W, planted) > 0.96
    x, s = next(planted_batches(planted, 2, 2048, seed=2))
    z = encode(sae, x)
    l0 = (z > 0).float().sum(dim=1).mean().item()
    assert 1.8 < l0 < 2.6, l0  # the right L0 (ReLU + L1 gets there through its coefficient)
    match = (planted @ W.T).argmax(dim=1)  # each planted feature's latent carries its value
    r = torch.stack([torch.corrcoef(torch.stack([z[:, match[i]], s[:, i]]))[0, 1] for i in range(40)]).nan_to_num(0.0)
    assert r.mean() > 0.96, r
    untrained = SparseAutoencoder(spec, 32, torch.Generator().manual_seed(0))
    assert mcc(untrained.W_dec.detach(), planted) < 0.6  # the check can fail: a random decoder does not pass it


def test_resampling_points_dead_latents_at_badly_reconstructed_inputs():
    spec = SAESpec(SAEKind.topk, 6, k=1)
    sae = SparseAutoencoder(spec, 4, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(32, 4)
    sae(x).recon.pow(2).sum().backward()
    opt.step()
    dead = torch.tensor([True, False, False, True, False, False])
    before = sae.W_dec.detach().clone()
    assert resample_dead(sae, opt, x, dead, torch.Generator().manual_seed(0)) == 2
    new = sae.W_dec.detach()
    assert torch.equal(new[~dead], before[~dead])
    inputs = (x - sae.b_dec.detach()) / (x - sae.b_dec.detach()).norm(dim=1, keepdim=True)
    assert ((new[dead] @ inputs.T).max(dim=1).values > 1 - 1e-5).all()  # each is some input's direction
    assert (opt.state[sae.W_dec]["exp_avg"][dead] == 0).all() and (opt.state[sae.W_dec]["exp_avg"][~dead] != 0).any()


def test_sweep_grid_follows_world_sizes_and_true_l0():
    cfg = BaselinesConfig(l1_coeffs=[0.1, 1.0], l0_factors=[0.5, 1.0, 2.0])
    specs = sweep_specs(cfg, n_attributes=4, n_animals=12, l0s=[1.0, 4.0])
    widths = sorted({s.width for s in specs})
    assert widths == [4, 12, 16, 24]
    topk = {(s.width, s.k) for s in specs if s.kind is SAEKind.topk}
    assert topk == {(4, 1), (4, 2), (4, 4)} | {(w, k) for w in (12, 16, 24) for k in (1, 2, 4, 8)}
    matryoshka = [s for s in specs if s.kind is SAEKind.matryoshka]
    assert {s.width for s in matryoshka} == {12, 16, 24} and all(s.prefixes == (4,) for s in matryoshka)
    assert len([s for s in specs if s.kind is SAEKind.relu]) == 8
    assert len({s.name for s in specs}) == len(specs)


def _row(name: str, **values: float) -> Row:
    base = {c.key: 0.0 for c in COLUMNS}
    return Row(name, base | {k.replace("__", "/"): float(v) for k, v in values.items()}, probe_cap=64)


def test_oracle_takes_each_columns_best_and_practitioner_the_best_sparse_reconstruction():
    rows = [
        _row("a", animals__coef_recall=0.9, units_read_size=30, fve=0.99, l0=1),
        _row("b", attributes__coef_recall=0.4, units_read_size=3, fve=0.999, l0=32),
    ]
    oracle = oracle_row(rows)
    assert oracle.values["animals/coef_recall"] == 0.9 and oracle.values["attributes/coef_recall"] == 0.4
    assert oracle.values["units_read_size"] == 3 and math.isnan(oracle.values["l0"])
    assert "units to read size: b" in oracle.note
    assert practitioner_pick(rows, max_l0=8.0).name == "a"
    assert practitioner_pick(rows, max_l0=64.0).name == "b"
    assert practitioner_pick(rows, max_l0=0.5).name == "a"  # nothing sparse enough: the sparsest


def test_thesis_table_separates_planted_half_size_and_random(tmp_path):
    truth = make_truth()
    acts = truth.families[0].activations()
    entries = {
        "planted": Entry(planted_dictionary(truth), fve=1.0, note="sanity"),
        "half-size": Entry(half_size_dictionary(truth), fve=1.0),
        "random": Entry(random_dictionary(acts, 68, torch.Generator().manual_seed(0))),
    }
    table = thesis_table(entries, truth, size_attribute=0)
    planted, half, rand = (r.values for r in table.rows)
    assert planted["min/coef_recall"] == 1.0 and planted["units_read_size"] == 1 and planted["units_read_animal"] == 1
    assert half["min/frac_cos90"] == 1.0 and half["min/coef_recall"] == 0.0
    assert rand["min/frac_cos90"] == 0.0 and math.isnan(rand["fve"])
    text = table.markdown()
    assert text.count("\n| ") == 3 and "* planted: sanity" in text and "| – |" in text
    table.save(tmp_path / "t.json")
    again = ThesisTable.load(tmp_path / "t.json")
    assert again.rows[0] == table.rows[0]
    features = thesis_table({"features from circuits": entries["planted"]}, truth, 0).rows
    assert again.with_rows_first(list(features)).rows[0].name == "features from circuits"
    assert table.metrics({"half-size": "half_size"})["baselines/half_size/min/coef_recall"] == 0.0
    fig = table.figure("test")
    assert len(fig.axes) == 2
    assert true_l0(truth)["attributes"] == pytest.approx(8.0) and 1.0 <= true_l0(truth)["animals"] <= 2.0


TINY_WORLD = [
    "world.name=tiny",
    "world.n_attributes=8",
    "world.n_animals=24",
    "world.n_houses=4",
    "world.n_economies=4",
    "world.n_facts=2",
    "world.n_fact_answers=5",
    "world.holdout_fraction=0.3",
]
TINY_SWEEP = [
    "baselines.widths=[{animals: 1}]",
    "baselines.l0_factors=[1.0]",
    "baselines.train.steps=30",
    "baselines.train.batch_size=64",
    "evaluation.n_inputs=300",
    "tracking.mode=disabled",
]


@pytest.fixture(scope="module")
def target_run(tmp_path_factory):
    """A run directory holding a tiny world and its planted target, like train_target writes."""
    from circuitdecomp.runio import save_config
    from circuitdecomp.target.model import save_model
    from circuitdecomp.target.planted import planted_model
    from circuitdecomp.world.world import make_world, save_world

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        overrides = ["target=planted", "seed=2", "baselines.kinds=[topk,matryoshka]", *TINY_WORLD, *TINY_SWEEP]
        cfg = load_config(compose("config", overrides=overrides))
    run_dir = tmp_path_factory.mktemp("target_run")
    world = make_world(cfg.world, cfg.seed)
    save_world(world, run_dir)
    save_model(planted_model(world, cfg.target, cfg.seed), run_dir)
    save_config(run_dir, cfg)
    return cfg, run_dir


def test_readout_at_the_entity_is_its_embedding(target_run):
    """Planted target: the MLP's input at the read-out position, projected on the entity subspace, is the embedding."""
    from circuitdecomp.baselines.data import readout_data
    from circuitdecomp.target.run import load_target_run

    cfg, run_dir = target_run
    world, model = load_target_run(run_dir)
    held = world.examples.subset(~world.examples.is_train)
    entity = readout_data(world, model, cfg.baselines, held, seed=0)
    full = readout_data(world, model, dataclasses.replace(cfg.baselines, space=ActivationSpace.full), held, seed=0)
    embedding = world.entity_embeddings()[held.entity]
    torch.testing.assert_close(entity.lift(entity.eval), embedding, atol=1e-5, rtol=0)
    assert full.eval.shape[1] == world.d_model and (full.eval - embedding).norm(dim=1).min() > 0.5  # plus the question
    E = world.geometry.entity_basis
    torch.testing.assert_close(full.eval @ E.T @ E, embedding, atol=1e-5, rtol=0)
    assert entity.truth.families[0].coefficients.sum(dim=1).max() == 1.0  # at most one animal per input


def test_run_baselines_writes_table_metrics_and_saes(target_run, tmp_path):
    from circuitdecomp.baselines.run import run_baselines
    from circuitdecomp.runio import load_run
    from circuitdecomp.tracking import NullLogger

    cfg, run_dir = target_run
    metrics = run_baselines(cfg, run_dir, NullLogger(), out_dir=tmp_path)
    assert metrics["baselines/n_saes"] == 4  # topk and matryoshka at k = 1 and 8 (the families' true L0)
    for key in [
        "baselines/topk_w24_k1/recovery/animals/coef_recall",
        "baselines/topk_w24_k1/fve",
        "baselines/matryoshka_w24_k8/recovery/min/coef_recall",
        "baselines/oracle/min/coef_recall",
        "baselines/practitioner/topk/animals/frac_cos90",
        "baselines/half_size/animals/frac_cos90",
        "baselines/random/min/coef_recall",
        "baselines/true_l0/attributes",
    ]:
        assert key in metrics, key
    assert metrics["baselines/half_size/min/frac_cos90"] == 1.0 and metrics["baselines/half_size/min/coef_recall"] == 0.0
    assert metrics["baselines/true_l0/attributes"] == pytest.approx(8.0, abs=0.5)
    for name in ["thesis_table.json", "thesis_table.md", "thesis_table.png", "baselines.safetensors", "metrics.json"]:
        assert (tmp_path / name).is_file(), name
    assert load_run(run_dir).metrics == {}  # the saved run is only read
    table = ThesisTable.load(tmp_path / "thesis_table.json")
    assert [r.name.split(" (")[0] for r in table.rows] == [
        "SAE topk",
        "SAE matryoshka",
        "SAE oracle",
        "half-size dictionary",
        "random dictionary",
    ]


def test_features_of_the_run_become_the_top_row(target_run, tmp_path):
    """A run dir with features.safetensors (here: the true directions and coefficients) gets the features row on top."""
    from circuitdecomp.baselines.run import run_baselines
    from circuitdecomp.evaluate.truth import ground_truth
    from circuitdecomp.runio import save_tensors
    from circuitdecomp.tracking import NullLogger
    from circuitdecomp.world.sampler import held_out_batch
    from circuitdecomp.world.world import make_world

    cfg, run_dir = target_run
    cfg = dataclasses.replace(cfg, baselines=dataclasses.replace(cfg.baselines, kinds=[SAEKind.topk], l0_factors=[1.0]))
    world = make_world(cfg.world, cfg.seed)
    planted = planted_dictionary(ground_truth(world, held_out_batch(world, cfg.evaluation.n_inputs, cfg.seed)))
    (tmp_path / "run").mkdir()
    for f in run_dir.iterdir():
        (tmp_path / "run" / f.name).symlink_to(f)
    save_tensors(tmp_path / "run" / "features.safetensors", {"directions": planted.directions, "values": planted.values})
    run_baselines(cfg, tmp_path / "run", NullLogger(), out_dir=tmp_path)
    top = ThesisTable.load(tmp_path / "thesis_table.json").rows[0]
    assert top.name == "features from circuits" and top.values["min/coef_recall"] == 1.0
    save_tensors(tmp_path / "run" / "features.safetensors", {"directions": planted.directions, "values": planted.values[:5]})
    with pytest.raises(ValueError, match="has values on 5 inputs, the baselines score on"):
        run_baselines(cfg, tmp_path / "run", NullLogger(), out_dir=tmp_path)


@pytest.mark.integration
@pytest.mark.slow
def test_script_needs_a_run_dir_and_runs_on_one(target_run, tmp_path):
    _, run_dir = target_run
    script = [
        sys.executable,
        "scripts/baselines.py",
        "target=planted",
        *TINY_WORLD,
        *TINY_SWEEP,
        "baselines.kinds=[relu]",
        "baselines.l1_coeffs=[0.1]",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(script, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "pass baselines.run_dir=" in proc.stderr
    proc = subprocess.run([*script, f"baselines.run_dir={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| SAE relu (practitioner: relu_w24_l1_0.1)" in proc.stdout and (tmp_path / "thesis_table.png").is_file()


def test_baselines_config_composes_and_refuses_bad_values():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = load_config(compose("config", overrides=["baselines=default"]))
        assert cfg.baselines.kinds == list(SAEKind) and cfg.baselines.widths[3] == Width(animals=2)
        with pytest.raises(ValueError, match="baselines.l0_factors"):
            load_config(compose("config", overrides=["baselines.l0_factors=[0]"]))
        with pytest.raises(ValueError, match="baselines.hook='resid'"):
            load_config(compose("config", overrides=["baselines.hook=resid"]))
