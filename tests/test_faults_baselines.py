"""docs/faults.md, SAE baselines: interruption and resume, divergence, a missing run directory, resuming with other settings.

Each test provokes one fault and checks what the user sees (message, exit code) and what is left on disk; every resume
is compared with an uninterrupted run, tensor for tensor.
"""

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir

from circuitdecomp.baselines import sweep
from circuitdecomp.baselines.config import SAEKind, SAESpec, SAETrainConfig
from circuitdecomp.baselines.sweep import CKPT_DIR
from circuitdecomp.baselines.train import train_sae
from circuitdecomp.cli import CONFIG_DIR
from circuitdecomp.config import load_config
from circuitdecomp.interrupt import Interrupted
from circuitdecomp.runio import BadRunFile, load_tensors
from circuitdecomp.tracking import NullLogger

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
# three SAEs (batchtopk k=1, k=8, relu), dead latents resampled every 10 steps: a resume must restore all of that
SWEEP = [
    "baselines.kinds=[batchtopk,relu]",
    "baselines.widths=[{animals: 1}]",
    "baselines.l0_factors=[1.0]",
    "baselines.l1_coeffs=[0.1]",
    "baselines.train.steps=40",
    "baselines.train.batch_size=64",
    "baselines.train.resample_every=10",
    "baselines.train.dead_after=5",
    "evaluation.n_inputs=300",
    "tracking.mode=disabled",
]
SEED = 2


@pytest.fixture(scope="module")
def target_run(tmp_path_factory):
    """A run directory holding a tiny world and its planted target, like train_target writes."""
    from circuitdecomp.runio import save_config
    from circuitdecomp.target.model import save_model
    from circuitdecomp.target.planted import planted_model
    from circuitdecomp.world.world import make_world, save_world

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = load_config(compose("config", overrides=["target=planted", f"seed={SEED}", *TINY_WORLD, *SWEEP]))
    run_dir = tmp_path_factory.mktemp("target_run")
    world = make_world(cfg.world, cfg.seed)
    save_world(world, run_dir)
    save_model(planted_model(world, cfg.target, cfg.seed), run_dir)
    save_config(run_dir, cfg)
    return cfg, run_dir


def _baselines(cfg, run_dir: Path, out_dir: Path) -> None:
    from circuitdecomp.baselines.run import run_baselines

    run_baselines(cfg, run_dir, NullLogger(), out_dir=out_dir)


@pytest.fixture(scope="module")
def straight(target_run, tmp_path_factory) -> Path:
    """The uninterrupted sweep every resumed one is compared with."""
    cfg, run_dir = target_run
    out = tmp_path_factory.mktemp("straight")
    _baselines(cfg, run_dir, out)
    return out


