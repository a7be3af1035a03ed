"""What one request may cost: checked before the engine starts, and while it works.

* ``Deadline``: a request's deadline and its client's interest in the answer. The server
  installs one on the worker thread that runs a request (``running``); the engine's long
  loops (filter evaluation over stored payloads, scans, scroll, payload-index builds,
  blocks of batch queries) call ``check()`` between blocks of work, which raises
  DeadlineExceeded or Cancelled once the client has gone or the server is stopping, so
  the work stops with its client. Embedded calls run without one and are never stopped.
* ``check_filter_cost``: a filter's rows that no payload index decides are checked
  against their stored payloads; their number times the filter's conditions is refused
  past ``Limits.max_filter_checks`` before a single payload is read, with a message that
  names the fields to index. Large such scans take turns (``scan_turn``): they hold the
  GIL, and a few at once keep the rest of the server responsive.
* ``check_answer_size``: an answer's size, estimated as hits x (vector bytes + payload
  bytes), is refused past ``Limits.max_message_bytes`` before the search runs: an answer
  that cannot be sent is never built in memory.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from lamina.config import Limits
from lamina.engine.filters import CompiledFilter, Leaf, Node
from lamina.errors import Cancelled, DeadlineExceeded, ResourceExhausted


class Deadline:
    """A request's deadline (``seconds`` from now; None: none) and whether it was
    cancelled; ``check()`` raises once either says the work should stop. Set from the
    event loop's thread, read by the worker's: plain attributes are enough."""

    def __init__(self, seconds: float | None = None) -> None:
        self.at = None if seconds is None else time.monotonic() + seconds
        self.why: str | None = None

    def cancel(self, why: str = "the client cancelled the request") -> None:
        if self.why is None:
            self.why = why

    @property
    def over(self) -> bool:
        """Whether the work should stop (cancelled, or past the deadline)."""
        return self.why is not None or (self.at is not None and time.monotonic() > self.at)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: none; at most 0 once passed)."""
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def check(self) -> None:
        """Cancelled or DeadlineExceeded when the work should stop."""
        if self.why is not None:
            raise Cancelled(f"{self.why}; the work was stopped")
        if self.at is not None and time.monotonic() > self.at:
            raise DeadlineExceeded("the request's deadline passed; the work was stopped")


_current = threading.local()


class running:  # lower case: callers use it as the context manager function it was
    """Make ``deadline`` the one ``check()`` consults on this thread while the block runs (a
    class: every request enters it, and a generator-based context manager costs more)."""

    __slots__ = ("deadline", "outer")

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.outer: Deadline | None = None

    def __enter__(self) -> Deadline:
        self.outer = getattr(_current, "deadline", None)
        _current.deadline = self.deadline
        return self.deadline

    def __exit__(self, *exc: object) -> None:
        _current.deadline = self.outer


def current() -> Deadline | None:
    """The deadline of this thread's request (None: embedded call, or none installed)."""
    return getattr(_current, "deadline", None)


def check() -> None:
    """Stop the work of this thread's request if its client has gone (no-op without one)."""
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.check()


