"""The main job end to end on a tiny world (a few steps per stage): every artifact and metric key, and resuming."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from circuitdecomp.runio import load_tensors

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "target=planted",
    "world.n_animals=12",
    "world.n_attributes=4",
    "world.n_houses=3",
    "world.n_economies=2",
    "world.n_facts=2",
    "world.n_fact_answers=4",
    "decomposition.steps=6",
    "decomposition.warmup_steps=2",
    "decomposition.eval_every=3",
    "decomposition.compile=false",
    "decomposition.batch_size=64",
    "decomposition.modules=[{pattern:blocks.*.mlp.in,C:30},{pattern:blocks.*.mlp.out,C:30}]",
    "evaluation.n_inputs=200",
    "baselines.train.steps=5",
    "baselines.widths=[{attributes:1}]",
    "baselines.l0_factors=[1.0]",
    "baselines.l1_coeffs=[0.01]",
    "tracking.mode=disabled",
]
KEYS = [
    "target/accuracy/min",
    "target/circuits/animals_per_lookup_unit",
    "decomp/faithfulness/components/relative_accuracy",
    "decomp/faithfulness/ci_masks/relative_accuracy",
    "decomp/delta_share/blocks.0.mlp.in",
    "decomp/n_live/blocks.0.mlp.in",
    "features/n_features",
    "recovery/animals/frac_cos90",
    "recovery/attributes/frac_cos90",
    "recovery/animals/coef_recall",
    "recovery/attributes/coef_recall",
    "recovery/min/coef_recall",
    "recovery/animals/units_for_r2_90",
    "time/target_s",
    "time/decompose_s",
    "time/features_s",
    "time/baselines_s",
    "time/random_start_s",
    # honest scores: one-to-one headline, every projection, the controls, SPD from a random start, the weights
    "recovery/animals/one_to_one_frac_cos90",
    "recovery/min/one_to_one_frac_cos90",
    "recovery/min/one_to_one_coef_recall",
    "recovery_raw/min/one_to_one_frac_cos90",
    "recovery_data/min/one_to_one_frac_cos90",
    "recovery_tokens/min/one_to_one_frac_cos90",
    "controls/neurons/recovery/min/one_to_one_frac_cos90",
    "controls/neurons/recovery/animals/coef_recall",
    "controls/random/recovery/min/one_to_one_frac_cos90",
    "spd_random_start/recovery/min/one_to_one_frac_cos90",
    "spd_random_start/decomp/faithfulness/components/relative_accuracy",
    "decomp/weight_share_outside/blocks.0.mlp.in",
    "decomp/faithfulness/with_remainder/relative_accuracy",
    "features/n_fit_inputs",
    "features/n_scored_inputs",
]
FILES = [
    "config.yaml",
    "world.safetensors",
    "target.safetensors",
    "decomposition.safetensors",
    "features.safetensors",
    "features.json",
    "controls.safetensors",
    "metrics.json",
    "report.md",
    "ci_by_question.png",
    "recovery.png",
    "target_circuits.png",
    "spd_random_start/decomposition.safetensors",
    "spd_random_start/features.safetensors",
]


def _run(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/pipeline.py", *TINY, *extra, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"WANDB_MODE": "disabled", **_env()},
    )


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pipeline")
    proc = _run(d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


@pytest.mark.integration
def test_every_artifact_and_metric_key(run_dir: Path) -> None:
    for name in FILES:
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    missing = [k for k in KEYS if k not in metrics]
    assert not missing, missing
    assert metrics["target/accuracy/min"] == 1.0  # the planted target is exact
    assert not [k for k in metrics if "/with_delta/" in k]  # the remainder W - ΣUV is scored as with_remainder
    feats = load_tensors(run_dir / "features.safetensors")
    n = metrics["features/n_features"]
    # scored on at most half the world's inputs (the other half is left to fit on)
    assert feats["directions"].shape[0] == n and feats["values"].shape[1] == n
    assert feats["values"].shape[0] == min(200, _n_world_inputs(run_dir) // 2)
    assert torch.allclose(feats["directions"].norm(dim=1), torch.ones(n), atol=1e-5)
    prov = json.loads((run_dir / "features.json").read_text())
    assert prov["n_features"] == n and all(f["members"] for f in prov["features"])
    report = (run_dir / "report.md").read_text()
    assert "recovery, animals" in report and "![recovery](recovery.png)" in report
    for row in (
        "SPD features (the recipe)",
        "SPD features, random start",
        "no decomposition: the target's own units",
        "random directions (chance)",
    ):
        assert f"| {row} |" in report, row
    table = (run_dir / "thesis_table.md").read_text()
    for row in ("features from circuits |", "SPD from a random start |", "the target's own units |", "as many as the features |"):
        assert row in table, row
    # features are fitted on inputs disjoint from the scored ones
    assert metrics["features/n_fit_inputs"] + metrics["features/n_scored_inputs"] <= _n_world_inputs(run_dir)


def _n_world_inputs(run_dir: Path) -> int:
    return int(load_tensors(run_dir / "world.safetensors")["examples_answer"].shape[0])


@pytest.mark.integration
def test_rerun_reuses_finished_stages(run_dir: Path) -> None:
    """The same command again resumes: target and decomposition are loaded, not rebuilt."""
    before = {name: (run_dir / name).read_bytes() for name in ("target.safetensors", "decomposition.safetensors")}
    took = json.loads((run_dir / "metrics.json").read_text())
    proc = _run(run_dir, "stages=[target,decompose,features,random_start,report]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "found in" in proc.stderr + proc.stdout and "decomposition loaded" in proc.stderr + proc.stdout
    for name, data in before.items():
        assert (run_dir / name).read_bytes() == data, name
    again = json.loads((run_dir / "metrics.json").read_text())
    # a reused target and a loaded decomposition keep the time they took to make; the re-run features stage is timed anew
    kept = ("target", "decompose", "random_start")
    assert [again[f"time/{s}_s"] for s in kept] == [took[f"time/{s}_s"] for s in kept]
    assert again["time/features_s"] != took["time/features_s"]


@pytest.mark.integration
def test_a_toy_target_is_refused_before_any_work(tmp_path: Path) -> None:
    proc = _run(tmp_path, "target=tms")
    assert proc.returncode == 2
    assert "target=tms is a toy" in proc.stderr and not (tmp_path / "world.safetensors").exists()
