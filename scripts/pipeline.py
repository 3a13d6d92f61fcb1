"""The main job (`make run`): every stage that exists, on the default config.

Today that is the SPD decomposition of the default target (TMS 5-2, the paper's first check), scored against
its known mechanisms; the animal-world stages (world -> target -> decomposition -> features -> evaluation ->
report) join here as they land.
"""

from pathlib import Path

from circuitdecomp.cli import hydra_script
from circuitdecomp.config import Config
from circuitdecomp.tracking import Logger


@hydra_script("pipeline")
def main(cfg: Config, out_dir: Path, logger: Logger) -> None:
    from circuitdecomp.toys.run import decompose_toy

    metrics = decompose_toy(cfg, out_dir, logger)
    print(f"MMCS {metrics['decomp/mmcs']:.4f}  ML2R {metrics['decomp/ml2r']:.4f}  "
          f"target-solution error {metrics['decomp/target_solution_error']}")


if __name__ == "__main__":
    main()
