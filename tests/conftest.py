"""Test-wide settings: wandb off and kept out of the home directory, a small thread count, seeded torch."""

import contextlib
import os
import subprocess
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


_REAL_POPEN = subprocess.Popen


def _starts_project_code(args) -> bool:
    """A command that runs one of this repository's scripts or examples, or torchrun."""
    words = [str(a) for a in (args if isinstance(args, (list, tuple)) else [args])]
    ours = ("scripts/", "examples/", f"{REPO}/scripts/", f"{REPO}/examples/")
    return any(w.startswith(ours) or os.path.basename(w) == "torchrun" for w in words)


@contextlib.contextmanager
def _refusing_scripts(item):
    """While an unmarked test (or a fixture it sets up) runs, starting a project script fails the test."""
    if item.get_closest_marker("integration") is not None:
        yield
        return

    class Refused(_REAL_POPEN):
        def __init__(self, args, *a, **kw):
            if _starts_project_code(args):
                raise AssertionError(f"{item.nodeid} starts {args!r}: mark it @pytest.mark.integration")
            super().__init__(args, *a, **kw)

    subprocess.Popen = Refused
    try:
        yield
    finally:
        subprocess.Popen = _REAL_POPEN


# A test that starts one of the project's scripts in a subprocess must carry `@pytest.mark.integration`, so that
# `pytest -m "not slow and not integration"` runs in process only; set-up is covered too (module-scoped fixtures).
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _refusing_scripts(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _refusing_scripts(item):
        return (yield)


def tiny_mlp() -> torch.nn.Module:
    """The small two-layer target the decomposition loop tests share (fixed seed)."""
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(6, 4, bias=False), torch.nn.ReLU(), torch.nn.Linear(4, 6))


def tiny_sparse_batch(gen: torch.Generator) -> torch.Tensor:
    """32 sparse non-negative inputs for `tiny_mlp`."""
    return torch.rand(32, 6, generator=gen) * (torch.rand(32, 6, generator=gen) < 0.2)


from circuitdecomp.world.config import WorldConfig  # noqa: E402  (after the wandb settings above)

# the tiny animal world of the target and decomposition tests: enough held-out pairs that every question type has some
TINY = WorldConfig(
    name="tiny",
    n_attributes=16,
    n_animals=24,
    n_houses=8,
    n_economies=8,
    n_facts=2,
    n_fact_answers=5,
    holdout_fraction=0.3,
    attribute_margin=0.25,
)


@pytest.fixture(scope="module")
def world():
    """The tiny world (seed 1); a test module may define its own `world` instead."""
    from circuitdecomp.world.world import make_world

    return make_world(TINY, seed=1)


@pytest.fixture(scope="module")
def planted(world):
    """The planted target on the tiny world (seed 1)."""
    from circuitdecomp.target.config import TargetKind, TransformerTargetConfig
    from circuitdecomp.target.planted import planted_model

    return planted_model(world, TransformerTargetConfig(kind=TargetKind.planted), seed=1)
