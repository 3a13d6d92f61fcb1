"""The main job (`make run`): world -> target -> decomposition -> features -> evaluation -> baselines -> report.

`python scripts/pipeline.py` runs every stage on the default config (world=demo, target=trained) into a new run
dir; `hydra.run.dir=<run dir> stages=[features,report]` re-runs some stages on an existing one, and re-running a
command resumes it (finished stages are reused, the decomposition continues from its latest checkpoint).
"""

from pathlib import Path

from circuitdecomp.cli import hydra_script
from circuitdecomp.config import Config
from circuitdecomp.tracking import Logger

_SHOWN = (
    "target/accuracy/min",
    "target/circuits/animals_per_lookup_unit",
    "decomp/faithfulness/components/relative_accuracy",
    "recovery/animals/frac_cos90",
    "recovery/attributes/frac_cos90",
    "recovery/animals/coef_recall",
    "recovery/attributes/coef_recall",
    "recovery/min/coef_recall",
)


@hydra_script("pipeline")
def main(cfg: Config, out_dir: Path, logger: Logger) -> None:
    from circuitdecomp.pipeline.run import run_pipeline

    metrics = run_pipeline(cfg, out_dir, logger)
    for key in _SHOWN:
        if key in metrics:
            print(f"{key}: {metrics[key]:.4g}")
    print(f"report: {out_dir / 'report.md'}")


if __name__ == "__main__":
    main()
