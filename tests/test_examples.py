"""The worked examples (examples/*.py + configs/experiment/example_*.yaml) at a few steps; sweeps; wandb offline runs."""

import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir

from circuitdecomp.cli import CONFIG_DIR
from circuitdecomp.collect import collect
from circuitdecomp.config import config_dict, load_config
from circuitdecomp.decomp.adapters import WeightKind
from circuitdecomp.decomp.api import Decomposition
from circuitdecomp.runio import load_metrics
from circuitdecomp.tracking import NullLogger, TrackingConfig, TrackingMode, make_logger

EXAMPLES = Path(REPO) / "examples"
FEW_STEPS = [
    "decomposition.steps=3",
    "decomposition.warmup_steps=2",
    "decomposition.compile=false",
    "decomposition.batch_size=8",
    "tracking.mode=disabled",
]


def _example(name: str, monkeypatch, train_steps: int = 5):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module(name)
    monkeypatch.setattr(module, "TRAIN_STEPS", train_steps)
    return module


def _config(experiment: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return load_config(compose("config", overrides=[f"experiment={experiment}", *FEW_STEPS, *overrides]))


def _run(module, experiment: str, out_dir: Path) -> dict:
    module.main.__wrapped__(_config(experiment), out_dir, NullLogger())  # the task behind the Hydra entry point
    assert {"decomposition.safetensors", "metrics.json", "activity.png"} <= {p.name for p in out_dir.iterdir()}
    return load_metrics(out_dir)


def test_mlp_example(tmp_path, monkeypatch):
    module = _example("mlp_sequential", monkeypatch)
    metrics = _run(module, "example_mlp", tmp_path)
    assert {"decomp/n_live/0", "decomp/n_live/2", "decomp/eval/recon_ci_masked", "target/mse"} <= set(metrics)
    model, _ = module.build_model(0, steps=5)
    dec = Decomposition.load(tmp_path / "decomposition.safetensors", model)
    assert dec.V("0").shape == (module.N_FEATURES, 48) and dec.U("2").shape == (48, module.N_FEATURES)


def test_transformerlens_native_example_masks_per_token(tmp_path, monkeypatch):
    module = _example("tl_native", monkeypatch)
    metrics = _run(module, "example_tl", tmp_path)
    assert metrics["decomp/n_live/blocks.1.mlp.out"] >= 0 and "decomp/final/subset_recon" in metrics
    model, _ = module.build_model(0, steps=5)
    dec = Decomposition.load(tmp_path / "decomposition.safetensors", model)
    assert len(dec.paths) == 12 and dec.config.output_loss.value == "kl"
    toks = next(module.permutation_sequences(module.VOCAB, module.SEQ_LEN, 3, 0))
    assert dec.causal_importance(toks)["blocks.0.attn.q"].shape == (3, module.SEQ_LEN, 32)  # one mask per token


def test_hugging_face_gpt2_example_through_the_bridge(tmp_path, monkeypatch):
    module = _example("hf_gpt2", monkeypatch)
    metrics = _run(module, "example_gpt2", tmp_path)
    assert "decomp/n_live/blocks.0.mlp.in" in metrics
    model, _ = module.build_model(0, steps=5)
    toks = next(module.permutation_sequences(module.VOCAB, module.SEQ_LEN, 4, 0))
    before = model(toks)
    dec = Decomposition.load(tmp_path / "decomposition.safetensors", model)
    kinds = {p: dec.cm.component(p).kind for p in dec.paths}
    assert kinds["blocks.0.attn.q"] is WeightKind.linear and kinds["blocks.0.attn.o"] is WeightKind.conv1d
    assert kinds["blocks.1.mlp.in"] is WeightKind.conv1d and dec.U("blocks.1.mlp.in").shape == (64, 64)
    assert torch.equal(model(toks), before)  # loading swaps nothing in for good


def test_offline_wandb_run_carries_config_metrics_figure_and_artifact(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    module = _example("mlp_sequential", monkeypatch)
    cfg = _config("example_mlp", "tracking.mode=offline")
    logger = make_logger(TrackingConfig(mode=TrackingMode.offline), tmp_path, config_dict(cfg), "example_mlp")
    module.main.__wrapped__(cfg, tmp_path, logger)
    logger.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("files/media/images/decomp/activity_*.png"))
    keys = (b"importance_coeff", b"decomp/n_live/0", b"decomp/train/loss", b"example_mlp-decomposition")
    # protobuf records: the keys appear verbatim. On a loaded machine wandb's writer process can still be flushing
    # after finish() returns (seen once in CI beside another offline run: the file held only its 7-byte header)
    deadline = time.monotonic() + 30
    while True:
        record = next(run.glob("run-*.wandb")).read_bytes()
        missing = [key for key in keys if key not in record]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"{missing} not in the offline run after 30 s ({len(record)} bytes)"


@pytest.mark.integration
def test_multirun_sweep_then_collect(tmp_path):
    """A Hydra multirun over a decomposition hyperparameter, then scripts/collect.py's table and plot."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(EXAMPLES / "mlp_sequential.py"),
        "-m",
        "experiment=example_mlp",
        "decomposition.importance_coeff=1e-3,3e-3",
        f"hydra.sweep.dir={sweep}",
        *FEW_STEPS,
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    table = collect([sweep], ["decomp/n_live/*"], ["decomposition.importance_coeff"])
    assert [row[1] for row in table.rows] == [1e-3, 3e-3] and table.columns[2:] == ["decomp/n_live/0", "decomp/n_live/2"]
    png = tmp_path / "sweep.png"
    done = subprocess.run(
        [
            sys.executable,
            "scripts/collect.py",
            str(sweep),
            "--metrics",
            "decomp/n_live/*",
            "--config",
            "decomposition.importance_coeff",
            "--plot",
            "decomposition.importance_coeff",
            str(png),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| decomposition.importance_coeff | decomp/n_live/0 |" in done.stdout and png.stat().st_size > 0


@pytest.mark.parametrize("name", ["mlp_sequential", "tl_native", "hf_gpt2"])
def test_every_example_has_an_experiment_config(name):
    source = (EXAMPLES / f"{name}.py").read_text()
    experiment = source.split("experiment=")[1].split()[0]
    assert (CONFIG_DIR / "experiment" / f"{experiment}.yaml").exists()
