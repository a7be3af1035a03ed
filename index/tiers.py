"""The in-memory index tier of a sealed segment: candidates from compact codes or a
graph, reranked with the full-precision vectors.

A tier is built once from a segment's prepared float32 vectors, saved to files in
the segment's folder and loaded from them at start (never rebuilt). Every tier
answers ``search(vectors, live, queries, k, knobs)`` with kernel scores (higher is
better, see ``kernels.finish_scores``) and segment-local row numbers:

==========  ==============  ===================================================
index       quantization    candidates, then
==========  ==============  ===================================================
flat        none            exact scan of the vectors (no candidates step)
flat        binary          numba popcount scan of 1/2/4-bit codes, numba rerank
flat        pq              faiss IndexPQ asymmetric distances, numba rerank
hnsw        none            hnswlib graph over float32 (scores are exact)
hnsw        binary          faiss IndexBinaryHNSW over the codes, numba rerank
hnsw        pq              faiss IndexHNSWPQ, numba rerank
==========  ==============  ===================================================
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import faiss
import hnswlib
import numpy as np

from lamina.index import graphfile
from lamina.index.flat import exact_topk
from lamina.index.graphview import GraphView, search_views
from lamina.index.kernels import METRIC_IP, hamming_topn, rerank
from lamina.index.warmup import warm
from lamina.types import CollectionConfig, FloatMatrix

#: PQ trains 256 centroids per sub-quantizer; faiss asks for 39 points per centroid
PQ_MIN_TRAIN_PER_CENTROID = 39
#: at most this many points train the PQ codebooks (a sample of the segment)
PQ_MAX_TRAIN = 65_536

TopK = tuple[FloatMatrix, np.ndarray, np.ndarray]
#: asked between chunks of an index build: True ends it (the database is closing)
Stop = Callable[[], bool] | None
#: threads an index build inserts with: a number, or asked before each chunk (fewer while
#: searches are being served, see engine/optimizer/build.py)
Threads = int | Callable[[], int]


def threads_now(threads: Threads) -> int:
    """The threads the next chunk of a build inserts with."""
    return threads() if callable(threads) else threads


#: the file of a float HNSW tier: the hnswlib graph, holding the segment's vectors
GRAPH = "graph.hnsw"
#: rows added to a graph per call: a build notices ``stop`` within one chunk (~1 s)
BUILD_CHUNK = 8_192


class BuildStopped(Exception):
    """An index build ended early because its ``stop`` said so; nothing was written."""


def build_chunks(rows: int, stop: Stop) -> Iterator[tuple[int, int]]:
    """(lo, hi) spans of ``BUILD_CHUNK`` rows for an index build, checking ``stop`` before each."""
    for lo in range(0, rows, BUILD_CHUNK):
        if stop is not None and stop():
            raise BuildStopped(f"stopped after {lo} of {rows} rows")
        yield lo, min(rows, lo + BUILD_CHUNK)


@dataclass(frozen=True)
class Knobs:
    """Search-time settings resolved from the collection config and per-query overrides."""

    ef: int
    oversample: float

    def candidates(self, k: int, rows: int) -> int:
        return max(k, min(rows, math.ceil(k * self.oversample)))


class Tier(Protocol):
    kind: str

    def search(
        self, vectors: FloatMatrix, live: np.ndarray, queries: FloatMatrix, k: int, knobs: Knobs
    ) -> TopK:
        """Top-k (kernel scores, local rows, counts) of each query among live rows."""
        ...

    def kill(self, local_rows: np.ndarray) -> None:
        """Rows were deleted; tiers that filter inside their search are told here."""
        ...

    def save(self, folder: Path) -> None: ...

    def files(self) -> list[str]:
        """Names of the files that hold this tier in a segment folder."""
        ...


class ExactTier:
    """No index: every live vector is scored. Used for ``flat`` without quantization and
    as the fallback while a tier cannot be built."""

    kind = "exact"

    def __init__(self, metric: int) -> None:
        self.metric = metric

    def search(
        self, vectors: FloatMatrix, live: np.ndarray, queries: FloatMatrix, k: int, knobs: Knobs
    ) -> TopK:
        return exact_topk(vectors, live, queries, k, self.metric)

    def kill(self, local_rows: np.ndarray) -> None:
        pass

    def save(self, folder: Path) -> None:
        pass

    def files(self) -> list[str]:
        return []


# ---------------------------------------------------------------- binary codes
def binary_thresholds(vectors: FloatMatrix, bits: int) -> FloatMatrix:
    """(bits, dim) per-dimension thresholds at the quantiles j / (bits + 1).

    One bit per dimension cuts each dimension at its median, so every bit is set for
    half the points and carries the most information (sign bits waste capacity on
    dimensions whose mean is far from zero). With 2 or 4 bits the cuts form a
    thermometer code: the Hamming distance between two codes is then the L1 distance
    between their quantile levels.
    """
    qs = [(j + 1) / (bits + 1) for j in range(bits)]
    return np.quantile(vectors, qs, axis=0).astype(np.float32).reshape(bits, -1)


def binary_encode(vectors: FloatMatrix, thresholds: FloatMatrix) -> np.ndarray:
    """Codes (rows, words) uint64: bit (j * dim + d) is set when x[d] > thresholds[j, d]."""
    if vectors.shape[0] == 1:  # one query: four numpy calls instead of ten (~10 us, not ~35)
        flat = np.packbits(vectors[0] > thresholds)  # (bits, dim) flattened: bit j * dim + d
        code = np.zeros(-(-flat.size // 8) * 8, np.uint8)
        code[: flat.size] = flat
        return code.view(np.uint64).reshape(1, -1)
    out = []
    for lo in range(0, vectors.shape[0], 65_536):
        block = vectors[lo : lo + 65_536]
        bits = (block[:, None, :] > thresholds[None, :, :]).reshape(block.shape[0], -1)
        packed = np.packbits(bits, axis=1)
        pad = (-packed.shape[1]) % 8
        if pad:
            packed = np.pad(packed, ((0, 0), (0, pad)))
        out.append(packed)
    return np.ascontiguousarray(np.concatenate(out)).view(np.uint64)


class BinaryTier:
    """Binary codes (memory-mapped once saved); candidates by exhaustive Hamming scan (``flat``) or by
    faiss IndexBinaryHNSW over the codes (``hnsw``), then numba rerank."""

    kind = "binary"

    def __init__(self, metric: int, thresholds: FloatMatrix, codes: np.ndarray, graph: Any) -> None:
        self.metric = metric
        self.thresholds = thresholds
        self.codes = codes
        self.graph = graph
        self._graph_lock = threading.Lock()  # efSearch is a field of the faiss index

    @classmethod
    def build(
        cls, config: CollectionConfig, vectors: FloatMatrix, metric: int, threads: Threads, stop: Stop = None
    ) -> BinaryTier:
        assert config.quantization is not None
        thresholds = binary_thresholds(vectors, config.quantization.bits)
        codes = binary_encode(vectors, thresholds)
        graph = None
        if config.index.type == "hnsw":
            nbits = config.dim * config.quantization.bits
            graph = faiss.IndexBinaryHNSW(nbits, config.index.m)
            graph.hnsw.efConstruction = config.index.ef_construction
            code_bytes = _code_bytes(codes, nbits)
            for lo, hi in build_chunks(code_bytes.shape[0], stop):
                graph.add(code_bytes[lo:hi])
        return cls(metric, thresholds, codes, graph)

    @classmethod
    def load(cls, folder: Path, config: CollectionConfig, metric: int) -> BinaryTier:
        graph = None
        if (folder / "binary.hnsw").exists():
            graph = faiss.read_index_binary(str(folder / "binary.hnsw"))
        return cls(metric, np.load(folder / "thresholds.npy"), cls.mapped_codes(folder), graph)

    @staticmethod
    def mapped_codes(folder: Path) -> np.ndarray:
        """The saved codes of ``folder``, memory-mapped read-only rather than read: every server
        process searches the same pages (the page cache), paged in on a daemon thread."""
        codes = np.asarray(np.load(folder / "codes.npy", mmap_mode="r"))  # a plain view: cheaper to index
        warm(codes, f"binary codes {folder / 'codes.npy'}")
        return codes

    def save(self, folder: Path) -> None:
        np.save(folder / "thresholds.npy", self.thresholds)
        np.save(folder / "codes.npy", self.codes)
        if self.graph is not None:
            faiss.write_index_binary(self.graph, str(folder / "binary.hnsw"))

    def files(self) -> list[str]:
        return ["thresholds.npy", "codes.npy"] + (["binary.hnsw"] if self.graph is not None else [])

    def kill(self, local_rows: np.ndarray) -> None:
        pass  # dead rows are skipped by the scan and by the rerank

    def search(
        self, vectors: FloatMatrix, live: np.ndarray, queries: FloatMatrix, k: int, knobs: Knobs
    ) -> TopK:
        n = knobs.candidates(k, self.codes.shape[0])
        query_codes = binary_encode(queries, self.thresholds)
        if self.graph is None:
            candidates = hamming_topn(
                self.codes, live, query_codes, n, np.zeros(query_codes.shape[0], np.bool_)
            )
        else:
            with self._graph_lock:
                self.graph.hnsw.efSearch = max(knobs.ef, n)
                _, candidates = self.graph.search(_code_bytes(query_codes, self.graph.d), n)
        return rerank(vectors, candidates, live, queries, k, self.metric)


def _code_bytes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """uint64 word codes as the uint8 rows faiss binary indexes take (nbits / 8 bytes)."""
    return np.ascontiguousarray(codes.view(np.uint8)[:, : nbits // 8])


# ---------------------------------------------------------------- product quantization
class PQTier:
    """faiss product quantization (``m`` bytes per vector), scanned with asymmetric
    distance tables (``flat``) or walked as an HNSW graph over PQ codes (``hnsw``)."""

    kind = "pq"

    def __init__(self, metric: int, index: faiss.Index) -> None:
        self.metric = metric
        self.index = index

    @staticmethod
    def trainable(config: CollectionConfig, rows: int) -> bool:
        return rows >= 256 * PQ_MIN_TRAIN_PER_CENTROID

    @classmethod
    def build(
        cls, config: CollectionConfig, vectors: FloatMatrix, metric: int, threads: Threads, stop: Stop = None
    ) -> PQTier:
        assert config.quantization is not None
        m = config.quantization.m
        fmetric = faiss.METRIC_INNER_PRODUCT if metric == METRIC_IP else faiss.METRIC_L2
        index: Any  # faiss's bundled stubs lag its API (IndexHNSWPQ takes a metric since 1.8)
        if config.index.type == "hnsw":
            index = faiss.IndexHNSWPQ(config.dim, m, config.index.m, 8, fmetric)  # type: ignore[call-arg, arg-type]
            index.hnsw.efConstruction = config.index.ef_construction
        else:
            index = faiss.IndexPQ(config.dim, m, 8, fmetric)
        rng = np.random.default_rng(0)
        sample = vectors
        if vectors.shape[0] > PQ_MAX_TRAIN:
            sample = vectors[np.sort(rng.choice(vectors.shape[0], PQ_MAX_TRAIN, replace=False))]
        index.train(np.ascontiguousarray(sample))
        for lo, hi in build_chunks(vectors.shape[0], stop):
            index.add(np.ascontiguousarray(vectors[lo:hi]))
        return cls(metric, index)

    @classmethod
    def load(cls, folder: Path, config: CollectionConfig, metric: int) -> PQTier:
        return cls(metric, faiss.read_index(str(folder / "pq.faiss")))

    def save(self, folder: Path) -> None:
        faiss.write_index(self.index, str(folder / "pq.faiss"))

    def files(self) -> list[str]:
        return ["pq.faiss"]

    def kill(self, local_rows: np.ndarray) -> None:
        pass  # dead rows are skipped by the rerank

    def search(
        self, vectors: FloatMatrix, live: np.ndarray, queries: FloatMatrix, k: int, knobs: Knobs
    ) -> TopK:
        n = knobs.candidates(k, self.index.ntotal)
        params = None
        if isinstance(self.index, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(efSearch=max(knobs.ef, n))  # type: ignore[attr-defined]
        _, candidates = self.index.search(queries, n, params=params)
        return rerank(vectors, candidates, live, queries, k, self.metric)


# ---------------------------------------------------------------- float HNSW
def hnsw_index(config: CollectionConfig, metric: int, capacity: int | None = None) -> hnswlib.Index:
    """An empty hnswlib graph for the collection's metric and dimension, initialised for
    ``capacity`` elements with its ``m`` and ``ef_construction`` (None: to be loaded)."""
    index = hnswlib.Index(space="ip" if metric == METRIC_IP else "l2", dim=config.dim)
    if capacity is not None:
        index.init_index(
            max_elements=max(1, capacity),
            M=config.index.m,
            ef_construction=config.index.ef_construction,
            random_seed=100,
        )
    return index


def hnsw_mark_deleted(index: hnswlib.Index, labels: Iterable[int]) -> int:
    """Mark ``labels`` deleted in a graph; returns how many were not marked before."""
    marked = 0
    for label in labels:
        with contextlib.suppress(RuntimeError):  # already marked
            index.mark_deleted(label)
            marked += 1
    return marked


class _Beam:
    """The beam width of one hnswlib graph's walks. hnswlib keeps ef on the index, not per
    call, and walks release the GIL: walks of the same width run together; one of another
    width waits until they end, and walks arriving meanwhile wait behind it (no starving),
    so no walk runs with a width another request set."""

    __slots__ = ("draining", "ef", "lock", "turn", "walking")

    def __init__(self) -> None:
        self.lock = threading.Lock()  # entered directly (C), the condition only to wait
        self.turn = threading.Condition(self.lock)
        self.ef = 0  # the graph's ef (set only here)
        self.walking = 0
        self.draining = False  # a walk of another width waits for the current ones to end

    def enter(self, index: hnswlib.Index, ef: int) -> None:
        with self.lock:
            while self.walking and (self.ef != ef or self.draining):
                self.draining = self.draining or self.ef != ef
                self.turn.wait()
            if not self.walking:
                self.draining = False
                if self.ef != ef:
                    index.set_ef(ef)
                    self.ef = ef
            self.walking += 1

    def leave(self) -> None:
        with self.lock:
            self.walking -= 1
            if not self.walking and self.draining:  # only a walk of another width ever waits
                self.turn.notify_all()


_beams: weakref.WeakKeyDictionary[hnswlib.Index, _Beam] = weakref.WeakKeyDictionary()
_beams_lock = threading.Lock()


def beam_of(index: hnswlib.Index) -> _Beam:
    """The one ``_Beam`` of a graph (made at its first walk)."""
    beam = _beams.get(index)
    if beam is None:
        with _beams_lock:
            beam = _beams.setdefault(index, _Beam())
    return beam


def hnsw_walk(
    index: hnswlib.Index,
    queries: FloatMatrix,
    k: int,
    ef: int,
    metric: int,
    accept: Callable[[int], bool] | None = None,
    beam: _Beam | None = None,
) -> tuple[FloatMatrix, np.ndarray] | None:
    """(kernel scores, labels) of the top-k of each query by a walk of beam max(ef, k);
    None when the graph cannot return k (too few live labels reachable). ``beam``: the
    graph's ``beam_of``, when the caller keeps it (spares a lookup per walk)."""
    if beam is None:
        beam = beam_of(index)
    beam.enter(index, max(ef, k))
    try:
        labels, dists = index.knn_query(queries, k=k, num_threads=1, filter=accept)
    except RuntimeError:
        return None
    finally:
        beam.leave()
    scores = np.subtract(1.0, dists, out=dists) if metric == METRIC_IP else np.negative(dists, out=dists)
    return scores, labels.astype(np.int64, copy=False)


