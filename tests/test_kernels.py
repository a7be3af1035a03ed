"""numba kernels against their numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.index.flat import exact_topk
from lamina.index.kernels import METRIC_IP, METRIC_L2, finish_scores, normalize_rows, topk_scan, unit_query


def reference_topk(
    matrix: np.ndarray, allowed: np.ndarray, queries: np.ndarray, k: int, metric: int
) -> tuple[np.ndarray, np.ndarray]:
    if metric == METRIC_IP:
        scores = queries.astype(np.float64) @ matrix.T.astype(np.float64)
    else:
        scores = -(((queries[:, None, :].astype(np.float64) - matrix[None].astype(np.float64)) ** 2).sum(-1))
    scores[:, ~allowed] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("metric", [METRIC_IP, METRIC_L2])
@pytest.mark.parametrize(("n", "dim", "k"), [(1, 3, 1), (257, 17, 10), (2000, 128, 50), (300, 5, 300)])
def test_topk_scan_matches_numpy(metric: int, n: int, dim: int, k: int) -> None:
    rng = np.random.default_rng(n + dim)
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((4, dim)).astype(np.float32)
    allowed = rng.random(n) < 0.7
    allowed[0] = True
    scores, rows, counts = topk_scan(matrix, allowed, queries, k, metric)
    ref_scores, ref_rows = reference_topk(matrix, allowed, queries, k, metric)
    expect = min(k, int(allowed.sum()))
    assert counts.tolist() == [expect] * 4
    for q in range(4):
        assert rows[q, :expect].tolist() == ref_rows[q, :expect].tolist()
        np.testing.assert_allclose(scores[q, :expect], ref_scores[q, :expect], rtol=1e-4, atol=1e-3)
        assert (rows[q, expect:] == -1).all()
        assert all(allowed[r] for r in rows[q, :expect])


def test_topk_scan_with_nothing_allowed() -> None:
    matrix = np.ones((10, 4), dtype=np.float32)
    _, rows, counts = topk_scan(
        matrix, np.zeros(10, dtype=np.bool_), np.ones((2, 4), dtype=np.float32), 3, METRIC_IP
    )
    assert counts.tolist() == [0, 0] and (rows == -1).all()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    dim=st.integers(1, 12),
    k=st.integers(1, 70),
    seed=st.integers(0, 2**31),
    metric=st.sampled_from([METRIC_IP, METRIC_L2]),
)
def test_topk_scan_property(n: int, dim: int, k: int, seed: int, metric: int) -> None:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((2, dim)).astype(np.float32)
    allowed = rng.random(n) < 0.5
    scores, rows, counts = topk_scan(matrix, allowed, queries, k, metric)
    ref_scores, _ = reference_topk(matrix, allowed, queries, k, metric)
    expect = min(k, int(allowed.sum()))
    for q in range(2):
        assert counts[q] == expect
        # ties may order differently; the scores must agree and be sorted best first
        np.testing.assert_allclose(scores[q, :expect], ref_scores[q, :expect], rtol=1e-4, atol=1e-3)
        assert (np.diff(scores[q, :expect]) <= 1e-6).all()
        assert len(set(rows[q, :expect].tolist())) == expect


def test_normalize_rows_matches_numpy() -> None:
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((50, 33)).astype(np.float32)
    matrix[3] = 0
    out = normalize_rows(matrix)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    expected = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert (out[3] == 0).all()


def test_unit_query_matches_numpy_and_keeps_bad_values_visible() -> None:
    """One query's norm and unit copy (the plain search's and a single write's): numpy's
    answer; a zero, NaN, inf or overflowing vector keeps a norm the caller refuses."""
    rng = np.random.default_rng(6)
    for dim in (1, 7, 384):
        vector = rng.standard_normal(dim).astype(np.float32)
        norm2, unit = unit_query(vector, True)
        assert unit.shape == (1, dim) and unit.dtype == np.float32
        np.testing.assert_allclose(norm2, np.dot(vector, vector), rtol=1e-5)
        np.testing.assert_allclose(unit[0], vector / np.linalg.norm(vector), rtol=1e-5, atol=1e-7)
        norm2, same = unit_query(vector, False)  # dot and l2: the vector as it is, a copy
        assert np.array_equal(same[0], vector) and not np.shares_memory(same, vector)
    zero = np.zeros(5, np.float32)
    norm2, unit = unit_query(zero, True)
    assert norm2 == 0 and (unit == 0).all()
    for bad in (np.array([1, np.nan], np.float32), np.array([1, np.inf], np.float32)):
        assert not unit_query(bad, True)[0] < np.inf  # NaN or inf, never a finite norm
    assert unit_query(np.full(4, 3e19, np.float32), True)[0] == np.inf  # overflow: refused too


def test_finish_scores_turns_l2_into_distance() -> None:
    scores = np.array([[-4.0, -9.0]], dtype=np.float32)
    assert finish_scores(scores, METRIC_L2).tolist() == [[2.0, 3.0]]
    assert finish_scores(scores, METRIC_IP).tolist() == [[-4.0, -9.0]]


@pytest.mark.parametrize("metric", [METRIC_IP, METRIC_L2])
@pytest.mark.parametrize(("nq", "n"), [(1, 500), (8, 5000), (64, 20000), (300, 3000)])
def test_exact_topk_blas_path_matches_numpy(metric: int, nq: int, n: int) -> None:
    rng = np.random.default_rng(nq * n)
    matrix = rng.standard_normal((n, 24)).astype(np.float32)
    queries = rng.standard_normal((nq, 24)).astype(np.float32)
    allowed = rng.random(n) < 0.9
    allowed[: n // 10] = False  # a whole block may be masked out
    scores, rows, counts = exact_topk(matrix, allowed, queries, 10, metric)
    ref_scores, ref_rows = reference_topk(matrix, allowed, queries, 10, metric)
    assert (counts == 10).all()
    assert rows.tolist() == ref_rows.tolist()
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-3)
