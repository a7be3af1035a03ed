"""Top-k lists (kernel scores, global rows, counts): the top-k of the mutable segment
(exact, or by its binary codes and an exact rerank once it is large) and the merge of
per-segment lists into one."""

from __future__ import annotations

import numpy as np

from lamina.index.flat import BLAS_MIN_QUERIES, exact_topk
from lamina.index.kernels import hamming_topn, rerank
from lamina.index.tiers import TopK, binary_encode
from lamina.types import FloatMatrix

from .state import ReadSnapshot, coded_tail_rows

#: candidates a coded scan of the mutable rows reranks exactly: at least this many, and
#: ``CODED_OVERSAMPLE`` per result asked (recall@10 against the exact scan, 75,000 MiniLM rows:
#: 0.973 with 200 candidates, 0.983 with 400, at 1.4 ms a query against 31 ms exactly)
CODED_CANDIDATES = 400
CODED_OVERSAMPLE = 40


def coded(rows: int, k: int, thresholds: FloatMatrix | None) -> bool:
    """Whether a scan of ``rows`` mutable rows for ``k`` results goes by their binary codes:
    they have codes, and there are many more rows than candidates to rerank."""
    return (
        thresholds is not None
        and rows >= coded_tail_rows(thresholds.shape[1])
        and rows > 4 * max(CODED_CANDIDATES, CODED_OVERSAMPLE * k)
    )


def tail_topk(
    matrix: FloatMatrix,
    codes: np.ndarray,
    thresholds: FloatMatrix | None,
    allowed: np.ndarray,
    queries: FloatMatrix,
    k: int,
    metric: int,
    exact: bool = False,
) -> TopK:
    """Top-k (local rows) of the mutable rows ``allowed`` passes (one entry per row of the
    tail): exactly, or, for a large coded tail unless ``exact``, the Hamming-nearest
    candidates by the rows' codes reranked exactly on their float vectors; exactly again when
    more rows tie at the Hamming cut-off than there are candidates (look-alike rows whose
    codes are all alike: which of them the codes would pick is arbitrary, and a fresh point
    could be missed by its own vector). Not seen on 1,000 MiniLM queries over 1,600-40,000
    manifold rows; an explain still names the coded scan."""
    n = allowed.shape[0]
    if exact or queries.shape[0] >= BLAS_MIN_QUERIES or not coded(n, k, thresholds):  # a batch: BLAS
        return exact_topk(matrix, allowed, queries, k, metric)
    assert thresholds is not None
    crowded = np.zeros(queries.shape[0], np.bool_)
    candidates = hamming_topn(
        codes[:n],
        allowed,
        binary_encode(queries, thresholds),
        max(CODED_CANDIDATES, CODED_OVERSAMPLE * k),
        crowded,
    )
    if crowded.any():  # codes that cannot tell the rows apart (many alike): exactly, never a miss
        return exact_topk(matrix, allowed, queries, k, metric)
    return rerank(matrix, candidates, allowed, queries, k, metric)


def mutable_topk(
    prepared: FloatMatrix, k: int, snap: ReadSnapshot, mask: np.ndarray, metric: int, exact: bool = False
) -> TopK:
    """Top-k (global rows) of the snapshot's mutable rows that ``mask`` passes (see ``tail_topk``)."""
    k = min(k, mask.size)
    scores, local_rows, counts = tail_topk(
        snap.matrix, snap.codes, snap.thresholds, mask, prepared, k, metric, exact
    )
    return scores, np.where(local_rows >= 0, local_rows + snap.start, -1), counts


def merge_topk(parts: list[TopK], nq: int, k: int) -> TopK:
    """Merge per-segment top-k lists (kernel scores, global rows, counts) into one."""
    if not parts:
        return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64), np.zeros(nq, np.int64)
    if len(parts) == 1:
        return parts[0]
    scores = np.concatenate([p[0] for p in parts], axis=1)
    rows = np.concatenate([p[1] for p in parts], axis=1)
    valid = np.concatenate([np.arange(p[0].shape[1])[None, :] < p[2][:, None] for p in parts], axis=1)
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_rows = np.take_along_axis(rows, order, axis=1)
    counts = np.minimum(valid.sum(axis=1), k).astype(np.int64)
    return top_scores, np.where(np.isfinite(top_scores), top_rows, -1), counts
