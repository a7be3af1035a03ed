"""numba kernels: pure functions on arrays that release the GIL.

Every kernel here has a numpy reference implementation in tests/test_kernels.py.
Scores are "higher is better" inside the kernels: cosine and dot use the inner
product (cosine rows and queries are unit-normalised beforehand), l2 uses the
negated squared distance; ``finish_scores`` turns them into user-facing scores.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from lamina.types import FloatMatrix

METRIC_IP = 0
METRIC_L2 = 1


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _sift_down(scores: np.ndarray, rows: np.ndarray, size: int) -> None:
    # min-heap on scores: the worst kept candidate sits at index 0
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and scores[right] < scores[left]:
            child = right
        if scores[child] >= scores[pos]:
            return
        scores[pos], scores[child] = scores[child], scores[pos]
        rows[pos], rows[child] = rows[child], rows[pos]
        pos = child


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _push(
    scores: np.ndarray, rows: np.ndarray, size: int, k: int, score: np.floating[Any] | float, row: int
) -> int:
    """Offer (score, row) to a bounded min-heap of capacity k; return the new size."""
    if size < k:
        pos = size
        scores[pos] = score
        rows[pos] = row
        while pos > 0:  # sift up
            parent = (pos - 1) // 2
            if scores[parent] <= scores[pos]:
                break
            scores[pos], scores[parent] = scores[parent], scores[pos]
            rows[pos], rows[parent] = rows[parent], rows[pos]
            pos = parent
        return size + 1
    if score > scores[0]:
        scores[0] = score
        rows[0] = row
        _sift_down(scores, rows, size)
    return size


@njit(nogil=True, fastmath=True, cache=True)
def _sort_heap(scores: np.ndarray, rows: np.ndarray, size: int) -> None:
    """Heap-sort in place so that entries come best (highest score) first."""
    end = size
    while end > 1:
        end -= 1
        scores[0], scores[end] = scores[end], scores[0]
        rows[0], rows[end] = rows[end], rows[0]
        _sift_down(scores, rows, end)


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _score(row: np.ndarray, query: np.ndarray, metric: int) -> np.float32:
    """Kernel score of one row for one query: inner product, or negated squared L2."""
    acc = np.float32(0.0)
    if metric == METRIC_IP:
        for j in range(query.shape[0]):
            acc += row[j] * query[j]
    else:
        for j in range(query.shape[0]):
            diff = row[j] - query[j]
            acc -= diff * diff
    return acc


@njit(nogil=True, fastmath=True, cache=True)
def topk_scan(
    matrix: np.ndarray, allowed: np.ndarray, queries: np.ndarray, k: int, metric: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k of every query over the rows of ``matrix`` where ``allowed`` is True.

    For each query, every row's score first (a loop LLVM vectorizes), then one pass that
    offers the allowed rows beating the heap's worst. Scoring inside the heap loop ran 2.4x
    slower (2,000 x 384, one query: 269 against 113 us). Returns (scores (q, k) float32,
    rows (q, k) int64, counts (q,) int64); entries past ``counts[i]`` are unused (fewer
    than k rows allowed).
    """
    nq = queries.shape[0]
    n = allowed.shape[0]
    dim = matrix.shape[1]
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    out_rows = np.full((nq, k), -1, dtype=np.int64)
    sizes = np.zeros(nq, dtype=np.int64)
    scores = np.empty(n, dtype=np.float32)
    for q in range(nq):
        query = queries[q]
        if metric == METRIC_IP:
            for i in range(n):
                row = matrix[i]
                acc = np.float32(0.0)
                for j in range(dim):
                    acc += row[j] * query[j]
                scores[i] = acc
        else:
            for i in range(n):
                row = matrix[i]
                acc = np.float32(0.0)
                for j in range(dim):
                    diff = row[j] - query[j]
                    acc -= diff * diff
                scores[i] = acc
        best, rows = out_scores[q], out_rows[q]
        size = 0
        for i in range(n):
            if allowed[i] and (size < k or scores[i] > best[0]):
                size = _push(best, rows, size, k, scores[i], i)
        sizes[q] = size
        _sort_heap(best, rows, size)
    return out_scores, out_rows, sizes


@njit(nogil=False, fastmath=False, cache=True)
def unit_query(vector: np.ndarray, cosine: bool) -> tuple[Any, np.ndarray]:  # pragma: no cover - compiled
    """One (dim,) float32 query as the kernels take it, in one call: its squared norm (float32
    sum, in order: NaN or inf stay NaN or inf, no fastmath) and a (1, dim) copy, unit length
    when ``cosine`` and the norm is positive. The one-query form of ``normalize_rows`` for
    searches and single writes (engine/state.py ``_prepare``, engine/plain.py ``_plain``)."""
    dim = vector.shape[0]
    acc = np.float32(0.0)
    for j in range(dim):
        acc += vector[j] * vector[j]
    out = np.empty((1, dim), np.float32)
    scale = np.float32(1.0 / math.sqrt(acc)) if cosine and 0 < acc < np.inf else np.float32(1.0)
    for j in range(dim):
        out[0, j] = vector[j] * scale
    return acc, out


