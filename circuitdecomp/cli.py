"""The one place scripts meet Hydra: compose, validate, set up the run dir and tracking, report errors.

Exit codes: 0 done; 2 a clear error in one line on stderr (bad config, bad or missing run file, unwritable or
full disk, divergence); 130 stopped by SIGTERM / Ctrl-C (after a checkpoint where a training loop was running:
re-run the same command to resume); 1 anything unexpected (a bug: full traceback). `--verbose` or
`HYDRA_FULL_ERROR=1` shows the traceback of the one-line errors too. docs/faults.md lists every fault tried.
"""

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

from circuitdecomp.config import Config, config_dict, load_config, retired_key
from circuitdecomp.frozen import ConfigError
from circuitdecomp.interrupt import DivergenceError, Interrupted, signals_interrupt
from circuitdecomp.runio import RunFileError, check_writable, save_config
from circuitdecomp.tracking import Logger, make_logger

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
log = logging.getLogger("circuitdecomp")

Task = Callable[[Config, Path, Logger], object]


def _verbose() -> bool:
    return bool(os.environ.get("HYDRA_FULL_ERROR"))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _check_group_options(parsed: list) -> None:
    """`group=option` must name a file in configs/<group>/: Hydra silently skips a missing *optional* one (experiment)."""
    for o in parsed:
        group = o.key_or_group
        if o.is_delete() or o.package is not None or not (CONFIG_DIR / group).is_dir():
            continue
        value = o.value()
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        if value is not None and (not isinstance(value, str) or value not in options):
            _fail(f"{group}={o.input_line.split('=', 1)[1]} names no option in configs/{group}/; available: {', '.join(options)}")


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

    Sweep values (`-m a=1,2`) and `hydra.*` settings are left to Hydra itself, except that an explicit
    `hydra.run.dir` is checked for being writable here: Hydra creates it before our code runs.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as err:
        _fail(_one_line(err))
    for o in parsed:
        why = retired_key(o.key_or_group)
        if why is not None:
            _fail(why)
    plain = [a for a, o in zip(args, parsed) if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    _check_group_options([o for o in parsed if not o.is_sweep_override()])
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            load_config(compose("config", overrides=plain))
    except (HydraException, ValueError, TypeError, OmegaConfBaseException) as err:
        if _verbose():
            raise
        _fail(_one_line(err))
    run_dirs = [o.value() for o in parsed if o.key_or_group == "hydra.run.dir" and not o.is_sweep_override()]
    if run_dirs and not any(a in argv for a in ("-m", "--multirun")) and "${" not in str(run_dirs[-1]):
        try:
            check_writable(Path(str(run_dirs[-1])))
        except OSError as err:
            _fail(str(err))


def hydra_script(job: str) -> Callable[[Task], Callable[[], None]]:
    """Decorate `task(cfg, out_dir, logger)` into a Hydra entry point named `job`."""

    def wrap(task: Task) -> Callable[[], None]:
        @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
        def main(dcfg: DictConfig) -> None:
            verbose = _verbose()
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
                with signals_interrupt():  # SIGTERM outside the training loops: like Ctrl-C, reported below
                    task(cfg, out_dir, logger)
            except Interrupted as err:  # a checkpoint was written; the same command resumes
                print(
                    f"{err}; checkpoint in {out_dir}; re-run the same command with hydra.run.dir={out_dir} to resume",
                    file=sys.stderr,
                )
                sys.exit(130)
            except KeyboardInterrupt as err:
                print(
                    f"interrupted ({err or 'SIGINT'}) outside a checkpointed training loop; every file in {out_dir} is "
                    "complete or absent (atomic writes); re-running the same command does this stage again",
                    file=sys.stderr,
                )
                sys.exit(130)
            except (ConfigError, RunFileError, DivergenceError) as err:
                if verbose:
                    raise
                _fail(str(err))
            finally:
                logger.finish()
            log.info("outputs in %s", out_dir)
            print(f"outputs in {out_dir}")

        @functools.wraps(task)
        def entry() -> None:
            if "--verbose" in sys.argv:  # ours, not Hydra's: full tracebacks for the one-line errors
                sys.argv.remove("--verbose")
                os.environ["HYDRA_FULL_ERROR"] = "1"
            if not any(a in sys.argv for a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c")):
                precheck_overrides(sys.argv[1:])
            if not any(a.startswith("hydra.job.name=") for a in sys.argv):
                # run dirs are runs/<script>/..., not runs/cli/...; beside the user's overrides, since argparse refuses
                # overrides on both sides of a flag (`experiment=x --cfg job --resolve`, `-m experiment=x`)
                sys.argv.insert(_first_override(sys.argv), f"hydra.job.name={job}")
            main()

        return entry

    return wrap


def _first_override(argv: list[str]) -> int:
    """Index of the first `key=value` override in argv (after the script name), or its end when there is none."""
    return next((i for i, a in enumerate(argv) if i > 0 and "=" in a and not a.startswith("-")), len(argv))
