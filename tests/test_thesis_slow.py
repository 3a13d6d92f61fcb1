"""The thesis guarded end to end on the small planted world (`experiment=world_mini`, ~10 minutes): `make test-slow`.

The planted target is the positive control: its circuits are built from the ground truth, so SPD must recover both
families one-to-one and stay faithful; the controls must be there and scored by the same code, and the neuron
control of a planted target (whose units are the planted circuits) scores as well, which is exactly why every
headline stands beside it.
"""

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.integration
@pytest.mark.slow
def test_world_mini_recovers_both_families_one_to_one_beside_the_controls(tmp_path):
    stages = "stages=[target,decompose,features,random_start,report]"  # the SAE sweep has its own tests
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/pipeline.py",
            "experiment=world_mini",
            "tracking.mode=disabled",
            stages,
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["target/accuracy/min"] >= 0.99
    for family in ("animals", "attributes"):
        assert m[f"recovery/{family}/one_to_one_frac_cos90"] >= 0.95, family
        assert m[f"recovery/{family}/coef_recall"] >= 0.9, family
    assert m["decomp/faithfulness/components/relative_accuracy"] >= 0.99
    assert m["decomp/faithfulness/with_remainder/relative_accuracy"] >= 0.99
    for control in ("controls/neurons/recovery", "controls/random/recovery", "spd_random_start/recovery"):
        for family in ("animals", "attributes", "min"):
            assert 0.0 <= m[f"{control}/{family}/one_to_one_frac_cos90"] <= 1.0, control
    assert m["controls/random/recovery/min/one_to_one_frac_cos90"] <= 0.05  # chance stays at chance
    report = (tmp_path / "report.md").read_text()
    assert "| no decomposition: the target's own units |" in report and "| SPD features, random start |" in report
