"""Keep freed CPU memory inside the process: an SPD step allocates and frees the same large tensors every step."""

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_BIG = 2**30  # bytes; blocks below this come from (and go back to) the heap instead of fresh mmap'd pages


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed blocks instead of returning them to the OS; False (and no change) elsewhere.

    With glibc's defaults every tensor of several MB is a fresh mmap that the kernel zero-fills page by page on
    first touch, and its free hands the pages back: a resid_mlp1 step spent ~10% of its time in those page
    faults (README "Speed"). Costs nothing but RSS: the process keeps its peak memory until it exits.
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _BIG) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if not ok:
        log.warning("glibc refused the mallopt settings; freed memory goes back to the OS as usual")
    return ok
