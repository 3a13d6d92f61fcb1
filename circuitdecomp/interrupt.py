"""Turn SIGTERM and Ctrl-C into a flag the training loops check, so they can checkpoint and stop cleanly."""

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class StopFlag:
    signal_name: str | None = None

    @property
    def set(self) -> bool:
        return self.signal_name is not None


class Interrupted(Exception):
    """Raised after a final checkpoint was written because the process was asked to stop."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Inside the block SIGTERM/SIGINT only set the flag; a second Ctrl-C still kills at once."""
    flag = StopFlag()
    previous = {}

    def handler(signum, frame):  # noqa: ARG001
        if flag.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signal_name = signal.Signals(signum).name

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
