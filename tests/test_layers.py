"""The layering the README describes, enforced: `scripts/check_layers.py` (also run by `make check`)."""

import importlib.util
from pathlib import Path

from conftest import REPO


def _checker():
    spec = importlib.util.spec_from_file_location("check_layers", Path(REPO) / "scripts" / "check_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_import_of_the_package_points_one_way():
    assert _checker().violations(Path(REPO)) == []


def test_an_import_against_the_layering_is_reported_with_file_line_and_rule(tmp_path):
    pkg = tmp_path / "circuitdecomp"
    for folder, text in {
        "world": "import torch\nfrom circuitdecomp.runio import save_tensors\n",
        "decomp": "def f():\n    from circuitdecomp.world.world import World  # lazy imports count too\n",
        "baselines": "from circuitdecomp.pipeline.run import run_pipeline\n",
        "pipeline": "from circuitdecomp.baselines import run\n",
    }.items():
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "mod.py").write_text(text)
    schema_and_loop = "from circuitdecomp.decomp.train import train_step\nfrom circuitdecomp.decomp.config import C\n"
    (pkg / "config.py").write_text(schema_and_loop)
    found = _checker().violations(tmp_path)
    foundation = "checkpoint, frozen, interrupt, progress, rundir, runio, tracking"
    assert found == [
        "circuitdecomp/baselines/mod.py:1: baselines imports circuitdecomp.pipeline.run (allowed: checkpoint, config, "
        "evaluate, frozen, interrupt, progress, rundir, runio, target, tracking, world)",
        "circuitdecomp/config.py:1: config imports circuitdecomp.decomp.train (allowed: the `config` modules of baselines, "
        "checkpoint, decomp, evaluate, features, frozen, interrupt, progress, rundir, runio, target, toys, tracking, world)",
        f"circuitdecomp/decomp/mod.py:2: decomp imports circuitdecomp.world.world (allowed: {foundation})",
    ]