def _assert_same_outputs(a: Path, b: Path) -> None:
    """Same SAE weights, same table and the same metrics (timings aside)."""
    ta, tb = load_tensors(a / "baselines.safetensors"), load_tensors(b / "baselines.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert (a / "thesis_table.json").read_text() == (b / "thesis_table.json").read_text()

    def untimed(d: Path) -> str:  # as text: NaN cells compare equal
        return json.dumps({k: v for k, v in json.loads((d / "metrics.json").read_text()).items() if not k.endswith("seconds")})

    assert untimed(a) == untimed(b)


def _sigterm_during(monkeypatch, sae_index: int, batch: int) -> None:
    """SIGTERM to this process while SAE number `sae_index` of the sweep draws batch `batch`, the one of its step `batch`."""
    real = sweep.activation_batches

    def batches(pool, batch_size, seed):
        for n, x in enumerate(real(pool, batch_size, seed)):
            if seed == SEED + 1000 * sae_index and n == batch:
                os.kill(os.getpid(), signal.SIGTERM)
            yield x

    monkeypatch.setattr(sweep, "activation_batches", batches)


def test_sigterm_mid_sae_checkpoints_and_resume_matches_uninterrupted_sweep(target_run, straight, tmp_path, monkeypatch, caplog):
    cfg, run_dir = target_run
    _sigterm_during(monkeypatch, sae_index=1, batch=23)
    with pytest.raises(Interrupted, match=r"SAE batchtopk_w24_k8 \(batchtopk, width 24, k=8\) stopped by SIGTERM at step 24"):
        _baselines(cfg, run_dir, tmp_path)
    saved = tmp_path / CKPT_DIR
    assert sorted(p.name for p in saved.iterdir()) == ["batchtopk_w24_k1.safetensors", "batchtopk_w24_k8", "sweep.json"]
    assert [p.name for p in (saved / "batchtopk_w24_k8").iterdir()] == ["step_00000024.safetensors"]
    assert not (tmp_path / "baselines.safetensors").exists() and not (tmp_path / "metrics.json").exists()
    monkeypatch.undo()
    with caplog.at_level("INFO"):
        _baselines(cfg, run_dir, tmp_path)
    assert "1/3 batchtopk_w24_k1: finished earlier, loaded from" in caplog.text  # not trained again
    assert "batchtopk_w24_k8/step_00000024.safetensors (step 24)" in caplog.text  # continued, not started over
    _assert_same_outputs(straight, tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # done: a re-run does the stage again


class StepCounter(NullLogger):
    n = 0

    def log(self, metrics, step=None):
        self.n += 1


@pytest.mark.parametrize(
    "spec",
    [
        SAESpec(SAEKind.topk, 12, k=2),
        SAESpec(SAEKind.batchtopk, 12, k=2),
        SAESpec(SAEKind.matryoshka, 12, k=2, prefixes=(4,)),
        SAESpec(SAEKind.relu, 12, l1_coeff=0.1),
    ],
    ids=lambda s: s.kind.value,
)
def test_every_kind_of_sae_resumes_bit_identical_after_two_interruptions(spec, tmp_path):
    """train_sae alone: Adam moments (in W_enc's transposed layout), dead-latent counts, resampling draws, threshold."""
    cfg = SAETrainConfig(steps=60, batch_size=32, lr=1e-2, resample_every=10, dead_after=5, log_every=1)

    def batches(sigterm_at: int | None = None):
        gen = torch.Generator().manual_seed(1)
        directions = torch.randn(12, 8, generator=gen)
        for n in range(10**6):
            if n == sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)
            yield (torch.rand(32, 12, generator=gen) < 0.2).float() @ directions

    straight = train_sae(batches(), spec, cfg, seed=3)
    for stop_at in (17, 41):  # the second run resumes at step 18 and is stopped again at 42
        with pytest.raises(Interrupted, match=f"stopped by SIGTERM at step {stop_at + 1}"):
            train_sae(batches(stop_at), spec, cfg, seed=3, ckpt_dir=tmp_path)
    steps = StepCounter()
    resumed = train_sae(batches(), spec, cfg, seed=3, logger=steps, ckpt_dir=tmp_path)
    assert steps.n == 60 - 42  # it continued from the checkpoint, not from the start
    a, b = straight.sae.state_dict(), resumed.sae.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and torch.equal(straight.dead, resumed.dead)


def test_resuming_the_sweep_with_other_settings_is_refused(target_run, straight, tmp_path, monkeypatch):
    cfg, run_dir = target_run
    _sigterm_during(monkeypatch, sae_index=1, batch=5)
    with pytest.raises(Interrupted):
        _baselines(cfg, run_dir, tmp_path)
    monkeypatch.undo()
    b = cfg.baselines
    other_lr = dataclasses.replace(cfg, baselines=dataclasses.replace(b, train=dataclasses.replace(b.train, lr=0.006)))
    with pytest.raises(
        BadRunFile,
        match=r"the unfinished SAE sweep in .*checkpoints/baselines was made with other settings "
        r"\(baselines.train.lr: 0.003 -> 0.006\): re-run with the settings it was made with",
    ):
        _baselines(other_lr, run_dir, tmp_path)
    other_seed = dataclasses.replace(cfg, seed=SEED + 1)
    with pytest.raises(BadRunFile, match=r"other settings \(seed: 2 -> 3\)"):
        _baselines(other_seed, run_dir, tmp_path)
    # what is logged is bookkeeping: it may change, and the result is still the uninterrupted one
    bookkeeping = dataclasses.replace(cfg, baselines=dataclasses.replace(b, train=dataclasses.replace(b.train, log_every=7)))
    _baselines(bookkeeping, run_dir, tmp_path)
    _assert_same_outputs(straight, tmp_path)


def _script_entry():
    spec = importlib.util.spec_from_file_location("baselines_script", Path(REPO) / "scripts" / "baselines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _run_script(tmp_path: Path, monkeypatch, capsys, *overrides: str) -> tuple[int, str]:
    """scripts/baselines.py in this process; returns (exit code, stderr)."""
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "baselines",
            "target=planted",
            *SWEEP,
            *overrides,
            f"hydra.run.dir={tmp_path}",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ],
    )
    code = 0
    try:
        _script_entry()()
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_nan_in_an_sae_stops_in_one_line_naming_it_and_keeps_the_finished_ones(target_run, tmp_path, monkeypatch, capsys):
    from circuitdecomp.baselines import train

    _, run_dir = target_run
    real_l1 = train.l1_penalty
    calls = {"n": 0}

    def l1_nan_at_step_3(latents):
        calls["n"] += 1
        return real_l1(latents) * (float("nan") if calls["n"] == 4 else 1.0)

    monkeypatch.setattr(train, "l1_penalty", l1_nan_at_step_3)  # only the relu SAE, the sweep's third, has an L1 term
    code, err = _run_script(tmp_path, monkeypatch, capsys, f"baselines.run_dir={run_dir}")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(
        "error: SAE relu_w24_l1_0.1 (relu, width 24, l1_coeff=0.1) diverged at step 3: total loss nan "
        "(limit inf), grad norm nan; terms: mse="
    ), err
    assert "l1=nan" in lines[0] and "lower baselines.train.lr (now 0.003) and re-run" in lines[0], err
    saved = sorted(p.name for p in (tmp_path / CKPT_DIR).iterdir())
    assert saved == ["batchtopk_w24_k1.safetensors", "batchtopk_w24_k8.safetensors", "sweep.json"]
    assert not (tmp_path / "baselines.safetensors").exists()


