"""Progress bars that cooperate with Hydra's logging, and log lines in their place when output is not a terminal."""

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)


class LogProgress:
    """tqdm's `update`/`set_postfix` for pipes, nohup and Slurm logs: one log line at most every `every_s` seconds."""

    def __init__(self, total: int, desc: str, initial: int = 0, every_s: float = 60.0, clock: Any = time.monotonic) -> None:
        self.total, self.desc, self.n, self.every_s, self.clock = total, desc, initial, every_s, clock
        self.start_n, self.start_t = initial, clock()
        self.last_t, self.postfix = self.start_t, ""

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last_t >= self.every_s or self.n >= self.total:
            self.last_t = now
            log.info(self.line(now))

    def line(self, now: float) -> str:
        done, elapsed = self.n - self.start_n, now - self.start_t
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f", {_minutes((self.total - self.n) / rate)} left" if 0 < rate and self.n < self.total else ""
        post = f" | {self.postfix}" if self.postfix else ""
        return (
            f"{self.desc}: step {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%), {rate:.2f} steps/s{eta}{post}"
        )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


@contextlib.contextmanager
def progress(total: int, desc: str, initial: int = 0) -> Iterator[Any]:
    """A tqdm bar with log lines routed above it; where output is not a terminal (CI, pipes, nohup, Slurm logs) a
    `LogProgress` that logs the step, rate and time left once a minute instead."""
    with logging_redirect_tqdm(), tqdm(total=total, desc=desc, initial=initial, disable=None, dynamic_ncols=True) as bar:
        yield LogProgress(total, desc, initial) if bar.disable else bar
