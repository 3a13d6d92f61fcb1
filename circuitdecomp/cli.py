"""The one place scripts meet Hydra: compose, validate, set up the run dir and tracking, report errors."""

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from circuitdecomp.config import Config, config_dict, load_config
from circuitdecomp.decomp.train import DivergenceError
from circuitdecomp.interrupt import Interrupted
from circuitdecomp.runio import check_writable, save_config
from circuitdecomp.tracking import Logger, make_logger

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
log = logging.getLogger("circuitdecomp")

Task = Callable[[Config, Path, Logger], object]


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _one_line(err: BaseException) -> str:
    """Hydra/OmegaConf messages span several lines of bookkeeping; keep what names the problem."""
    noise = ("full_key", "reference_type", "object_type", "Set the environment", "To append", "Config search path", "provider=")
    parts = []
    for e in (err, err.__cause__):
        for line in str(e or "").splitlines():
            line = line.strip()
            if line and not line.startswith(noise) and line not in parts:
                parts.append(line)
    return " ".join(parts)


def precheck_overrides(argv: list[str]) -> None:
    """Compose the command line's overrides once before Hydra does, to turn its errors into one line (exit 2).

    Sweep values (`-m a=1,2`) and `hydra.*` settings are left to Hydra itself.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as err:
        _fail(_one_line(err))
    plain = [a for a, o in zip(args, parsed) if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            load_config(compose("config", overrides=plain))
    except (HydraException, ValueError, TypeError, OmegaConfBaseException) as err:
        if os.environ.get("HYDRA_FULL_ERROR"):
            raise
        _fail(_one_line(err))


def hydra_script(job: str) -> Callable[[Task], Callable[[], None]]:
    """Decorate `task(cfg, out_dir, logger)` into a Hydra entry point named `job`."""

    def wrap(task: Task) -> Callable[[], None]:
        @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
        def main(dcfg: DictConfig) -> None:
            verbose = bool(os.environ.get("HYDRA_FULL_ERROR"))
            try:
                cfg = load_config(dcfg)
            except (ValueError, TypeError, OmegaConfBaseException) as err:
                if verbose:
                    raise
                _fail(str(err).splitlines()[0])
            out_dir = Path(HydraConfig.get().runtime.output_dir)
            try:
                check_writable(out_dir)
            except OSError as err:
                _fail(str(err))
            save_config(out_dir, cfg)
            logger = make_logger(cfg.tracking, out_dir, config_dict(cfg), name=f"{job}-{cfg.name}")
            try:
                task(cfg, out_dir, logger)
            except Interrupted as err:  # a checkpoint was written; the same command resumes
                print(f"{err}; checkpoint in {out_dir}; re-run the same command with hydra.run.dir={out_dir} to resume",
                      file=sys.stderr)
                sys.exit(130)
            except DivergenceError as err:
                if verbose:
                    raise
                _fail(str(err))
            finally:
                logger.finish()
            log.info("outputs in %s", out_dir)
            print(f"outputs in {out_dir}")

        @functools.wraps(task)
        def entry() -> None:
            if not any(a in sys.argv for a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c")):
                precheck_overrides(sys.argv[1:])
            if not any(a.startswith("hydra.job.name=") for a in sys.argv):
                sys.argv.append(f"hydra.job.name={job}")  # run dirs are runs/<script>/..., not runs/cli/...
            main()

        return entry

    return wrap
