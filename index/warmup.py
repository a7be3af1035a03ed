"""Memory-mapped index files made resident in the background.

A sealed segment's graph (index/graphview.py) and vector file are searched through read-only
memory maps: opening one costs nothing, but every page a search touches for the first time in
a process is a page fault (and a disk read when the page cache does not hold it). Measured on
1,000,000 manifold points after a reopen (ef 128): the first 200 searches took 109 page faults
each, p50 1.39 ms and mean 11.7 ms, against 0.71 / 0.99 ms once the pages were mapped. ``warm``
touches one byte per page of a map on a daemon thread, in a numba loop that releases the GIL,
right after the map is opened: the open stays fast, searches meanwhile fault as before, and
soon none do. Maps larger than ``WARM_FRACTION`` of the memory available are left to fault
on demand (warming them would only push other pages out)."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from numba import njit

log = logging.getLogger("lamina.index")

#: bytes between touches: a page (fault-around maps up to 16 neighbours of a faulting page)
PAGE = 4096
#: maps smaller than this are not worth a thread
WARM_MIN_BYTES = 1 << 20
#: maps larger than this fraction of MemAvailable are left to fault on demand
WARM_FRACTION = 0.5


@njit(nogil=True, cache=True)
def _touch(data: np.ndarray, stride: int) -> int:
    """Read one byte every ``stride`` bytes of ``data`` (uint8); the sum keeps the reads."""
    total = 0
    for i in range(0, data.size, stride):
        total += data[i]
    return total


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def warm(mapped: np.ndarray, what: str) -> threading.Thread | None:
    """Touch every page of ``mapped`` (a C-contiguous array over a read-only memory map) on a
    daemon thread, without the GIL; the thread (to join in tests), or None when the map is too
    small or too large for it (see the module's doc). ``what`` names the file in the log."""
    size = mapped.nbytes
    if size < WARM_MIN_BYTES:
        return None
    available = available_bytes()
    if available is not None and size > WARM_FRACTION * available:
        log.info(
            "%s: %.0f MiB, left to page in on demand (%.0f MiB available)",
            what,
            size / 2**20,
            available / 2**20,
        )
        return None
    data = mapped.reshape(-1).view(np.uint8)

    def run() -> None:
        began = time.perf_counter()
        try:
            _touch(data, PAGE)
        except Exception as exc:  # an I/O error surfaces in the search that reads the page
            log.warning("%s: warming its pages stopped: %s", what, exc)
            return
        log.debug("%s: %.0f MiB paged in in %.2f s", what, size / 2**20, time.perf_counter() - began)

    thread = threading.Thread(target=run, name="lamina-warm", daemon=True)
    thread.start()
    return thread
