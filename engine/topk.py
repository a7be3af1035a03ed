"""Top-k lists (kernel scores, global rows, counts): the exact top-k of the mutable
segment and the merge of per-segment lists into one."""

from __future__ import annotations

import numpy as np

from lamina.index.flat import exact_topk
from lamina.index.tiers import TopK
from lamina.types import FloatMatrix

from .state import ReadSnapshot


def mutable_topk(prepared: FloatMatrix, k: int, snap: ReadSnapshot, mask: np.ndarray, metric: int) -> TopK:
    """Exact top-k (global rows) of the snapshot's mutable rows that ``mask`` passes."""
    scores, local_rows, counts = exact_topk(snap.matrix, mask, prepared, min(k, mask.size), metric)
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
