"""Decompose a target with SPD: `python scripts/decompose.py experiment=tms_5-2` (also tms_40-10, *_id, resid_mlp1)."""

from pathlib import Path

from circuitdecomp.cli import hydra_script
from circuitdecomp.config import Config
from circuitdecomp.tracking import Logger


@hydra_script("decompose")
def main(cfg: Config, out_dir: Path, logger: Logger) -> None:
    from circuitdecomp.toys.run import decompose_toy

    metrics = decompose_toy(cfg, out_dir, logger)
    for key in sorted(metrics):
        if not key.startswith("decomp/final"):
            print(f"{key}: {metrics[key]:.4g}" if isinstance(metrics[key], float) else f"{key}: {metrics[key]}")


if __name__ == "__main__":
    main()
