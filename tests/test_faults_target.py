"""docs/faults.md, target training: interruption, divergence, retries, other configs and determinism of the target stage.

Each test provokes one fault and checks what the user sees (message, exit code) and what is left on disk.
"""

import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from circuitdecomp.checkpoint import latest_checkpoint, read_retry
from circuitdecomp.interrupt import DivergenceError, Interrupted
from circuitdecomp.runio import BadRunFile, load_tensors, save_config
from circuitdecomp.world.config import WorldConfig
from circuitdecomp.world.world import make_world

TINY_WORLD = WorldConfig(
    name="tiny",
    n_attributes=8,
    n_animals=24,
    n_houses=8,
    n_economies=8,
    n_facts=2,
    n_fact_answers=5,
    holdout_fraction=0.3,
    attribute_margin=0.25,
)


@pytest.fixture(scope="module")
def tiny_world():
    return make_world(TINY_WORLD, seed=1)


def _target_cfg(**kw):
    from circuitdecomp.target.config import TransformerTargetConfig

    return TransformerTargetConfig(**(dict(train_steps=12, batch_size=32, warmup_steps=2, eval_every=0, checkpoint_every=4) | kw))


def _train_target(world, out_dir, cfg, seed=0) -> dict[str, torch.Tensor]:
    from circuitdecomp.target.model import baked_state_dict
    from circuitdecomp.target.train import train_target
    from circuitdecomp.tracking import NullLogger

    model = train_target(world, cfg, seed, NullLogger(), out_dir=out_dir).model
    return {k: v.detach().clone() for k, v in baked_state_dict(model).items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_target_training_sigterm_checkpoints_and_resume_is_bit_identical(tiny_world, tmp_path, monkeypatch):
    from circuitdecomp.target.train import CKPT_DIR as TARGET_CKPT
    from circuitdecomp.world.sampler import Sampler

    straight = _train_target(tiny_world, tmp_path / "a", _target_cfg())
    real_sample, calls = Sampler.sample, {"n": 0}

    def sample_then_sigterm(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 6; the loop stops before step 7
        return real_sample(self, *args, **kw)

    monkeypatch.setattr(Sampler, "sample", sample_then_sigterm)
    with pytest.raises(Interrupted, match="target training stopped by SIGTERM at step 7"):
        _train_target(tiny_world, tmp_path / "b", _target_cfg())
    assert latest_checkpoint(tmp_path / "b", TARGET_CKPT).name == "step_00000007.safetensors"
    monkeypatch.setattr(Sampler, "sample", real_sample)
    resumed = _train_target(tiny_world, tmp_path / "b", _target_cfg())
    assert _same(straight, resumed)
    assert latest_checkpoint(tmp_path / "b") is None  # the decomposition's folder stays empty: no clash in one run dir


def test_target_training_divergence_names_step_and_terms(tiny_world, tmp_path):
    from circuitdecomp.target.train import CKPT_DIR as TARGET_CKPT

    with pytest.raises(
        DivergenceError,
        match=r"target training diverged at step 0: total loss .* \(limit 1e-09\), grad norm "
        r".*terms: ce=.*, act_l1=.*, lookup_gate_l1=.*target.retry_lr_factor=0.5",
    ):
        _train_target(tiny_world, tmp_path, _target_cfg(max_loss=1e-9))
    assert latest_checkpoint(tmp_path, TARGET_CKPT).name == "step_00000000.safetensors"


def test_target_training_nan_retries_with_lower_lr(tiny_world, tmp_path, monkeypatch):
    from circuitdecomp.target import train as target_train
    from circuitdecomp.target.train import CKPT_DIR as TARGET_CKPT

    real_ce, calls = target_train.F.cross_entropy, {"n": 0}

    def ce_nan_once(*args, **kw):
        calls["n"] += 1
        loss = real_ce(*args, **kw)
        return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(target_train.F, "cross_entropy", ce_nan_once)
    with pytest.raises(DivergenceError, match=r"target training diverged at step 5: total loss nan .*ce=nan"):
        _train_target(tiny_world, tmp_path / "off", _target_cfg())
    calls["n"] = 0
    params = _train_target(tiny_world, tmp_path / "on", _target_cfg(retry_lr_factor=0.5))
    assert all(torch.isfinite(v).all() for v in params.values())
    assert read_retry(latest_checkpoint(tmp_path / "on", TARGET_CKPT)).lr_scale == 0.5


def test_target_checkpoint_from_another_config_is_refused(tiny_world, tmp_path):
    _train_target(tiny_world, tmp_path, _target_cfg(train_steps=4))
    with pytest.raises(
        BadRunFile,
        match=r"checkpoint .*target/step_00000004.safetensors was written with other settings "
        r"\(target.lr: [0-9.e-]+ -> 0.001\)",
    ):
        _train_target(tiny_world, tmp_path, _target_cfg(train_steps=4, lr=1e-3))


def test_target_from_another_config_names_the_file(tiny_world, tmp_path):
    from circuitdecomp.runio import to_plain
    from circuitdecomp.target.model import build_model, save_model
    from circuitdecomp.target.run import load_target_run

    save_config(tmp_path, {"world": to_plain(TINY_WORLD), "target": to_plain(_target_cfg(d_mlp=40)), "seed": 1})
    save_model(build_model(tiny_world, _target_cfg(d_mlp=30), seed=1), tmp_path)
    with pytest.raises(BadRunFile, match=r"target.safetensors does not fit this model .*blocks.0.mlp.in.weight: file \(30, "):
        load_target_run(tmp_path)


def test_same_seed_and_config_give_identical_target(tiny_world):
    a = _train_target(tiny_world, None, _target_cfg(train_steps=6))
    b = _train_target(tiny_world, None, _target_cfg(train_steps=6))
    c = _train_target(tiny_world, None, _target_cfg(train_steps=6), seed=1)
    assert _same(a, b) and not _same(a, c)


@pytest.mark.integration
@pytest.mark.slow
def test_target_script_sigterm_then_rerun_matches_uninterrupted(tmp_path):
    """The whole train_target.py on a real subprocess: SIGTERM mid-training, exit 130, re-run, same target."""
    import time

    args = [
        sys.executable,
        "scripts/train_target.py",
        "target=trained",
        "world.n_attributes=8",
        "world.n_animals=24",
        "world.n_houses=8",
        "world.n_economies=8",
        "world.n_facts=2",
        "world.n_fact_answers=5",
        "world.holdout_fraction=0.3",
        "target.train_steps=600",
        "target.batch_size=64",
        "target.checkpoint_every=20",
        "target.eval_every=0",
        "tracking.mode=disabled",
        "seed=3",
    ]

    def run(d):
        return subprocess.Popen(
            [*args, f"hydra.run.dir={d}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    straight, interrupted = run(tmp_path / "straight"), run(tmp_path / "interrupted")
    ckpts, deadline = tmp_path / "interrupted" / "checkpoints" / "target", time.time() + 300
    while not (ckpts.exists() and any(p.name >= "step_00000100" for p in ckpts.glob("step_*"))):
        assert interrupted.poll() is None and time.time() < deadline, interrupted.communicate()
        time.sleep(0.2)
    interrupted.send_signal(signal.SIGTERM)
    _, err = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 130 and "target training stopped by SIGTERM" in err, err
    assert not (tmp_path / "interrupted" / "target_circuits.png").exists()
    resumed = run(tmp_path / "interrupted")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    assert straight.wait(timeout=300) == 0, straight.communicate()
    a = load_tensors(tmp_path / "straight" / "target.safetensors")
    b = load_tensors(tmp_path / "interrupted" / "target.safetensors")
    assert _same(a, b)
