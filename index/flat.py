"""Exact (flat) top-k over a float32 matrix with an allow-mask.

One query, or a few, goes through the numba scan kernel, which streams the
matrix once. Larger batches compute scores block by block with a BLAS matrix
product (numpy releases the GIL) and merge each block into per-query heaps with a
numba kernel: the product is where faiss IndexFlat gets its batch speed too.
"""

from __future__ import annotations

import numpy as np

from lamina.index.kernels import METRIC_L2, merge_block, sort_heaps, topk_scan
from lamina.types import FloatMatrix

#: batches at least this large use the BLAS path
BLAS_MIN_QUERIES = 8
#: upper bound on the temporary score block, in float32 values
_BLOCK_VALUES = 1 << 22


def exact_topk(
    matrix: FloatMatrix, allowed: np.ndarray, queries: FloatMatrix, k: int, metric: int
) -> tuple[FloatMatrix, np.ndarray, np.ndarray]:
    """Top-k rows of ``matrix[:len(allowed)]`` where ``allowed``, for each query.

    Returns kernel scores (higher is better; see ``kernels.finish_scores``), rows
    and per-query counts, as ``topk_scan`` does.
    """
    nq = queries.shape[0]
    if nq < BLAS_MIN_QUERIES:
        return topk_scan(matrix, allowed, queries, k, metric)
    n = allowed.shape[0]
    heap_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    heap_rows = np.full((nq, k), -1, dtype=np.int64)
    sizes = np.zeros(nq, dtype=np.int64)
    step = max(1024, _BLOCK_VALUES // nq)
    q_norms = np.einsum("ij,ij->i", queries, queries)[:, None] if metric == METRIC_L2 else None
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        mask = allowed[lo:hi]
        if not mask.any():
            continue
        block = matrix[lo:hi]
        scores = queries @ block.T
        if q_norms is not None:  # -(|x|^2 - 2 x.q + |q|^2): negated squared distance
            scores *= 2
            scores -= np.einsum("ij,ij->i", block, block)[None, :]
            scores -= q_norms
        merge_block(scores, mask, lo, heap_scores, heap_rows, sizes)
    sort_heaps(heap_scores, heap_rows, sizes)
    return heap_scores, heap_rows, sizes