#: filter scans over stored payloads running at once (past ``SCAN_MIN_ROWS`` rows): they are
#: Python work holding the GIL, so more of them at once only slow each other and every other
#: request of the process down; the rest wait (checking their deadline) for a turn
SCAN_SLOTS = max(1, (os.cpu_count() or 2) // 2)
SCAN_MIN_ROWS = 2_048
_scans = threading.BoundedSemaphore(SCAN_SLOTS)


@contextmanager
def scan_turn(rows: int) -> Iterator[None]:
    """Hold one of ``SCAN_SLOTS`` turns while checking ``rows`` stored payloads (small scans
    need none); waiting for one checks this thread's deadline."""
    if rows < SCAN_MIN_ROWS:
        yield
        return
    while not _scans.acquire(timeout=0.05):
        check()
    try:
        yield
    finally:
        _scans.release()


def conditions(tree: Node | Leaf) -> int:
    """Conditions a filter checks on every payload (a ``$in`` is one: a set lookup)."""
    if isinstance(tree, Leaf):
        return 1
    return sum(conditions(child) for child in tree.children)


def check_filter_cost(rows: int, compiled: CompiledFilter, schema: Mapping[str, str], limits: Limits) -> None:
    """ResourceExhausted when checking ``rows`` stored payloads against ``compiled`` costs
    more than ``limits.max_filter_checks``, naming the fields an index would answer."""
    per_row = max(1, conditions(compiled.tree))
    checks = rows * per_row
    if checks <= limits.max_filter_checks:
        return
    fields = sorted(f for f in compiled.fields if f not in schema) or sorted(compiled.fields)
    raise ResourceExhausted(
        f"this filter would check {rows:,} stored payloads against {per_row} condition(s) "
        f"({checks:,} checks), over the limit max_filter_checks={limits.max_filter_checks:,}: "
        f"create a payload index on {', '.join(repr(f) for f in fields)} (create_payload_index) so that "
        "the index answers it, or narrow the filter with an indexed field"
    )


#: bytes of one hit or point besides its vector and payload: id, score, protobuf framing
HIT_OVERHEAD = 32


def _per_hit(dim: int, with_vector: bool, payload_bytes: float, with_payload: bool) -> tuple[int, float]:
    """Estimated bytes of one hit's vector and of its payload in an answer."""
    return (4 * dim + 8 if with_vector else 0), (payload_bytes + 8 if with_payload else 0.0)


def answer_fits(
    hits: int, dim: int, with_vector: bool, payload_bytes: float, with_payload: bool, limits: Limits
) -> bool:
    """Whether ``hits`` results fit in one message (what ``check_answer_size`` checks)."""
    vector, payload = _per_hit(dim, with_vector, payload_bytes, with_payload)
    return hits * (HIT_OVERHEAD + vector + payload) <= limits.max_message_bytes


def check_answer_size(
    hits: int,
    dim: int,
    with_vector: bool,
    payload_bytes: float,
    with_payload: bool,
    limits: Limits,
    paging: str = "ask for fewer hits (a smaller k or fewer queries per batch)",
) -> None:
    """ResourceExhausted when ``hits`` results (with vectors of ``dim`` floats and payloads
    of ``payload_bytes`` on average) would not fit in one message of ``max_message_bytes``."""
    vector, payload = _per_hit(dim, with_vector, payload_bytes, with_payload)
    size = hits * (HIT_OVERHEAD + vector + payload)
    if size <= limits.max_message_bytes:
        return
    parts = [f"{hits:,} results"]
    if with_vector:
        parts.append(f"{vector:,} bytes of vector each")
    if with_payload:
        parts.append(f"~{payload:,.0f} bytes of payload each")
    ways = [paging]
    if with_vector:
        ways.append("leave out vectors (with_vector=False)")
    if with_payload:
        ways.append("leave out payloads (with_payload=False)")
    ways.append("or page through points with scroll")
    raise ResourceExhausted(
        f"the answer would be about {size / 2**20:,.0f} MiB ({', '.join(parts)}), over the message limit "
        f"max_message_bytes={limits.max_message_bytes / 2**20:,.0f} MiB; nothing was done: {', '.join(ways)}"
    )


class PayloadSize:
    """The mean size of a collection's stored payloads, from a sample of them, taken again
    once the collection has grown by a quarter (what ``check_answer_size`` estimates with)."""

    SAMPLE = 256

    def __init__(self) -> None:
        self._rows = -1
        self._mean = 0.0
        self._lock = threading.Lock()

    def mean(self, store: Any, next_row: int) -> float:
        """Mean payload bytes of ``store`` (a CollectionStore) holding rows below ``next_row``."""
        if self._rows >= 0 and next_row <= self._rows * 1.25 + 64:
            return self._mean  # fresh enough: no lock (every search asks; a sample is an estimate)
        with self._lock:
            if self._rows >= 0 and next_row <= self._rows * 1.25 + 64:
                return self._mean
            sizes: list[int] = []
            for start in (0, next_row // 3, 2 * next_row // 3):  # three places: old and new points
                for i, (_, blob) in enumerate(store.scan_payloads(start)):
                    if i >= self.SAMPLE // 3:
                        break
                    sizes.append(len(blob))
            self._mean = sum(sizes) / len(sizes) if sizes else 0.0
            self._rows = next_row
            return self._mean