class HnswTier:
    """HNSW graph over the float32 vectors: distances are exact, so no rerank.

    A built (or grown) graph is an in-memory hnswlib index until ``save`` writes it; a
    saved one is searched through a ``GraphView`` of its file (index/graphview.py): a
    memory map shared by every process that opens the segment, walked by a numba kernel
    that does hnswlib's search, with the segment's live mask (or a filter's allow-list)
    deciding what is returned. hnswlib stays for building and growing graphs, and for
    graphs saved before they were written in label order (``labelled=False``)."""

    kind = "hnsw"

    def __init__(self, metric: int, index: hnswlib.Index | None, view: GraphView | None = None) -> None:
        self.metric = metric
        self.index = index
        self.view = view
        self._beam = beam_of(index) if index is not None else None

    @classmethod
    def build(
        cls, config: CollectionConfig, vectors: FloatMatrix, metric: int, threads: Threads, stop: Stop = None
    ) -> HnswTier:
        index = hnsw_index(config, metric, vectors.shape[0])
        for lo, hi in build_chunks(vectors.shape[0], stop):
            index.add_items(
                np.ascontiguousarray(vectors[lo:hi]), np.arange(lo, hi), num_threads=threads_now(threads)
            )
        return cls(metric, index)

    @classmethod
    def load(cls, folder: Path, config: CollectionConfig, metric: int, labelled: bool = True) -> HnswTier:
        """The graph ``save`` wrote in ``folder``, as a view of its file; ``labelled=False``: a
        graph saved by hnswlib as it was (internal ids are not rows), loaded into hnswlib."""
        if labelled:
            return cls(metric, None, GraphView(folder / GRAPH, config.dim, metric))
        index = hnsw_index(config, metric)
        index.load_index(str(folder / GRAPH))
        return cls(metric, index)

    @classmethod
    def grow(
        cls,
        folder: Path,
        config: CollectionConfig,
        metric: int,
        dead: np.ndarray,
        vectors: FloatMatrix,
        threads: Threads,
        stop: Stop = None,
    ) -> HnswTier:
        """A copy of the graph saved in ``folder`` (n labels, ``dead`` of them marked deleted)
        with ``vectors`` inserted as labels n, n + 1, ...: a merge grows the larger graph by
        the smaller segment's points instead of building both again. hnswlib releases the
        GIL while it inserts, on ``threads`` threads."""
        index = hnsw_index(config, metric)
        path = str(folder / GRAPH)
        index.load_index(path)
        start = index.get_current_count()
        index.resize_index(start + vectors.shape[0])
        hnsw_mark_deleted(index, dead.tolist())
        for lo, hi in build_chunks(vectors.shape[0], stop):
            index.add_items(
                np.ascontiguousarray(vectors[lo:hi]),
                np.arange(start + lo, start + hi),
                num_threads=threads_now(threads),
            )
        return cls(metric, index)

    def save(self, folder: Path) -> None:
        """Save the graph in label order (see graphfile): its records then hold the
        segment's vectors, row i at label i, and the segment writes no other copy."""
        if self.index is None:
            raise ValueError("a graph opened as a view is saved already")
        raw = folder / "graph.raw"
        try:
            self.index.save_index(str(raw))
            graphfile.relabel(raw, folder / GRAPH)
        finally:
            raw.unlink(missing_ok=True)

    @staticmethod
    def vectors(folder: Path, dim: int) -> FloatMatrix:
        """The segment's vectors inside the graph ``save`` wrote (a strided memory map)."""
        return graphfile.vectors(folder / GRAPH, dim)

    def files(self) -> list[str]:
        return [GRAPH]

    def kill(self, local_rows: np.ndarray) -> None:
        if self.index is not None:  # a view is told by the live mask of each search
            hnsw_mark_deleted(self.index, local_rows.tolist())

    def search(
        self, vectors: FloatMatrix, live: np.ndarray, queries: FloatMatrix, k: int, knobs: Knobs
    ) -> TopK:
        return self._walk(vectors, live, queries, k, knobs, None)

    def nearest(
        self, query: FloatMatrix, k: int, ef: int, live: np.ndarray
    ) -> tuple[FloatMatrix, np.ndarray] | None:
        """``search`` of one (1, dim) query among ``live`` rows as flat arrays (kernel scores,
        labels), or None when the graph cannot return k (the caller answers exactly): the
        plain search's walk, without the counts and padding a batch needs."""
        view = self.view
        if view is not None:
            found = view.nearest(query, k, ef, live)
            return None if found is None else (self._scores(found[0]), found[1])
        assert self.index is not None
        found = hnsw_walk(self.index, query, k, ef, self.metric, None, self._beam)
        return None if found is None else (found[0][0], found[1][0])

    @staticmethod
    def nearest_views(
        tiers: Sequence[HnswTier], query: FloatMatrix, k: int, ef: int, lives: Sequence[np.ndarray]
    ) -> list[tuple[FloatMatrix, np.ndarray] | None]:
        """``nearest`` of each tier (all opened as views), the graphs walked in one GIL-released
        call (``search_views``; split over two threads when large and the process is otherwise
        idle): per tier its min(k, count) best among ``lives[i]``, or None when fewer were reached."""
        views = [tier.view for tier in tiers]
        assert all(view is not None for view in views)
        dists, labels, counts = search_views(cast(list[GraphView], views), lives, query, k, ef, parallel=None)
        out: list[tuple[FloatMatrix, np.ndarray] | None] = []
        for s, tier in enumerate(tiers):
            kk = min(k, cast(GraphView, views[s]).count)
            out.append(None if counts[s, 0] < kk else (tier._scores(dists[s, 0, :kk]), labels[s, 0, :kk]))
        return out

    def search_allowed(
        self, vectors: FloatMatrix, allow: np.ndarray, queries: FloatMatrix, k: int, knobs: Knobs
    ) -> TopK:
        """The graph walk asked about every node it would return: a view takes ``allow`` as its
        returnable mask (a byte per visited node); hnswlib calls a Python callback per node
        (slow; graphs saved before label order)."""
        accept = None if self.view is not None else allow.tolist().__getitem__
        return self._walk(vectors, allow, queries, k, knobs, accept)

    def _scores(self, dists: FloatMatrix) -> FloatMatrix:
        """hnswlib distances as kernel scores (higher is better)."""
        return (
            np.subtract(1.0, dists, out=dists) if self.metric == METRIC_IP else np.negative(dists, out=dists)
        )

    def _walk(
        self,
        vectors: FloatMatrix,
        live: np.ndarray,
        queries: FloatMatrix,
        k: int,
        knobs: Knobs,
        accept: Callable[[int], bool] | None,
    ) -> TopK:
        if self.view is not None:
            dists, labels, counts = self.view.search(queries, k, knobs.ef, live)
            if counts.size and counts.min() < k:  # fewer than k returnable rows reached: answer exactly
                return exact_topk(vectors, live, queries, k, self.metric)
            return self._scores(dists), labels, counts
        assert self.index is not None
        found = hnsw_walk(self.index, queries, k, knobs.ef, self.metric, accept, self._beam)
        if found is None:  # fewer than k live rows reachable: answer exactly
            return exact_topk(vectors, live, queries, k, self.metric)
        return found[0], found[1], np.full(queries.shape[0], k, dtype=np.int64)


