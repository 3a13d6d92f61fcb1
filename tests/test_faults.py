"""docs/faults.md: bad config, the CLI's fault mapping, interruption, bad files (decomposition stage:
test_faults_decomp.py; target stage: test_faults_target.py).

Each test provokes one fault and checks what the user sees (message, exit code) and what is left on disk.
"""

import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from safetensors.torch import save_file
from torch import nn

from circuitdecomp.cli import hydra_script, precheck_overrides
from circuitdecomp.interrupt import DivergenceError, Interrupted, signals_interrupt
from circuitdecomp.rundir import WORLD_FILE
from circuitdecomp.runio import (
    BadRunFile,
    DiskFull,
    MissingRunFile,
    atomic_write,
    load_module_state,
    load_run,
    load_tensors,
    save_config,
    save_tensors,
    update_metrics,
)
from circuitdecomp.world.config import WorldConfig
from circuitdecomp.world.world import load_world_tensors, make_world, save_world

# --------------------------------------------------------------------------------------------------- config


def _precheck_error(capsys, overrides: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        precheck_overrides(overrides)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["decomposition.lr=-1"], "decomposition.lr=-1.0 must be > 0"),
        (["decomposition.batch_size=0"], "decomposition.batch_size=0 must be >= 1"),
        (["experiment=tms_5-2", "decomposition.modules.0.C=-2"], "C=-2 for 'linear1' must be >= 1, or 0"),
        (["decomposition.retry_lr_factor=1.5"], "decomposition.retry_lr_factor=1.5 must be in [0, 1)"),
        (["decomposition.pnorm_anneal_start=0.9", "decomposition.pnorm_anneal_end=0.1"], "pnorm_anneal_start=0.9"),
        (["target.batch_size=0"], "target.batch_size=0 must be >= 1"),
        (["target=trained", "target.n_heads=3"], "target.n_heads=3 does not divide the residual width 80"),
        (["world.n_attributes=100", "world.d_model=64"], "world.n_attributes=100 exceeds world.d_model=64"),
        (["experiment=nope"], "experiment=nope names no option in configs/experiment/; available: "),
        (["experiment="], "experiment= names no option"),
        (["name="], "name='' must be a non-empty run name"),
        (["seed=-1"], "seed=-1 must be >= 0"),
        (["tracking.log_every=0"], "tracking.log_every=0 must be >= 1"),
        (["evaluation.dense_ci=[{pattern: x, k: 0}]"], "evaluation.dense_ci: k=0 for 'x' must be >= 1"),
        (["decomposition.steps=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
        (["+decomposition.extra=1"], "unknown config key(s) ['decomposition.extra']"),
        (["world.typo=3"], "Key 'typo' not in 'WorldConfig'"),
    ],
)
def test_bad_config_is_one_line_naming_key_and_value(capsys, overrides, expected):
    assert expected in _precheck_error(capsys, overrides)


def test_unwritable_run_dir_fails_before_hydra_creates_it(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    line = _precheck_error(capsys, [f"hydra.run.dir={tmp_path / 'file' / 'run'}"])
    assert "cannot write to the run directory" in line and "file/run" in line


def test_nearly_full_disk_fails_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 5 * 2**20))
    line = _precheck_error(capsys, [f"hydra.run.dir={tmp_path / 'run'}"])
    assert "only 5 MB free" in line and "needs 200 MB" in line


