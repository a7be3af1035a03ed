"""index/graphview.py: hnswlib's saved graph searched in its memory-mapped file gives what
hnswlib gives on the same file (real hnswlib, real files, no stand-ins)."""

from __future__ import annotations

import threading
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from lamina.index import graphfile
from lamina.index.graphview import GraphDamaged, GraphView
from lamina.index.kernels import METRIC_IP, METRIC_L2

N, DIM, K = 6_000, 48, 10
SPACES = {METRIC_IP: "ip", METRIC_L2: "l2"}


def _data(n: int, seed: int) -> np.ndarray:
    """Low-rank vectors plus noise (clustered like embeddings), unit length."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, 8)).astype(np.float32) @ rng.standard_normal((8, DIM)).astype(np.float32)
    data += 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


BASE = _data(N, 1)
QUERIES = _data(200, 2)


def _exact(metric: int, live: np.ndarray | None = None) -> np.ndarray:
    scores = QUERIES @ BASE.T
    if metric == METRIC_L2:
        scores = 2 * scores - np.einsum("ij,ij->i", BASE, BASE)[None, :]
    if live is not None:
        scores[:, ~live] = -np.inf
    return np.argsort(-scores, axis=1)[:, :K]


@pytest.fixture(scope="module", params=[METRIC_IP, METRIC_L2], ids=["ip", "l2"])
def graph(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    metric = request.param
    folder = tmp_path_factory.mktemp(SPACES[metric])
    index = hnswlib.Index(space=SPACES[metric], dim=DIM)
    index.init_index(max_elements=N, M=16, ef_construction=100, random_seed=100)
    index.add_items(BASE, np.arange(N), num_threads=2)
    index.save_index(str(folder / "raw"))
    graphfile.relabel(folder / "raw", folder / "graph.hnsw")
    return metric, folder / "graph.hnsw"


def _hnswlib(metric: int, path: Path, ef: int, deleted: np.ndarray | None = None) -> hnswlib.Index:
    index = hnswlib.Index(space=SPACES[metric], dim=DIM)
    index.load_index(str(path))
    index.set_ef(ef)
    for label in [] if deleted is None else deleted.tolist():
        index.mark_deleted(label)
    return index


def _same_ids(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        np.mean([len(set(x.tolist()) & set(y.tolist())) / a.shape[1] for x, y in zip(a, b, strict=True)])
    )


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return _same_ids(found, truth)


@pytest.mark.parametrize("ef", [10, 40])
def test_the_view_walks_like_hnswlib_on_the_same_file(graph: tuple[int, Path], ef: int) -> None:
    metric, path = graph
    view = GraphView(path, DIM, metric)
    assert view.count == N and np.array_equal(view.vectors, BASE)
    want_labels, want_dists = _hnswlib(metric, path, ef).knn_query(QUERIES, k=K)
    dists, labels, counts = view.search(QUERIES, K, ef, np.ones(N, np.bool_))
    assert (counts == K).all()
    assert _same_ids(labels, want_labels) >= 0.99  # float sums in another order may swap ties
    assert np.mean(labels == want_labels) >= 0.97  # and in the same order
    assert np.allclose(dists, want_dists, atol=1e-5)
    assert (np.diff(dists, axis=1) >= 0).all()  # nearest first
    # recall against exact ground truth: the width matters (a narrow beam misses more)
    truth = _exact(metric)
    wide = _recall(view.search(QUERIES, K, 64, np.ones(N, np.bool_))[1], truth)
    assert wide >= 0.95
    assert abs(_recall(labels, truth) - _recall(want_labels, truth)) <= 0.01


def test_rows_that_are_not_returnable_are_walked_through_but_never_returned(graph: tuple[int, Path]) -> None:
    metric, path = graph
    rng = np.random.default_rng(4)
    live = np.ones(N, np.bool_)
    truth = _exact(metric)
    dead = np.union1d(truth[:, :3].ravel(), rng.choice(N, N // 4, replace=False))  # nearest ones included
    live[dead] = False
    view = GraphView(path, DIM, metric)
    _, labels, counts = view.search(QUERIES, K, 40, live)
    assert (counts == K).all() and live[labels].all()
    want = _hnswlib(metric, path, 40, dead).knn_query(QUERIES, k=K)[0]
    assert _same_ids(labels, want) >= 0.99  # hnswlib's deleted marks: the same walk
    assert _recall(labels, _exact(metric, live)) >= 0.9
    # a tiny allow-list: fewer than k returnable rows, all of them found
    few = np.zeros(N, np.bool_)
    few[[5, 77, 4_000]] = True
    _, labels, counts = view.search(QUERIES[:3], K, 40, few)
    assert (counts == 3).all() and set(labels[:, :3].ravel().tolist()) == {5, 77, 4_000}
    assert (labels[:, 3:] == -1).all()


def test_threads_searching_at_once_get_the_sequential_answers(graph: tuple[int, Path]) -> None:
    metric, path = graph
    view = GraphView(path, DIM, metric)
    live = np.ones(N, np.bool_)
    want = [view.search(QUERIES[i : i + 1], K, 32, live)[1][0] for i in range(QUERIES.shape[0])]
    got: dict[tuple[int, int], np.ndarray] = {}
    start = threading.Barrier(4)

    def work(t: int) -> None:
        start.wait()
        for rep in range(3):
            for i in range(t % 2, QUERIES.shape[0], 2):  # two threads per query: overlapping walks
                got[(i, t * 3 + rep)] = view.search(QUERIES[i : i + 1], K, 32, live)[1][0]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 2 * 3 * QUERIES.shape[0]
    assert all(np.array_equal(labels, want[i]) for (i, _), labels in got.items())
    assert len(view._pool) >= 2  # each concurrent walk had marks of its own


def test_visited_marks_are_reused_across_many_queries(graph: tuple[int, Path]) -> None:
    """The marks' tag wraps after 65,535 queries: they are cleared then, not mistaken for the
    visits of the walk that left them (here the same query's, under tag 1)."""
    metric, path = graph
    view = GraphView(path, DIM, metric)
    live = np.ones(N, np.bool_)
    want = view.search(QUERIES[:1], K, 32, live)
    marks = view._pool[0]
    assert marks.tag[0] == 1 and np.count_nonzero(marks.marks == 1) > K
    marks.tag[0] = 65_535  # the next query wraps to tag 1
    got = view.search(QUERIES[:1], K, 32, live)
    assert marks.tag[0] == 1
    assert np.array_equal(got[1], want[1]) and (got[2] == K).all()


def test_a_damaged_graph_file_is_refused_with_a_typed_error(graph: tuple[int, Path], tmp_path: Path) -> None:
    metric, path = graph
    raw = path.read_bytes()
    layout = graphfile.GraphLayout(path)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(GraphDamaged, match="truncated"):
        GraphView(truncated, DIM, metric)
    short_tail = tmp_path / "short-tail"
    short_tail.write_bytes(raw[:-8])  # the upper levels' lists end early
    with pytest.raises(GraphDamaged, match="upper-level"):
        GraphView(short_tail, DIM, metric)
    with pytest.raises(GraphDamaged, match="cannot be read"):
        GraphView(tmp_path / "missing", DIM, metric)
    # a level-0 link pointing past the last element: found when a walk reads it, not a crash
    words = np.frombuffer(raw, np.uint32, offset=graphfile.HEADER_BYTES).copy()
    cols = layout.record // 4
    words[: N * cols : cols][:] = (words[: N * cols : cols] & ~np.uint32(0xFFFF)) | 3
    words[1 : N * cols : cols] = N + 7
    bad_link = tmp_path / "bad-link"
    bad_link.write_bytes(raw[: graphfile.HEADER_BYTES] + words.tobytes())
    view = GraphView(bad_link, DIM, metric)
    with pytest.raises(GraphDamaged, match="link points outside"):
        view.search(QUERIES[:1], K, 16, np.ones(N, np.bool_))
    assert isinstance(GraphDamaged("x"), ValueError)  # Segment.load reports it as a damaged segment


def test_sealed_hnsw_segments_are_searched_through_a_view_of_their_file(tmp_path: Path) -> None:
    """A collection's sealed HNSW segment holds no hnswlib copy once written, nor after reopen;
    deletes (before and after the seal) are never returned, and answers survive the reopen."""
    from lamina.engine.database import Database
    from lamina.types import CollectionConfig, IndexConfig, SearchParams

    config = CollectionConfig(dim=DIM, metric="cosine", index=IndexConfig(type="hnsw"), segment_rows=4_000)
    with Database(tmp_path) as database:
        col = database.create_collection("c", config)
        col.upsert(list(range(N)), BASE)
        col.delete(ids=list(range(0, N, 7)))
        col.optimize()
        segment = col._segments[0]
        assert segment.tier.view is not None and segment.tier.index is None  # type: ignore[attr-defined]
        truth = _exact(METRIC_IP)
        col.delete(ids=truth[:20, 0].tolist())  # each query's nearest, after the seal
        gone = set(range(0, N, 7)) | set(truth[:20, 0].tolist())
        before = [[h.id for h in col.search(q, k=K, params=SearchParams(ef=64))] for q in QUERIES[:40]]
    assert not gone & {i for hits in before for i in hits}
    assert all(len(hits) == K for hits in before)  # the walk skipped them, nothing was dropped after
    live = np.ones(N, np.bool_)
    live[sorted(gone)] = False
    assert _recall(np.array(before), _exact(METRIC_IP, live)[:40]) >= 0.95
    with Database(tmp_path) as database:
        col = database.get_collection("c")
        assert all(s.tier.view is not None for s in col._segments)  # type: ignore[attr-defined]
        after = [[h.id for h in col.search(q, k=K, params=SearchParams(ef=64))] for q in QUERIES[:40]]
    assert after == before
