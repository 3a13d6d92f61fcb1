"""SIGTERM to a real decomposition process: it checkpoints, exits cleanly, and the re-run ends bit-identical."""

import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

ARGS = [
    "scripts/decompose.py",
    "experiment=tms_5-2",
    "target.train_steps=3000",
    "decomposition.steps=400",
    "decomposition.restarts=1",
    "decomposition.compile=false",
    "decomposition.batch_size=512",
    "decomposition.checkpoint_every=25",
    "decomposition.eval_every=100",
    "tracking.mode=disabled",
]


def _run(run_dir, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *ARGS, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.integration
def test_sigterm_then_rerun_matches_uninterrupted(tmp_path):
    straight = _run(tmp_path / "straight")
    interrupted = _run(tmp_path / "interrupted")
    ckpts = tmp_path / "interrupted" / "checkpoints"
    deadline = time.time() + 240
    while not (ckpts.exists() and any(p.name >= "step_00000100" for p in ckpts.glob("step_*"))):
        assert interrupted.poll() is None and time.time() < deadline, interrupted.communicate()
        time.sleep(0.2)
    interrupted.send_signal(signal.SIGTERM)
    _, err = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 130, err
    assert "stopped by SIGTERM" in err and "re-run the same command" in err
    assert not (tmp_path / "interrupted" / "decomposition.safetensors").exists()
    resumed = _run(tmp_path / "interrupted")
    assert resumed.wait(timeout=240) == 0, resumed.communicate()
    assert straight.wait(timeout=240) == 0, straight.communicate()
    a = load_file(str(tmp_path / "straight" / "decomposition.safetensors"))
    b = load_file(str(tmp_path / "interrupted" / "decomposition.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
