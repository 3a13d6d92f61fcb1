"""Every config composes into the typed dataclasses; unknown keys and bad values are refused."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from circuitdecomp.cli import CONFIG_DIR
from circuitdecomp.config import Config, load_config
from circuitdecomp.decomp.config import DecompositionConfig

GROUPS = ["world", "target", "decomposition", "evaluation", "tracking", "baselines"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    for option in _options(group):
        cfg = load_config(_compose([f"{group}={option}"]))
        assert isinstance(cfg, Config)


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = load_config(_compose([f"experiment={experiment}"]))
    assert cfg.name == experiment
    assert isinstance(cfg.decomposition, DecompositionConfig) and cfg.decomposition.modules


def test_configs_are_frozen():
    cfg = load_config(_compose([]))
    with pytest.raises(Exception, match="read-only"):
        cfg.seed = 3


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="nonsense"):
        load_config(_compose(["+nonsense=1"]))
    with pytest.raises(ValueError, match=r"decomposition\.extra"):
        load_config(_compose(["+decomposition.extra=1"]))
    with pytest.raises(ConfigCompositionException, match="typo"):
        _compose(["world.typo=3"])


def test_bad_values_name_the_key():
    with pytest.raises(Exception, match="decomposition.lr"):
        load_config(_compose(["decomposition.lr=-1"]))
    with pytest.raises(Exception, match="n_attributes"):
        load_config(_compose(["world.n_attributes=500", "world.d_model=64"]))
    with pytest.raises(Exception, match="decompose_mix"):
        load_config(_compose(["decompose_mix.fact=-1"]))
    with pytest.raises(Exception, match="colour"):
        load_config(_compose(["+decompose_mix.colour=1"]))


@pytest.mark.integration
@pytest.mark.parametrize("override,key", [("+nonsense=1", "nonsense"), ("world.typo=3", "typo")])
def test_script_rejects_unknown_key_in_one_line(override, key, tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/decompose.py", override, f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("Set the environment")]
    assert len(lines) == 1 and key in lines[0], proc.stderr


@pytest.mark.integration
def test_multirun_sweeps_into_the_default_sweep_dir(tmp_path):
    """`-m` with the configured sweep dir (it once interpolated `${hydra:...}`, which Hydra cannot resolve there)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(REPO) / "scripts/decompose.py"),
            "-m",
            "experiment=tms_5-2",
            "decomposition.steps=2,3",
            "decomposition.restarts=1",
            "decomposition.warmup_steps=0",
            "decomposition.compile=false",
            "tracking.mode=disabled",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted((tmp_path / "runs/multirun/decompose").glob("*_tms_5-2/*/metrics.json"))
    assert [p.parent.name for p in jobs] == ["0", "1"]


@pytest.mark.integration
def test_cfg_job_resolve_prints_the_resolved_config_after_the_overrides():
    """`--cfg job --resolve` after the overrides (the docs' form): the job-name override the CLI adds goes first."""
    cmd = [sys.executable, "scripts/decompose.py", "experiment=tms_5-2", "decomposition.steps=7", "--cfg", "job", "--resolve"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "steps: 7" in proc.stdout and "${" not in proc.stdout


def test_spd_steps_grow_with_the_worlds_questions_and_yield_to_an_override():
    """configs/decomposition/world.yaml: max(4000, 112 x questions); an explicit decomposition.steps wins."""
    steps = {w: load_config(_compose([f"world={w}"])).decomposition.steps for w in ("demo", "seed")}
    assert steps == {"demo": 4000, "seed": 112 * (50 + 4)}
    wide = load_config(_compose(["world.n_attributes=60", "world.n_animals=600", "world.n_facts=4"])).decomposition.steps
    assert wide == 112 * (60 + 4)
    assert load_config(_compose(["world=seed", "decomposition.steps=7"])).decomposition.steps == 7


def test_spd_steps_refuses_bad_arguments():
    from omegaconf import OmegaConf

    from circuitdecomp.config import spd_steps

    root = OmegaConf.create({"world": {"n_attributes": 4, "n_facts": 2, "attribute_questions": [0, 1]}})
    assert spd_steps(10, 1, _root_=root) == 40  # two asked attributes + two facts
    with pytest.raises(ValueError, match="no world"):
        spd_steps(10, 1, _root_=OmegaConf.create({}))
    with pytest.raises(ValueError, match=">= 1"):
        spd_steps(0, 1, _root_=root)
