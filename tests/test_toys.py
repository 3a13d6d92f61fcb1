"""A few-step smoke decomposition of every toy experiment, and the toy metrics on known answers."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from circuitdecomp.cli import CONFIG_DIR
from circuitdecomp.config import load_config
from circuitdecomp.runio import load_metrics as load_run_metrics
from circuitdecomp.toys.evaluate import column_match, dense_error, identity_error
from circuitdecomp.toys.run import decompose_toy
from circuitdecomp.tracking import NullLogger

SMALL = {
    "tms_5-2": ["target.train_steps=3000"],
    "tms_5-2_id": ["target.train_steps=3000"],
    "tms_40-10": [
        "target.train_steps=300",
        "target.check_features=false",
        "decomposition.modules.0.C=50",
        "decomposition.modules.1.C=50",
    ],
    "tms_40-10_id": ["target.train_steps=300", "target.check_features=false"],
    "resid_mlp1": [
        "target.n_features=12",
        "target.d_embed=40",
        "target.d_mlp=6",
        "target.train_steps=30",
        "decomposition.modules.0.C=12",
        "decomposition.modules.1.C=12",
        "evaluation.dense_ci.0.k=6",
    ],
}


def _cfg(experiment: str, extra: list[str]):
    # torch.compile costs ~20 s per new shape: only the default experiment exercises the compiled CI path.
    compiled = "true" if experiment == "tms_5-2" else "false"
    overrides = [
        f"experiment={experiment}",
        "decomposition.steps=4",
        "decomposition.warmup_steps=3",
        "decomposition.batch_size=64",
        "tracking.mode=disabled",
        f"decomposition.compile={compiled}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return load_config(compose("config", overrides=overrides))


@pytest.mark.parametrize("experiment", sorted(SMALL))
def test_smoke_decomposition(experiment, tmp_path):
    cfg = _cfg(experiment, SMALL[experiment])
    metrics = decompose_toy(cfg, tmp_path, NullLogger())
    assert load_run_metrics(tmp_path)["decomp/target_solution_error"] == metrics["decomp/target_solution_error"]
    for key in ("decomp/target_solution_error", "decomp/mmcs", "decomp/ml2r", "decomp/ms_per_step"):
        assert key in metrics
    assert any(k.startswith("decomp/n_live/") for k in metrics) and any(k.startswith("decomp/ci_l0/") for k in metrics)
    assert (tmp_path / "decomposition.safetensors").exists() and (tmp_path / "ci_one_hot.png").exists()


def test_tms_target_that_misses_features_is_reported(tmp_path):
    cfg = _cfg("tms_5-2", ["target.train_steps=1", "target.max_attempts=2"])
    with pytest.raises(RuntimeError, match="no TMS target reproduced every feature in 2 attempts"):
        decompose_toy(cfg, tmp_path, NullLogger())


def test_column_match_on_exact_and_scaled_components():
    W = torch.randn(3, 4)
    V, U = torch.zeros(4, 6), torch.zeros(6, 3)
    for j in range(4):  # component j = column j of W: U_j = W[:, j], V_jj = 1
        U[j], V[j, j] = W[:, j], 1.0
    m = column_match(V, U, W)
    assert m.mmcs == pytest.approx(1.0) and m.ml2r == pytest.approx(1.0)
    m = column_match(-0.5 * V, U, W)  # flipped sign: cosine -1; the best is then another component
    assert m.mmcs < 0.99
    assert column_match(0.5 * V, U, W).ml2r == pytest.approx(0.5)


def test_target_solution_errors():
    perfect = torch.zeros(3, 5)
    perfect[0, 2] = perfect[1, 0] = perfect[2, 4] = 1.0
    assert identity_error(perfect, 0.1) == 0
    shared = perfect.clone()
    shared[1, 2] = 0.9  # feature 1 also uses feature 0's component
    assert identity_error(shared, 0.1) == 1
    dense = torch.zeros(4, 6)
    dense[:, [1, 3]] = 1.0
    assert dense_error(dense, 2, 0.1) == 0
    assert dense_error(dense, 3, 0.1) == 1  # a third busy component is missing
    dense[0, 3] = 0.0  # feature 0 needs only one of the two: still the dense-2 solution
    assert dense_error(dense, 2, 0.1) == 0
    dense[2, 5] = 0.5  # stray activity on a third component
    assert dense_error(dense, 2, 0.1) == 1
