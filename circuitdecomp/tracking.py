"""Experiment tracking: one small logger interface, a wandb implementation and a no-op twin."""

import logging
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from circuitdecomp.frozen import Frozen, check

log = logging.getLogger(__name__)


class TrackingMode(str, Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class TrackingConfig(Frozen):
    """wandb settings. `mode=offline` works without network; upload later with `wandb sync`."""

    mode: TrackingMode = TrackingMode.offline  # offline needs no network or account; disabled logs nothing
    project: str = "circuitdecomp"  # the wandb project
    entity: str | None = None  # the wandb team or user (None: the logged-in user's default)
    log_every: int = 100  # training metrics every this many steps

    def __post_init__(self) -> None:
        check(bool(self.project), "tracking.project is empty; name a wandb project")
        check(self.log_every >= 1, f"tracking.log_every={self.log_every} must be >= 1")
        super().__post_init__()


@runtime_checkable
class Logger(Protocol):
    """What training loops may call: metrics are flat dicts of namespaced keys."""

    def log(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_figure(self, key: str, fig: Any, step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, name: str, kind: str) -> None: ...
    def finish(self) -> None: ...


class NullLogger:
    """The no-op twin: same interface, does nothing."""

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_figure(self, key: str, fig: Any, step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        pass

    def finish(self) -> None:
        pass


class PrefixedLogger:
    """Logs to `inner` under `prefix/` (a second decomposition in one run keeps its own keys)."""

    def __init__(self, inner: Logger, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.inner.log({f"{self.prefix}/{k}": v for k, v in metrics.items()}, step)

    def log_figure(self, key: str, fig: Any, step: int | None = None) -> None:
        self.inner.log_figure(f"{self.prefix}/{key}", fig, step)

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        self.inner.log_artifact(path, f"{self.prefix}-{name}", kind)

    def finish(self) -> None:
        pass  # the inner logger's run outlives the prefix


class WandbLogger:
    """Logs to a wandb run whose files live inside the run directory."""

    def __init__(self, cfg: TrackingConfig, out_dir: Path, config: dict[str, Any], name: str) -> None:
        import wandb  # lazy: 0.9 s

        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            dir=str(out_dir),
            mode=cfg.mode.value,
            config=config,
            name=name,
            reinit="finish_previous",
        )
        self._stages: set[str] = set()  # metric prefixes whose step axis is defined
        log.info("wandb %s run in %s", cfg.mode.value, self.run.dir)

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log(self._with_steps(dict(metrics), step))

    def log_figure(self, key: str, fig: Any, step: int | None = None) -> None:
        self.run.log(self._with_steps({key: self._wandb.Image(fig)}, step))

    def _with_steps(self, row: dict[str, Any], step: int | None) -> dict[str, Any]:
        """Each stage's step as `<stage>/step`, its metrics' x-axis. (wandb's own step must only grow, and every
        stage counts from 0: passing `step=` dropped the decomposition's curves after target training.)"""
        if step is None:
            return row
        for stage in sorted({k.split("/")[0] for k in row}):
            axis = f"{stage}/step"
            if stage not in self._stages:
                self.run.define_metric(axis)
                self.run.define_metric(f"{stage}/*", step_metric=axis)
                self._stages.add(stage)
            row[axis] = step
        return row

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        art = self._wandb.Artifact(name, type=kind)
        art.add_file(str(path))
        self.run.log_artifact(art)

    def finish(self) -> None:
        self.run.finish()


def make_logger(cfg: TrackingConfig, out_dir: Path, config: dict[str, Any], name: str) -> Logger:
    """A wandb logger unless tracking is disabled by config, by `WANDB_MODE=disabled` (tests), or this is not rank 0
    of torchrun."""
    if cfg.mode is TrackingMode.disabled or os.environ.get("WANDB_MODE") == "disabled" or os.environ.get("RANK", "0") != "0":
        return NullLogger()
    return WandbLogger(cfg, out_dir, config, name)
