"""How a training loop stops early: on a signal (checkpoint first, then `Interrupted`) or on a numerical fault.

Inside `stop_on_signals` SIGTERM and Ctrl-C only set a flag that the loop checks at the top of every step, so
it can write a checkpoint at a step boundary and stop. Outside such loops (data generation, evaluation, toy
targets that train in seconds) `signals_interrupt` makes SIGTERM behave like Ctrl-C, so the CLI reports both
in one line and every file already written stays whole (all writes are atomic).
"""

import contextlib
import math
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch


@dataclass
class StopFlag:
    signal_name: str | None = None

    @property
    def set(self) -> bool:
        return self.signal_name is not None


class Interrupted(Exception):
    """Raised after a final checkpoint was written because the process was asked to stop."""


class DivergenceError(RuntimeError):
    """The loss or gradients went non-finite or exploded; the last good checkpoint is kept."""


def _install(handler, signals=(signal.SIGTERM, signal.SIGINT)) -> dict:
    previous = {}
    for sig in signals:
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    return previous


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Inside the block SIGTERM/SIGINT only set the flag; a second Ctrl-C still kills at once."""
    flag = StopFlag()

    def handler(signum, frame):  # noqa: ARG001
        if flag.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signal_name = signal.Signals(signum).name

    previous = _install(handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises KeyboardInterrupt, like Ctrl-C, instead of killing the process silently."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = _install(handler, (signal.SIGTERM,))
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def check_finite(
    stage: str, step: int, total: torch.Tensor, terms: Mapping[str, torch.Tensor], grad_norm: float, max_loss: float, fix: str
) -> None:
    """Raise DivergenceError naming the step and every loss term if the loss or gradients are bad."""
    value = total.item()
    if math.isfinite(value) and value <= max_loss and math.isfinite(grad_norm):
        return
    shown = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
    raise DivergenceError(
        f"{stage} diverged at step {step}: total loss {value:.4g} (limit {max_loss:g}), grad norm "
        f"{grad_norm:.4g}; terms: {shown}. The last good checkpoint is kept; {fix}"
    )
