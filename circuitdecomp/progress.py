"""Progress bars that cooperate with Hydra's logging and switch off when output is not a terminal."""

import contextlib
from collections.abc import Iterator

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


@contextlib.contextmanager
def progress(total: int, desc: str, initial: int = 0) -> Iterator[tqdm]:
    """A tqdm bar with log lines routed above it; disabled (disable=None) in CI, pipes and Slurm logs."""
    with logging_redirect_tqdm(), tqdm(total=total, desc=desc, initial=initial, disable=None, dynamic_ncols=True) as bar:
        yield bar
