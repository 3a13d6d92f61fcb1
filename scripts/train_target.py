"""Build the animal-world target: `python scripts/train_target.py target=trained world=demo` (or target=templated, planted, plain;
docs/targets.md says what each is built from).

Writes world.safetensors, target.safetensors, metrics.json (target/accuracy/<question_type>, target/mechanisms/*,
target/circuits/*) and target_circuits.png into the run dir.
"""

from pathlib import Path

from circuitdecomp.cli import hydra_script
from circuitdecomp.config import Config
from circuitdecomp.tracking import Logger


@hydra_script("train_target")
def main(cfg: Config, out_dir: Path, logger: Logger) -> None:
    from circuitdecomp.target.run import build_target

    metrics = build_target(cfg, out_dir, logger)
    for key in sorted(metrics):
        if key.startswith(("target/accuracy", "target/circuits/animals", "target/train_seconds", "target/saturation/mean_p")):
            print(f"{key}: {metrics[key]:.4g}")


if __name__ == "__main__":
    main()