@njit(nogil=True, fastmath=True, cache=True)
def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Unit-normalise each row (rows of norm 0 stay 0); returns a new array."""
    out = np.empty_like(matrix)
    for i in range(matrix.shape[0]):
        acc = np.float32(0.0)
        for j in range(matrix.shape[1]):
            acc += matrix[i, j] * matrix[i, j]
        inv = np.float32(1.0) / np.sqrt(acc) if acc > 0 else np.float32(0.0)
        for j in range(matrix.shape[1]):
            out[i, j] = matrix[i, j] * inv
    return out


def finish_scores(scores: FloatMatrix, metric: int) -> FloatMatrix:
    """Turn kernel scores into user scores: l2 becomes the euclidean distance."""
    if metric == METRIC_L2:
        return np.sqrt(np.maximum(-scores, 0.0)).astype(np.float32)
    return scores


@njit(nogil=True, fastmath=True, cache=True)
def merge_block(
    block_scores: np.ndarray,
    allowed: np.ndarray,
    row_offset: int,
    heap_scores: np.ndarray,
    heap_rows: np.ndarray,
    sizes: np.ndarray,
) -> None:
    """Offer a (q, b) block of scores for rows ``row_offset ..`` to each query's heap."""
    k = heap_scores.shape[1]
    for q in range(block_scores.shape[0]):
        size = sizes[q]
        hs = heap_scores[q]
        hr = heap_rows[q]
        row_scores = block_scores[q]
        for j in range(row_scores.shape[0]):
            score = row_scores[j]
            if allowed[j] and (size < k or score > hs[0]):  # most candidates stop at this test
                size = _push(hs, hr, size, k, score, row_offset + j)
        sizes[q] = size


@njit(nogil=True, cache=True)
def sort_heaps(heap_scores: np.ndarray, heap_rows: np.ndarray, sizes: np.ndarray) -> None:
    """Sort every query's heap best first, in place."""
    for q in range(heap_scores.shape[0]):
        _sort_heap(heap_scores[q], heap_rows[q], sizes[q])


@njit(nogil=True, fastmath=True, cache=True)
def rerank(
    vectors: np.ndarray, candidates: np.ndarray, live: np.ndarray, queries: np.ndarray, k: int, metric: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k of each query among its candidate rows of ``vectors``.

    ``candidates`` is (q, c) of row numbers, unique per query, -1 where unused; rows that are not
    ``live`` are skipped. Only the candidate rows are read (a gather from a memory
    map touches just their pages), and a bounded heap selects the top k without
    sorting all candidates. As in ``topk_scan``, every candidate is scored first and the
    heap offered them after: scoring inside the heap loop took 1.1-1.7x longer (400
    candidates of 2,000-20,000 x 384 rows). Returns (scores, rows, counts) as ``topk_scan`` does.
    """
    nq = queries.shape[0]
    c = candidates.shape[1]
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    out_rows = np.full((nq, k), -1, dtype=np.int64)
    sizes = np.zeros(nq, dtype=np.int64)
    scores = np.empty(c, dtype=np.float32)
    for q in range(nq):
        query = queries[q]
        for j in range(c):
            i = candidates[q, j]
            scores[j] = _score(vectors[i], query, metric) if i >= 0 else np.float32(0.0)
        size = 0
        hs = out_scores[q]
        hr = out_rows[q]
        for j in range(c):
            i = candidates[q, j]
            if i >= 0 and live[i] and (size < k or scores[j] > hs[0]):
                size = _push(hs, hr, size, k, scores[j], i)
        _sort_heap(hs, hr, size)
        sizes[q] = size
    return out_scores, out_rows, sizes


@njit(nogil=True, cache=True, inline="always")
def _popcount64(x: np.uint64) -> np.uint64:
    # SWAR popcount; LLVM turns this pattern into one POPCNT instruction
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(nogil=True, cache=True)
def hamming_topn(
    codes: np.ndarray, live: np.ndarray, query_codes: np.ndarray, n: int, crowded: np.ndarray
) -> np.ndarray:
    """The ``n`` live rows of ``codes`` nearest to each query code in Hamming distance.

    ``codes`` is (rows, words) uint64. Per query, three passes: every row's distance
    into a buffer (a branch-free loop), a histogram of the live rows' distances (integers
    up to 64 x words) that gives the cut-off distance, then the rows below it and as many
    at it as fit. A bounded heap in one pass measured 1.2-2.4x slower on the 5,000-80,000
    rows of a coded tail (its pushes cost more than the scan) and no faster on 1M rows.
    Returns (q, n) row numbers, -1 where fewer than ``n`` rows are live; rows come in
    no particular order. ``crowded[q]`` (bool, one per query) is set when more rows tie at
    the cut-off distance than ``n`` (the codes cannot rank them: which of them are taken
    is arbitrary; a caller that must not miss a close row scans exactly then).
    """
    rows = codes.shape[0]
    words = codes.shape[1]
    out = np.full((query_codes.shape[0], n), -1, dtype=np.int64)
    dist = np.empty(rows, dtype=np.uint32)
    hist = np.empty(64 * words + 1, dtype=np.int64)
    for q in range(query_codes.shape[0]):
        qc = query_codes[q]
        for i in range(rows):
            bits = np.uint64(0)
            for w in range(words):
                bits += _popcount64(codes[i, w] ^ qc[w])
            dist[i] = np.uint32(bits)
        hist[:] = 0
        for i in range(rows):
            if live[i]:
                hist[dist[i]] += 1
        below = 0  # live rows closer than the cut-off
        cut = 0
        while cut < hist.size and below + hist[cut] < n:
            below += hist[cut]
            cut += 1
        at_cut = n - below  # rows at the cut-off distance that still fit
        crowded[q] = cut < hist.size and hist[cut] > n
        hr = out[q]
        m = 0
        for i in range(rows):
            d = dist[i]
            if d <= cut and live[i]:
                if d < cut:
                    hr[m] = i
                    m += 1
                elif at_cut > 0:
                    hr[m] = i
                    m += 1
                    at_cut -= 1
    return out
