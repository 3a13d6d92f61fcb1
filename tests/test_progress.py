"""Progress reporting where output is not a terminal: timed log lines with rate and time left."""

import logging

from circuitdecomp.progress import LogProgress, progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_log_progress_logs_once_per_interval_with_rate_and_eta(caplog):
    clock = FakeClock()
    bar = LogProgress(total=100, desc="decompose", initial=10, every_s=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="circuitdecomp.progress"):
        for _ in range(30):  # 30 steps in 30 s: under the interval, nothing logged
            clock.t += 1
            bar.update()
        assert caplog.messages == []
        bar.set_postfix(loss="0.5")
        for _ in range(30):
            clock.t += 1
            bar.update()
    assert caplog.messages == ["decompose: step 70/100 (70%), 1.00 steps/s, 30 s left | loss=0.5"]


def test_log_progress_logs_the_last_step():
    bar = LogProgress(total=3, desc="x", every_s=1e9, clock=FakeClock())
    bar.update(3)
    assert bar.line(0.0) == "x: step 3/3 (100%), 0.00 steps/s"


def test_progress_is_a_log_twin_off_a_terminal(capsys):
    with progress(5, "train") as bar:  # pytest captures output: not a terminal
        assert isinstance(bar, LogProgress)