@pytest.mark.parametrize(
    "run_dir,message",
    [
        ("absent", "error: run directory not found: {tmp}/absent"),
        ("", "error: pass baselines.run_dir=<a train_target or pipeline run directory> (it holds world and target)"),
    ],
    ids=["missing", "not given"],
)
def test_missing_run_directory_is_one_line_exit_2(tmp_path, monkeypatch, capsys, run_dir, message):
    given = [f"baselines.run_dir={tmp_path / run_dir}"] if run_dir else []
    code, err = _run_script(tmp_path / "out", monkeypatch, capsys, *given)
    assert code == 2 and err.strip() == message.format(tmp=tmp_path), err


@pytest.mark.integration
def test_script_sigterm_mid_sweep_then_rerun_matches_uninterrupted(target_run, tmp_path, monkeypatch, capsys, caplog):
    """scripts/baselines.py on a real subprocess: SIGTERM once the first SAE is saved, exit 130; the same command again
    (in this process, to save a start-up) resumes and ends with the outputs of an uninterrupted run."""
    cfg, run_dir = target_run
    command = [f"seed={SEED}", "baselines.kinds=[topk]", "baselines.train.steps=600", f"baselines.run_dir={run_dir}"]
    interrupted = subprocess.Popen(
        [sys.executable, "scripts/baselines.py", "target=planted", *SWEEP, *command, f"hydra.run.dir={tmp_path / 'interrupted'}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_done, deadline = tmp_path / "interrupted" / CKPT_DIR / "topk_w24_k1.safetensors", time.time() + 120
    while not first_done.exists():
        assert interrupted.poll() is None and time.time() < deadline, interrupted.communicate()
        time.sleep(0.05)
    time.sleep(0.2)  # out of the few milliseconds between two SAEs: the second one (~1 s) is training now
    interrupted.send_signal(signal.SIGTERM)
    _, err = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 130, err
    assert "SAE topk_w24_k8 (topk, width 24, k=8) stopped by SIGTERM at step" in err and "re-run the same command" in err, err
    assert not (tmp_path / "interrupted" / "baselines.safetensors").exists()
    with caplog.at_level("INFO"):
        code, err = _run_script(tmp_path / "interrupted", monkeypatch, capsys, *command)
    assert code == 0, err
    assert "topk_w24_k1: finished earlier, loaded from" in caplog.text and "topk_w24_k8/step_0" in caplog.text  # resumed both
    b = cfg.baselines
    b = dataclasses.replace(b, kinds=[SAEKind.topk], train=dataclasses.replace(b.train, steps=600))
    _baselines(dataclasses.replace(cfg, baselines=b), run_dir, tmp_path / "straight")
    _assert_same_outputs(tmp_path / "straight", tmp_path / "interrupted")