def build_tier(
    config: CollectionConfig, vectors: FloatMatrix, metric: int, threads: Threads, stop: Stop = None
) -> tuple[Tier, str]:
    """The tier ``config`` asks for over ``vectors``, or the exact fallback with a note
    saying why it could not be built yet. ``stop`` is asked between chunks of the graph
    build; when it answers True the build ends with ``BuildStopped``."""
    quant = config.quantization
    if quant is None:
        if config.index.type == "hnsw":
            return HnswTier.build(config, vectors, metric, threads, stop), ""
        return ExactTier(metric), ""
    if quant.type == "binary":
        return BinaryTier.build(config, vectors, metric, threads, stop), ""
    if not PQTier.trainable(config, vectors.shape[0]):
        need = 256 * PQ_MIN_TRAIN_PER_CENTROID
        return ExactTier(
            metric
        ), f"pq needs {need} points to train; a segment of {vectors.shape[0]} is searched exactly"
    return PQTier.build(config, vectors, metric, threads, stop), ""


def load_tier(kind: str, folder: Path, config: CollectionConfig, metric: int, labelled: bool = True) -> Tier:
    """The tier saved in ``folder`` by ``build_tier(...)[0].save`` (``labelled``: see ``HnswTier.load``)."""
    if kind == "binary":
        return BinaryTier.load(folder, config, metric)
    if kind == "pq":
        return PQTier.load(folder, config, metric)
    if kind == "hnsw":
        return HnswTier.load(folder, config, metric, labelled)
    return ExactTier(metric)
