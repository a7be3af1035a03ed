"""The optimizer's scheduler: one background thread per collection that wakes when
there is work, runs one job step at a time (seal, compaction/merge, payload-index
build, tenant graph) until none is left, and reports idle to ``optimize()``. Each job
decides under the collection lock and builds without it; readers never wait for a build."""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable

from lamina.cores import background_nice
from lamina.errors import FailedPrecondition
from lamina.index.tiers import BuildStopped

from .. import bounds
from .compaction import Compaction
from .payload_indexes import PayloadIndexing
from .scrub import Scrub
from .seal import Seal
from .tenant_graphs import TenantGraphs

log = logging.getLogger("lamina.engine")


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_heap() -> None:
    """Return freed heap memory to the OS. glibc keeps the blocks the write path frees (a
    1,000-row batch allocates megabytes) inside the heap; after a burst of sealing that was
    36 MB of 240 resident for 60,000 x 384 vectors (bench/README.md, compare)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class Scheduler(Scrub, Seal, Compaction, PayloadIndexing, TenantGraphs):
    """The optimizer of a collection: its thread, its loop, and the order of its jobs."""

    def _start_optimizer(self) -> None:
        """Start the optimizer thread and have it look for work at once."""
        self._replaced_folders = []
        self._dropped_vectors = []
        self._nice = background_nice()  # a bad LAMINA_BUILD_NICE fails the open, not the thread
        self._optimizer = threading.Thread(
            target=self._optimize_loop, name=f"optimizer-{self.name}", daemon=True
        )
        self._optimizer.start()
        self._wake.set()

    def optimize(self, timeout: float | None = None) -> bool:
        """Seal the mutable segment now (whatever its size), compact and merge segments,
        and wait until the optimizer is idle; False if ``timeout`` seconds passed first."""
        self._check_open()
        self._store.check_writable()
        if timeout is not None and timeout > threading.TIMEOUT_MAX:
            timeout = None  # longer than a wait can be: wait without a limit
        with self._lock:
            self._force_seal = True
            self._fault = None  # tried again now; set again if the disk still refuses
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while (
                (self._force_seal or self._busy or self._wake.is_set())
                and not self._closed
                and (self._fault is None or self._busy)  # a stalled optimizer answers at once
            ):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(0.1 if left is None else min(left, 0.1))
                bounds.check()  # the request stops waiting when its client has gone (the work goes on)
        if self._fault is not None:
            raise type(self._fault)(str(self._fault))
        if self._error:
            raise FailedPrecondition(f"the optimizer of {self.name!r} failed: {self._error}")
        return True

    def _optimize_loop(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                if self._closed:
                    return
                self._wake.clear()
                self._busy = True
            try:
                worked = False
                while self._optimize_step():
                    worked = True
                    self._remove_replaced()  # outside the lock: searches do not wait for it
                self._error, self._fault = "", None
                self._backoff.reset()
                if worked:
                    release_heap()  # a burst of seals and merges is over: give its garbage back
            except BuildStopped:
                log.info("closing %r: the index build in progress was stopped", self.name)
            except Exception as exc:  # keep serving from what is sealed; info() shows the error
                # a full or read-only disk: retried after a back-off, the forced seal kept pending
                self._fault = self._backoff.failed(exc, self._store.path, f"optimizer of {self.name!r}")
                if self._fault is None:
                    log.exception("optimizer of %r failed", self.name)
                self._error = str(self._fault or f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self._force_seal = self._force_seal and self._fault is not None
            with self._lock:
                self._busy = False
                self._idle.notify_all()

    def _seal_size(self, size: int) -> int:
        """Rows one seal takes: ``size``, or, when the optimizer is behind (a bulk load) and
        the last segment grows by what is sealed, as many as it holds (at most doubling it,
        within ``max_segment_rows``): a backlog is inserted into one graph in a few steps
        that each stay searchable, rather than sealed into many small graphs merged later."""
        last = self._segments[-1] if self._segments else None
        if last is None or not self._growable(last):
            return size
        return max(size, min(last.live_count, self.config.max_segment_rows - last.size))

    def _optimize_step(self) -> bool:
        """Do one unit of work (seal, compact or merge, build a payload index or a tenant
        graph); False when there is none."""
        with self._lock:
            if self._closed or self._damaged:
                return False  # a degraded collection keeps its manifest as it is until repaired
            if self._scrub_step():
                return True
            if self._store.read_only:
                return False
            pending = self._next_row - self._mut_start
            size = self.config.seal_rows
            seal = pending >= size or (self._force_seal and pending > 0)
            if seal and self._sealed_last:
                # one compaction between two seals: under a steady stream of replacing writes
                # sealing alone would pile up segments full of dead rows
                self._sealed_last = False
                if self._rewrite_step():
                    return True
            if seal:
                self._sealed_last = True
                return self._seal_step(min(pending, self._seal_size(size)))
            did = self._rewrite_step() or self._index_step() or self._tenant_step()
            if not did:
                self._force_seal = False
            return did
