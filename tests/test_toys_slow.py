"""Full-length toy reproductions (minutes each): `make test-slow`."""

import pytest
from hydra import compose, initialize_config_dir

from circuitdecomp.cli import CONFIG_DIR
from circuitdecomp.config import load_config
from circuitdecomp.toys.run import decompose_toy
from circuitdecomp.tracking import NullLogger


@pytest.mark.slow
def test_tms_5_2_reproduces_the_paper(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = load_config(compose("config", overrides=["experiment=tms_5-2", "tracking.mode=disabled"]))
    m = decompose_toy(cfg, tmp_path, NullLogger())
    assert m["decomp/mmcs"] >= 0.999
    assert 0.98 <= m["decomp/ml2r"] <= 1.02
    assert m["decomp/target_solution_error"] == 0
    assert m["decomp/n_live/linear1"] == 5 and m["decomp/n_live/linear2"] == 5
