"""Test-wide settings: wandb off and kept out of the home directory, a small thread count, seeded torch."""

import os
import tempfile

_WANDB_HOME = tempfile.mkdtemp(prefix="circuitdecomp-tests-wandb-")
os.environ["WANDB_MODE"] = "disabled"  # before anything imports wandb
os.environ["WANDB_SILENT"] = "true"
for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
    os.environ[var] = _WANDB_HOME

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
