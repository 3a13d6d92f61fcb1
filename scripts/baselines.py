"""SAE baselines on a saved target run: `python scripts/baselines.py baselines.run_dir=runs/train_target/<time>`.

Reads world and target from the run, trains the SAE sweep (configs/baselines/default.yaml) on its read-out
residuals and writes thesis_table.{md,json,png}, baselines.safetensors and metrics.json into this script's own run
directory (the saved run is left untouched). A pipeline run that has features.safetensors gets the features row on top.
Interrupted (SIGTERM, Ctrl-C), the same command with the same hydra.run.dir resumes the sweep where it stopped.
"""

from pathlib import Path

from circuitdecomp.cli import hydra_script
from circuitdecomp.config import Config
from circuitdecomp.frozen import ConfigError
from circuitdecomp.runio import load_run
from circuitdecomp.tracking import Logger


@hydra_script("baselines")
def main(cfg: Config, out_dir: Path, logger: Logger) -> None:
    if not cfg.baselines.run_dir:
        raise ConfigError("pass baselines.run_dir=<a train_target or pipeline run directory> (it holds world and target)")
    run_dir = Path(cfg.baselines.run_dir)
    load_run(run_dir)  # a missing run directory, or one without config.yaml, fails here in one line, before any work
    from circuitdecomp.baselines.run import run_baselines

    run_baselines(cfg, run_dir, logger, out_dir=out_dir)
    print((out_dir / "thesis_table.md").read_text())


if __name__ == "__main__":
    main()
