"""Admission control: which requests a server takes, and in what order they get a worker.

A request is admitted while fewer than ``max_concurrent_requests`` run or wait, and fewer
than ``max_requests_per_caller`` of them come from its caller (an API key; a connection
when the server has no keys); past either it is answered RESOURCE_EXHAUSTED at once,
marked safe to retry. Admitted requests wait in one queue per caller, and a free worker
takes the next request of the next caller in turn (round robin); one caller runs on at
most all workers but one, so a caller that floods the server with heavy requests slows
itself: another caller's light request finds a free worker, or waits for one, not for
the flood. Every request carries a ``Deadline``; ``cancel_all`` (shutdown) stops them all.

Queued jobs are dispatched from the event loop's thread; a short job may also run where its
request arrived (``run_here``: the event loop, or a thread of grpc's server for the Search hot
path), so the tallies are kept under one lock and a request is counted in by ``admit``, which
checks the limits and counts it in one step.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lamina.engine.bounds import Deadline
from lamina.errors import Cancelled, DeadlineExceeded

#: callers whose tallies are kept (GetInfo of a scoped key); the oldest are forgotten past it
_MAX_TALLIES = 10_000


@dataclass(eq=False)
class _Job:
    caller: str
    run: Callable[[], Any]
    deadline: Deadline
    done: asyncio.Future[Any]


@dataclass
class _Tally:
    """Requests of one caller: admitted and not yet over, and running on a worker."""

    admitted: int = 0
    running: int = 0
    queue: deque[_Job] = field(default_factory=deque)


class Gate:
    """Admission control and request tallies shared by every servicer of one server. Queued
    jobs run on ``executor`` (dispatched on the event loop's thread); ``admit`` and
    ``run_here`` may be called from any thread."""

    def __init__(self, limit: int, per_caller: int, executor: ThreadPoolExecutor, workers: int) -> None:
        self.limit = limit
        self.per_caller = per_caller
        self.workers = workers
        self.share = max(1, workers - 1)  # workers one caller may hold while others wait
        self.in_flight = 0
        self.served = 0
        self.rejected = 0
        self.abandoned = 0
        # per caller: served, rejected and abandoned requests (what GetInfo shows a scoped key)
        self._tallies: dict[str, Counter[str]] = {}
        self._closed = False
        self._executor = executor
        self._callers: dict[str, _Tally] = {}
        self._turn: deque[str] = deque()  # callers with queued jobs, in round-robin order
        self._running = 0
        self._jobs: set[_Job] = set()
        self._here: set[Deadline] = set()  # the deadlines of jobs running where they arrived
        self._lock = threading.RLock()

    def admit(self, caller: str) -> str | None:
        """Count a new request of ``caller`` in, or say why it is turned away (then it counts
        as rejected): one step, so requests arriving at once on several threads never pass a
        limit together. An admitted request goes on to ``submit`` or ``run_here``."""
        with self._lock:
            refusal = self.refusal(caller)
            if refusal is not None:
                self.rejected += 1
                self._count(caller, "rejected")
                return refusal
            self._callers.setdefault(caller, _Tally()).admitted += 1
            self.in_flight += 1
            return None

    def refusal(self, caller: str) -> str | None:
        """Why a new request of ``caller`` is turned away now, or None to admit it."""
        if self._closed:
            return "the server is shutting down; retry with another server or later"
        if self.in_flight >= self.limit:
            return (
                f"server is busy: {self.in_flight} requests are running or queued "
                f"(limit max_concurrent_requests={self.limit}); retry with back-off"
            )
        tally = self._callers.get(caller)
        if tally is not None and tally.admitted >= self.per_caller:
            return (
                f"too many requests at once from this caller: {tally.admitted} are running or queued "
                f"(limit max_requests_per_caller={self.per_caller}); wait for answers before sending more"
            )
        return None

    def submit(self, caller: str, run: Callable[[], Any], deadline: Deadline) -> asyncio.Future[Any]:
        """Queue the job of an admitted request (``admit``), on the event loop's thread; the
        future holds its result."""
        loop = asyncio.get_running_loop()
        job = _Job(caller, run, deadline, loop.create_future())
        with self._lock:
            tally = self._callers[caller]
            self._jobs.add(job)
            if not tally.queue:
                self._turn.append(caller)
            tally.queue.append(job)
            self._dispatch()
        return job.done

    def run_here(self, caller: str, run: Callable[[], Any], deadline: Deadline) -> Any:
        """Run the job of an admitted request (``admit``) on this thread: a short one (see
        ``CollectionProtocol.quick``) costs less than its hops to a worker and back. It counts
        as in flight while it runs, as a queued job does, and ``cancel_all`` stops it."""
        with self._lock:
            self._here.add(deadline)
            if self._closed:  # shutdown began after it was admitted
                deadline.cancel("the server is shutting down")
        try:
            return run()
        except (Cancelled, DeadlineExceeded):
            with self._lock:
                self.abandoned += 1
                self._count(caller, "abandoned")
            raise
        finally:
            with self._lock:
                self._here.discard(deadline)
                tally = self._callers[caller]
                tally.admitted -= 1
                self.in_flight -= 1
                if tally.admitted == 0 and not tally.queue:
                    self._callers.pop(caller, None)

    def _dispatch(self) -> None:
        """Give free workers to queued jobs, one caller after another."""
        skipped = 0
        while not self._closed and self._running < self.workers and self._turn and skipped < len(self._turn):
            caller = self._turn[0]
            tally = self._callers[caller]
            if tally.running >= self.share:
                self._turn.rotate(-1)  # it holds its share: the next caller goes first
                skipped += 1
                continue
            skipped = 0
            job = tally.queue.popleft()
            self._turn.popleft()
            if tally.queue:
                self._turn.append(caller)
            tally.running += 1
            self._running += 1
            inner = asyncio.get_running_loop().run_in_executor(self._executor, job.run)
            inner.add_done_callback(functools.partial(self._finished, job))

    def _settle(self, job: _Job, tally: _Tally) -> None:
        """A job is over (run or not): it no longer counts."""
        tally.admitted -= 1
        self.in_flight -= 1
        self._jobs.discard(job)
        if tally.admitted == 0 and not tally.queue:
            self._callers.pop(job.caller, None)

    def _finished(self, job: _Job, inner: asyncio.Future[Any]) -> None:
        with self._lock:
            tally = self._callers[job.caller]
            tally.running -= 1
            self._running -= 1
            self._settle(job, tally)
            if not inner.cancelled() and isinstance(inner.exception(), (Cancelled, DeadlineExceeded)):
                self.abandoned += 1
                self._count(job.caller, "abandoned")
        if not job.done.done():  # its handler may have gone (cancelled): the error is consumed
            if inner.cancelled():
                job.done.cancel()
            elif inner.exception() is not None:
                job.done.set_exception(inner.exception())  # type: ignore[arg-type]
                job.done.exception()  # its handler may have gone: never "never retrieved"
            else:
                job.done.set_result(inner.result())
        elif not inner.cancelled():
            inner.exception()
        with self._lock:
            self._dispatch()

    def _count(self, caller: str, what: str) -> None:
        tally = self._tallies.get(caller)
        if tally is None:
            if len(self._tallies) >= _MAX_TALLIES:  # connections come and go: forget the oldest
                del self._tallies[next(iter(self._tallies))]
            tally = self._tallies[caller] = Counter()
        tally[what] += 1

    def count_served(self, caller: str) -> None:
        with self._lock:
            self.served += 1
            self._count(caller, "served")

    def tally_of(self, caller: str) -> dict[str, int]:
        """One caller's requests: served, rejected, abandoned and in flight."""
        with self._lock:
            tally = Counter(self._tallies.get(caller, Counter()))
            now = self._callers.get(caller)
        return {
            "served": tally["served"],
            "rejected": tally["rejected"],
            "abandoned": tally["abandoned"],
            "in_flight": now.admitted if now is not None else 0,
        }

    def cancel_all(self, why: str) -> None:
        """Stop every admitted request: running ones at their next check, queued ones
        without starting; nothing is dispatched any more (the server is stopping)."""
        with self._lock:
            self._cancel_all(why)

    def _cancel_all(self, why: str) -> None:
        self._closed = True
        for deadline in list(self._here):
            deadline.cancel(why)
        for job in list(self._jobs):
            job.deadline.cancel(why)
        for tally in list(self._callers.values()):
            while tally.queue:
                job = tally.queue.popleft()
                self._settle(job, tally)
                if not job.done.done():
                    job.done.set_exception(Cancelled(f"{why}; the request was not started"))
                    job.done.exception()
        self._turn.clear()
