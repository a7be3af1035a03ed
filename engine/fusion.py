"""Fusion of ranked lists (a dense and a BM25 ranking) into one, for the local and the
sharded collection alike: reciprocal-rank fusion, ``sum(w / (60 + rank))`` (Cormack et
al. 2009), or a weighted sum of min-max normalised scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RRF_K = 60


def fusion_depth(k: int, max_k: int) -> int:
    """How deep each ranking is read before two are fused into a top ``k``."""
    return min(max_k, max(2 * k, 50))


def fuse(
    rankings: Sequence[tuple[np.ndarray, np.ndarray]], method: str, weights: Sequence[float], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked lists of (rows, scores), each best first, into the top ``k`` (rows,
    fused scores). ``rrf`` adds ``w / (60 + rank)``; ``weighted`` adds ``w`` times the
    score min-max normalised within its list (a list of one scores 1)."""
    total: dict[int, float] = {}
    for (rows, scores), weight in zip(rankings, weights, strict=True):
        if method == "rrf":
            gains = [weight / (RRF_K + rank) for rank in range(1, rows.size + 1)]
        else:
            lo, hi = (float(scores.min()), float(scores.max())) if scores.size else (0.0, 0.0)
            gains = [weight * ((float(s) - lo) / (hi - lo) if hi > lo else 1.0) for s in scores]
        for row, gain in zip(rows.tolist(), gains, strict=True):
            total[row] = total.get(row, 0.0) + gain
    best = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:k]
    return (
        np.array([r for r, _ in best], dtype=np.int64),
        np.array([s for _, s in best], dtype=np.float32),
    )