@pytest.mark.integration
def test_script_prints_no_traceback_unless_verbose(tmp_path):
    def run(*extra):
        return subprocess.run(
            [sys.executable, "scripts/decompose.py", "decomposition.lr=-1", f"hydra.run.dir={tmp_path}", *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    quiet, loud = run(), run("--verbose")
    assert quiet.returncode == 2 and quiet.stderr.strip() == "error: decomposition.lr=-1.0 must be > 0", quiet.stderr
    assert "Traceback" in loud.stderr and "ConfigError: decomposition.lr=-1.0 must be > 0" in loud.stderr


@pytest.mark.integration
def test_config_error_found_inside_a_stage_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/decompose.py", "target=trained", "tracking.mode=disabled", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: target.kind=trained is not a toy; toys are tms and resid_mlp (experiment=tms_5-2, ...)"
    ), proc.stderr


# ------------------------------------------------------------------------------------- the CLI's fault mapping


def _run_task(task, tmp_path, monkeypatch, capsys) -> tuple[int, str]:
    """Run `task` as a Hydra script in this process; returns (exit code, stderr)."""
    entry = hydra_script("faults")(task)
    monkeypatch.setattr(
        sys,
        "argv",
        ["faults", f"hydra.run.dir={tmp_path}", "tracking.mode=disabled", "hydra/job_logging=none", "hydra/hydra_logging=none"],
    )
    code = 0
    try:
        entry()
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "fault,code,message",
    [
        (BadRunFile("cannot read /x/target.safetensors: truncated"), 2, "error: cannot read /x/target.safetensors: truncated"),
        (DivergenceError("decomposition diverged at step 3"), 2, "error: decomposition diverged at step 3"),
        (Interrupted("stopped by SIGTERM at step 7"), 130, "stopped by SIGTERM at step 7; checkpoint in"),
        (DiskFull("disk full while writing /x/y"), 2, "error: disk full while writing /x/y"),
    ],
)
def test_cli_turns_faults_into_one_line_and_exit_code(tmp_path, monkeypatch, capsys, fault, code, message):
    def task(cfg, out_dir, logger):
        raise fault

    got, err = _run_task(task, tmp_path, monkeypatch, capsys)
    assert got == code and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_sigterm_outside_a_training_loop_exits_130_in_one_line(tmp_path, monkeypatch, capsys):
    def task(cfg, out_dir, logger):
        save_tensors(out_dir / "done.safetensors", {"x": torch.ones(2)})
        os.kill(os.getpid(), signal.SIGTERM)
        save_tensors(out_dir / "never.safetensors", {"x": torch.ones(2)})

    code, err = _run_task(task, tmp_path, monkeypatch, capsys)
    assert code == 130 and "interrupted (SIGTERM) outside a checkpointed training loop" in err, err
    assert (tmp_path / "done.safetensors").exists() and not (tmp_path / "never.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_signals_interrupt_makes_sigterm_a_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), signals_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)


# -------------------------------------------------------------------------------------------------- loading


def test_missing_truncated_and_corrupt_tensor_files_name_the_file(tmp_path):
    with pytest.raises(MissingRunFile, match="tensor file not found: .*absent.safetensors"):
        load_tensors(tmp_path / "absent.safetensors")
    good = save_tensors(tmp_path / "good.safetensors", {"w": torch.randn(64, 64)})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BadRunFile, match="cannot read .*truncated.safetensors.*truncated"):
        load_tensors(truncated)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 100)
    with pytest.raises(BadRunFile, match="corrupt.safetensors"):
        load_tensors(corrupt)


def test_missing_or_corrupt_run_directory_names_the_path(tmp_path):
    with pytest.raises(MissingRunFile, match="run directory not found: .*nowhere"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(MissingRunFile, match="is not a run directory: it has no config.yaml"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text("seed: [1, 2\n")
    with pytest.raises(BadRunFile, match="config.yaml is not valid YAML"):
        load_run(tmp_path)
    save_config(tmp_path, {"seed": 1})
    update_metrics(tmp_path, {"target/x": 1.0})
    (tmp_path / "metrics.json").write_text('{"target/x": 1.')
    with pytest.raises(BadRunFile, match="metrics.json is not valid JSON"):
        load_run(tmp_path)


def test_weights_from_another_config_name_file_and_shapes(tmp_path):
    path = save_tensors(tmp_path / "target.safetensors", nn.Linear(5, 2).state_dict())
    load_module_state(nn.Linear(5, 2), path)  # the same shapes load
    with pytest.raises(BadRunFile, match=r"target.safetensors does not fit this model .*weight: file \(2, 5\), model \(3, 5\)"):
        load_module_state(nn.Linear(5, 3), path)
    with pytest.raises(BadRunFile, match=r"unexpected \['bias'\]"):
        load_module_state(nn.Linear(5, 2, bias=False), path)


def test_ground_truth_file_with_missing_keys_names_file_and_keys(tmp_path):
    world = make_world(
        WorldConfig(n_attributes=4, n_animals=6, n_houses=2, n_economies=2, n_facts=1, n_fact_answers=6, attribute_margin=0.25), 0
    )
    save_world(world, tmp_path)
    assert "animal_directions" in load_world_tensors(tmp_path)
    tensors = load_tensors(tmp_path / WORLD_FILE)
    del tensors["animal_directions"]
    save_file(tensors, str(tmp_path / WORLD_FILE))
    with pytest.raises(BadRunFile, match=r"world.safetensors lacks keys \['animal_directions'\]"):
        load_world_tensors(tmp_path)


@pytest.mark.integration
def test_corrupt_target_in_run_dir_is_one_line_exit_2(tmp_path):
    (tmp_path / "target.safetensors").write_bytes(b"not a tensor file")
    proc = subprocess.run(
        [sys.executable, "scripts/decompose.py", "experiment=tms_5-2", "tracking.mode=disabled", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot read {tmp_path}/target.safetensors"), proc.stderr


@pytest.mark.parametrize("error", [RuntimeError("crash mid-write"), OSError("disk full")])
def test_save_atomic_write_keeps_old_file_on_any_failure(tmp_path, error):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise error

    with pytest.raises(type(error), match=str(error)):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind
