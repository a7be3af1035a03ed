"""A read-only HNSW graph searched in place in hnswlib's saved file.

hnswlib's ``load_index`` copies a saved graph (links and float32 vectors) into the
process's heap: every process serving a segment holds its own copy, and reopening a large
collection reads every byte first. ``GraphView`` maps the file instead (one read-only
``np.memmap``: its pages belong to the page cache and are shared by every process that maps
it) and walks it with a numba kernel that does hnswlib's search step for step:

- greedy descent on the upper levels from the entry point;
- the level-0 beam search with ef = max(ef, k): a min-heap of candidates, a max-heap of the
  ef best found, a visited mark per element; stop when the nearest candidate is farther than
  the worst of a full beam;
- distances as in hnswlib's spaces (``ip``: 1 - dot, ``l2``: squared L2).

Rows that may not be returned (deleted, or outside a filter's allow-list) are walked through
but never returned, as hnswlib does with deleted marks and filter callbacks; a ``returnable``
mask per call replaces both, so a filter costs a byte per visited node, not a Python call.

Opening reads only the header and the upper-level link lists' sizes (one small region at the
end of the file): each element with level > 0 gets the word offset of its link lists in the
file; level 0 (link count + links, vector, label per fixed-size record) is read in place.

How a process holds the file is ``LAMINA_GRAPH_MEMORY`` (``graph_memory``): ``shared`` (the
default) walks the mapped file itself, one copy in the page cache for every process that maps it
(the processes of ``lamina serve --processes N``: server/processes.py); ``private`` copies it once
at open into fresh anonymous memory backed by transparent huge pages. Measured at 100,000 x 384
(docs/scale.md): a reopened collection walked 1.1-1.2x faster private (fewer TLB misses than over
4 KiB page-cache pages), a segment walked right after its build in the same process no faster or
slower (0.86-0.97x; a fresh file's page cache may already use large folios), so it is opt-in.

The file must be written by ``graphfile.relabel`` (internal id = label = the segment's local
row). Every link read is checked against the element count, so a damaged file gives
``GraphDamaged``, never a read outside the map.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lamina.errors import DataLoss, InvalidArgument
from lamina.index.graphfile import HEADER_BYTES, GraphLayout
from lamina.index.graphwalk import BAD_LINK, index_upper, walk_graph, walk_graphs
from lamina.index.kernels import METRIC_IP
from lamina.index.warmup import warm
from lamina.types import FloatMatrix

#: the environment variable choosing how graphs are held: ``private`` or ``shared`` (see above)
GRAPH_MEMORY_ENV = "LAMINA_GRAPH_MEMORY"
GRAPH_MEMORY_MODES = ("private", "shared")


def graph_memory() -> str:
    """How this process holds the graphs it opens: ``LAMINA_GRAPH_MEMORY``, default ``shared``."""
    value = os.environ.get(GRAPH_MEMORY_ENV, "").strip() or "shared"
    if value not in GRAPH_MEMORY_MODES:
        raise InvalidArgument(f"{GRAPH_MEMORY_ENV} must be 'private' or 'shared', not {value!r}")
    return value


def _huge_pages(nbytes: int) -> np.ndarray:
    """``nbytes`` of fresh anonymous memory (uint8), asked to be backed by transparent huge pages:
    a new mapping, not heap memory a freed build left in 4 KiB pages (numpy's own huge-page advice
    then came too late: a graph copied right after its build walked slower than the map)."""
    buffer = mmap.mmap(-1, max(1, nbytes), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # a kernel without them refuses: 4 KiB pages, still private
        with contextlib.suppress(OSError):
            buffer.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buffer, np.uint8, count=nbytes)


class GraphDamaged(DataLoss, ValueError):
    """A saved HNSW graph file is truncated or its structure is inconsistent; the message
    names the file. (A ValueError too: a segment that cannot be opened is reported damaged.)"""


class _Marks:
    """Visited marks of one walk at a time: a uint16 tag per element and the current tag
    (bumped per query, so that no query clears n bytes; cleared once every 65,535 queries)."""

    __slots__ = ("marks", "tag")

    def __init__(self, n: int) -> None:
        self.marks = np.zeros(max(1, n), np.uint16)
        self.tag = np.zeros(1, np.int64)  # the kernel bumps it


class GraphView:
    """An hnswlib graph (written by ``graphfile.relabel``) searched in place: in the process's
    own copy of the file, or in its memory map (``graph_memory``)."""

    def __init__(self, path: Path, dim: int, metric: int) -> None:
        self.path = path
        self.metric = metric
        self.dim = dim
        try:
            layout = GraphLayout(path)
            mapped = np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise GraphDamaged(f"HNSW graph {path} cannot be read: {exc}") from exc
        n, record = layout.count, layout.record
        size = mapped.size
        level0_end = HEADER_BYTES + n * record
        maxlevel = int(layout.fields[6])
        self.count = n
        if (size - HEADER_BYTES) % 4 or size < level0_end + 4 * n:
            raise GraphDamaged(
                f"HNSW graph {path} is truncated: {size} bytes, its header says {n} elements of "
                f"{record} bytes"
            )
        if layout.vector_at + 4 * dim > layout.label_at or layout.vector_at < 4 * (1 + layout.max_m0):
            raise GraphDamaged(f"HNSW graph {path}: records do not hold {dim}-d vectors ({layout.fields})")
        if n and not (0 <= layout.entry < n and 0 <= maxlevel < 64):
            raise GraphDamaged(
                f"HNSW graph {path}: entry point {layout.entry} / level {maxlevel} out of range"
            )
        cols = record // 4
        # the file after the header as 32-bit words: level-0 records, then the upper levels
        self._words = np.ndarray(
            ((size - HEADER_BYTES) // 4,), dtype="<u4", buffer=mapped, offset=HEADER_BYTES
        )
        #: whether the graph is this process's own copy (``graph_memory``) rather than the map
        self.private = graph_memory() == "private"
        #: pages the map in now, rather than one search fault at a time (None: not worth it)
        self.warming: threading.Thread | None = None
        if self.private:  # one read of the file; numpy copies without the GIL
            words = _huge_pages(self._words.nbytes).view(self._words.dtype)
            words[:] = self._words
            self._words = words
            del mapped
        else:
            self.warming = warm(self._words, f"HNSW graph {path}")
        self._level0 = self._words[: n * cols].reshape(n, cols)
        self._floats = self._level0.view("<f4")
        self._upper = np.full(n, -1, np.int64)
        levels = np.zeros(n, np.int32)
        end = index_upper(self._words, n * cols, n, 1 + layout.max_m, self._upper, levels)
        if end != self._words.size:
            raise GraphDamaged(
                f"HNSW graph {path} is damaged: its upper-level link lists "
                + ("run past the end of the file" if end < 0 else f"end at word {end} of {self._words.size}")
            )
        if n and levels[layout.entry] != maxlevel:
            raise GraphDamaged(f"HNSW graph {path}: the entry point's level is not the graph's top level")
        self.entry = layout.entry
        self.maxlevel = maxlevel
        self.max_m = layout.max_m
        self.max_m0 = layout.max_m0
        self._vector_col = layout.vector_at // 4
        #: what the kernel needs besides the arrays: vector column (words), dim, entry point,
        #: top level, words per upper-level list, level-0 link capacity
        self.shape = np.array(
            [self._vector_col, dim, self.entry, maxlevel, 1 + self.max_m, self.max_m0], np.int64
        )
        self._pool: list[_Marks] = []
        self._pool_lock = threading.Lock()

    @property
    def vectors(self) -> FloatMatrix:
        """(count, dim) float32: row i is the vector of element (= label) i, a view of the map."""
        return self._floats[:, self._vector_col : self._vector_col + self.dim]

    def search(
        self, queries: FloatMatrix, k: int, ef: int, returnable: np.ndarray
    ) -> tuple[FloatMatrix, np.ndarray, np.ndarray]:
        """hnswlib's ``knn_query`` with beam max(ef, k): (distances (q, k) float32 as hnswlib
        gives them, best first; labels (q, k) int64, -1 past the count; counts (q,)). Only
        rows where ``returnable`` is True are returned; the walk passes through the others.
        Releases the GIL; any number of threads may search at once."""
        nq = queries.shape[0]
        k = min(k, self.count)
        dists = np.full((nq, k), np.inf, np.float32)
        labels = np.full((nq, k), -1, np.int64)
        counts = np.zeros(nq, np.int64)
        if self.count == 0 or k <= 0:
            return dists, labels, counts
        self._walk(queries, k, ef, returnable, dists, labels, counts)
        return dists, labels, counts

    def nearest(
        self, query: FloatMatrix, k: int, ef: int, returnable: np.ndarray
    ) -> tuple[FloatMatrix, np.ndarray] | None:
        """``search`` of one (1, dim) query when all k are wanted (the plain search's walk):
        (distances (k,), labels (k,)), best first, or None when fewer than k rows (``k`` over the
        count, or too few returnable reached) were found. Its outputs are fresh per call and
        written only by the walk, not filled first (no padding to fill: a short answer is
        None); any number of threads may call it at once."""
        if not 0 < k <= self.count:
            return None
        dists = np.empty((1, k), np.float32)
        labels = np.empty((1, k), np.int64)
        counts = np.empty(1, np.int64)
        self._walk(query, k, ef, returnable, dists, labels, counts)
        return (dists[0], labels[0]) if counts[0] == k else None

    def _walk(
        self,
        queries: FloatMatrix,
        k: int,
        ef: int,
        returnable: np.ndarray,
        dists: FloatMatrix,
        labels: np.ndarray,
        counts: np.ndarray,
    ) -> None:
        """``walk_graph`` of ``queries`` into the outputs, with visited marks from the pool
        (0 < k <= count)."""
        if queries.dtype != np.float32 or not queries.flags.c_contiguous:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
        marks = self._take()
        try:
            status = walk_graph(
                self._level0,
                self._floats,
                self._words,
                self._upper,
                self.shape,
                self.metric == METRIC_IP,
                queries,
                k,
                max(ef, k),
                returnable,
                marks.marks,
                marks.tag,
                dists,
                labels,
                counts,
            )
        finally:
            self._give(marks)
        if status == BAD_LINK:
            raise self._bad_link()

    def _bad_link(self) -> GraphDamaged:
        return GraphDamaged(
            f"HNSW graph {self.path} is damaged: a link points outside its {self.count} elements; "
            "run `lamina check --repair`"
        )

    def _take(self) -> _Marks:
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        return _Marks(self.count)

    def _give(self, marks: _Marks) -> None:
        with self._pool_lock:
            self._pool.append(marks)


def search_views(
    views: Sequence[GraphView],
    returnables: Sequence[np.ndarray],
    queries: FloatMatrix,
    k: int,
    ef: int,
    parallel: bool | None = False,
) -> tuple[FloatMatrix, np.ndarray, np.ndarray]:
    """``GraphView.search`` of every view in one call (view s returns only rows where
    ``returnables[s]``): distances (S, q, k) float32, labels (S, q, k) int64 and counts
    (S, q); view s answers at most min(k, its count) per query, as ``search`` does. Python is
    entered once, not once per view, and the GIL is released throughout.

    ``parallel``: True: the first views (about half the elements) are walked on a helper
    thread while this thread walks the rest; None: so only when it can pay (``_worth_splitting``:
    large views, an idle core, no other call running in this process: under concurrent
    searches every core is busy already and the hand-off only adds its cost); False: one
    thread."""
    global _RUNNING
    nv, nq = len(views), queries.shape[0]
    dists = np.full((nv, nq, k), np.inf, np.float32)
    labels = np.full((nv, nq, k), -1, np.int64)
    counts = np.zeros((nv, nq), np.int64)
    if nv == 0 or k <= 0:
        return dists, labels, counts
    metrics = {v.metric for v in views}
    if len(metrics) != 1:
        raise ValueError(f"views of one search must share a metric, got {sorted(metrics)}")
    marks = [v._take() for v in views]
    with _HELPER_LOCK:
        _RUNNING += 1
        split = (
            _halves(views)
            if parallel or (parallel is None and _RUNNING == 1 and _worth_splitting(views))
            else 0
        )
    try:
        # tuples padded to 4 or a power of two: a compiled variant per size class, not per count
        pad = max(4, 1 << (nv - 1).bit_length()) - nv
        args = (
            _padded([v._level0 for v in views], pad),
            _padded([v._floats for v in views], pad),
            _padded([v._words for v in views], pad),
            _padded([v._upper for v in views], pad),
            np.stack([v.shape for v in views]),
            metrics.pop() == METRIC_IP,
            np.ascontiguousarray(queries, dtype=np.float32),
            k,
            ef,
            _padded(list(returnables), pad),
            _padded([m.marks for m in marks], pad),
            _padded([m.tag for m in marks], pad),
        )
        if 0 < split < nv:
            helper = _helper().submit(walk_graphs, *args, 0, split, dists, labels, counts)
            bad = walk_graphs(*args, split, nv, dists, labels, counts)
            first = helper.result()
            bad = first if first >= 0 else bad
        else:
            bad = walk_graphs(*args, 0, nv, dists, labels, counts)
    finally:
        with _HELPER_LOCK:
            _RUNNING -= 1
        for view, mark in zip(views, marks, strict=True):
            view._give(mark)
    if bad >= 0:
        raise views[bad]._bad_link()
    return dists, labels, counts


def _padded(items: list[Any], pad: int) -> tuple[Any, ...]:
    return tuple(items + items[-1:] * pad)


#: elements (summed over the views of one call) from which ``search_views(parallel=None)``
#: splits the walk over two threads when a core is idle
PARALLEL_MIN = 50_000
_HELPER: list[ThreadPoolExecutor] = []
_HELPER_LOCK = threading.Lock()
#: ``search_views`` calls running in this process
_RUNNING = 0


def _halves(views: Sequence[GraphView]) -> int:
    """How many of ``views`` (from the first) a helper thread walks: about half the elements,
    at least one view each side (0: one view, no split)."""
    sizes = np.cumsum([v.count for v in views])
    if len(views) < 2:
        return 0
    return int(min(np.searchsorted(sizes, sizes[-1] / 2) + 1, len(views) - 1))


def _worth_splitting(views: Sequence[GraphView]) -> bool:
    """Whether the views hold ``PARALLEL_MIN`` elements or more and a core is idle."""
    return sum(v.count for v in views) >= PARALLEL_MIN and _idle_core()


_LOAD = [0.0, 0.0]  # when the load average was read (monotonic s), and whether a core was idle


def _idle_core() -> bool:
    """Whether the machine has a core to spare: two cores or more, and a 1-minute load average
    below the cores less one (read at most once a second). On a loaded machine a second
    thread only queues behind other work: measured slower than one thread."""
    now = time.monotonic()
    if now - _LOAD[0] > 1.0:
        cores = os.cpu_count() or 1
        _LOAD[1] = float(cores >= 2 and os.getloadavg()[0] < cores - 1)
        _LOAD[0] = now
    return bool(_LOAD[1])


def _helper() -> ThreadPoolExecutor:
    """The one helper thread ``search_views`` hands half the views to (started on first use)."""
    with _HELPER_LOCK:
        if not _HELPER:
            _HELPER.append(ThreadPoolExecutor(1, thread_name_prefix="lamina-graphs"))
        return _HELPER[0]
