"""index/graphview.py: hnswlib's saved graph searched in its memory-mapped file gives what
hnswlib gives on the same file (real hnswlib, real files, no stand-ins)."""

from __future__ import annotations

import mmap
import threading
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from lamina.index import graphfile, graphview
from lamina.index.graphview import GraphDamaged, GraphView, search_views
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


def _mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is (a view of) a memory map."""
    base: object = array
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return isinstance(base, mmap.mmap)


def test_a_private_graph_is_the_process_s_copy_and_walks_like_the_shared_map(
    graph: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """LAMINA_GRAPH_MEMORY: ``shared`` (the default) walks the file's memory map, ``private``
    a copy in the process's own memory; both answer the same; another value is refused by name."""
    metric, path = graph
    monkeypatch.delenv(graphview.GRAPH_MEMORY_ENV, raising=False)
    shared = GraphView(path, DIM, metric)
    monkeypatch.setenv(graphview.GRAPH_MEMORY_ENV, "private")
    private = GraphView(path, DIM, metric)
    assert private.private and not _mapped(private._words) and private.warming is None
    assert not shared.private and _mapped(shared._words)
    live = np.ones(N, np.bool_)
    for a, b in zip(private.search(QUERIES, K, 40, live), shared.search(QUERIES, K, 40, live), strict=True):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setenv(graphview.GRAPH_MEMORY_ENV, "heap")
    with pytest.raises(ValueError, match="LAMINA_GRAPH_MEMORY must be 'private' or 'shared'"):
        GraphView(path, DIM, metric)


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


def test_one_query_nearest_answers_what_search_answers(graph: tuple[int, Path]) -> None:
    """``GraphView.nearest`` (the plain search's walk: outputs not filled first, no counts):
    search's k best, None when fewer than k can be returned; threads at once get the same."""
    metric, path = graph
    view = GraphView(path, DIM, metric)
    live = np.ones(N, np.bool_)
    live[np.random.default_rng(8).choice(N, N // 5, replace=False)] = False
    want = []
    for i in range(QUERIES.shape[0]):
        dists, labels, counts = view.search(QUERIES[i : i + 1], K, 32, live)
        found = view.nearest(QUERIES[i : i + 1], K, 32, live)
        assert counts[0] == K and found is not None
        assert np.array_equal(found[0], dists[0]) and np.array_equal(found[1], labels[0])
        want.append(found[1])
    few = np.zeros(N, np.bool_)
    few[[5, 77, 4_000]] = True
    for q in range(5):
        assert view.nearest(QUERIES[q : q + 1], K, 40, few) is None  # 3 of 10: not a full answer
        three = view.nearest(QUERIES[q : q + 1], 3, 40, few)
        assert three is not None and sorted(three[1].tolist()) == [5, 77, 4_000]
    assert (
        view.nearest(QUERIES[:1], N + 1, 40, live) is None and view.nearest(QUERIES[:1], 0, 40, live) is None
    )
    got: dict[tuple[int, int], np.ndarray] = {}
    start = threading.Barrier(4)

    def work(t: int) -> None:
        start.wait()
        for i in range(QUERIES.shape[0]):
            found = view.nearest(QUERIES[i : i + 1], K, 32, live)
            assert found is not None
            got[(i, t)] = found[1]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 4 * QUERIES.shape[0]
    assert all(np.array_equal(labels, want[i]) for (i, _), labels in got.items())


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


#: several graphs over parts of BASE (local labels), the last smaller than K: one call over all
PARTS = ((0, 3_000), (3_000, 5_000), (5_000, 5_994), (5_994, N))


@pytest.fixture(scope="module", params=[METRIC_IP, METRIC_L2], ids=["ip", "l2"])
def parts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[GraphView]:
    metric = request.param
    folder = tmp_path_factory.mktemp(f"parts-{SPACES[metric]}")
    views = []
    for i, (lo, hi) in enumerate(PARTS):
        index = hnswlib.Index(space=SPACES[metric], dim=DIM)
        index.init_index(max_elements=hi - lo, M=16, ef_construction=100, random_seed=100 + i)
        index.add_items(BASE[lo:hi], np.arange(hi - lo), num_threads=2)
        index.save_index(str(folder / f"raw{i}"))
        graphfile.relabel(folder / f"raw{i}", folder / f"graph{i}.hnsw")
        views.append(GraphView(folder / f"graph{i}.hnsw", DIM, metric))
    return views


def _part_masks(metric: int) -> list[np.ndarray]:
    """Live masks of PARTS: a quarter of the rows and every query's nearest row deleted."""
    live = np.random.default_rng(5).random(N) > 0.25
    live[_exact(metric)[:, 0]] = False
    return [live[lo:hi].copy() for lo, hi in PARTS]


def test_several_views_walked_in_one_call_answer_what_each_view_answers(parts: list[GraphView]) -> None:
    metric = parts[0].metric
    masks = _part_masks(metric)
    for k, ef in ((10, 16), (10, 64), (40, 16), (1, 8)):
        dists, labels, counts = search_views(parts, masks, QUERIES, k, ef)
        assert dists.shape == labels.shape == (len(parts), QUERIES.shape[0], k)
        for s, view in enumerate(parts):
            want_d, want_l, want_c = view.search(QUERIES, k, ef, masks[s])
            kk = min(k, view.count)
            assert np.array_equal(labels[s, :, :kk], want_l) and np.array_equal(dists[s, :, :kk], want_d)
            assert np.array_equal(counts[s], want_c) and (labels[s, :, kk:] == -1).all()
            assert all(masks[s][labels[s, q, : counts[s, q]]].all() for q in range(QUERIES.shape[0]))
    # the parts' top-k merged: recall against exact ground truth over every live row
    dists, labels, counts = search_views(parts, masks, QUERIES, K, 64)
    starts = np.array([lo for lo, _ in PARTS])
    rows = (
        np.where(labels >= 0, labels + starts[:, None, None], -1)
        .transpose(1, 0, 2)
        .reshape(QUERIES.shape[0], -1)
    )
    merged = np.take_along_axis(rows, np.argsort(dists.transpose(1, 0, 2).reshape(rows.shape), axis=1), 1)
    assert _recall(merged[:, :K], _exact(metric, np.concatenate(masks))) >= 0.95
    # split over two threads (as when the views are large and a core is idle): the same answers
    assert 0 < graphview._halves(parts) < len(parts)
    split = search_views(parts, masks, QUERIES, K, 64, parallel=True)
    assert all(np.array_equal(a, b) for a, b in zip(split, (dists, labels, counts), strict=True))


def test_threads_walking_several_views_at_once_get_the_sequential_answers(parts: list[GraphView]) -> None:
    masks = _part_masks(parts[0].metric)
    want = [search_views(parts, masks, QUERIES[i : i + 1], K, 32)[1] for i in range(QUERIES.shape[0])]
    got: dict[tuple[int, int], np.ndarray] = {}
    start = threading.Barrier(4)

    def work(t: int) -> None:
        start.wait()
        for rep in range(2):
            for i in range(t % 2, QUERIES.shape[0], 2):
                got[(i, t * 2 + rep)] = search_views(parts, masks, QUERIES[i : i + 1], K, 32, parallel=True)[
                    1
                ]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 2 * 2 * QUERIES.shape[0]
    assert all(np.array_equal(labels, want[i]) for (i, _), labels in got.items())
    assert graphview._RUNNING == 0


def test_a_damaged_graph_among_several_is_named(parts: list[GraphView], tmp_path: Path) -> None:
    good = parts[0]
    raw = good.path.read_bytes()
    cols = graphfile.GraphLayout(good.path).record // 4
    words = np.frombuffer(raw, np.uint32, offset=graphfile.HEADER_BYTES).copy()
    n = good.count
    words[: n * cols : cols] = (words[: n * cols : cols] & ~np.uint32(0xFFFF)) | 3
    words[1 : n * cols : cols] = n + 7  # every node's first level-0 link points past the last element
    (tmp_path / "bad.hnsw").write_bytes(raw[: graphfile.HEADER_BYTES] + words.tobytes())
    bad = GraphView(tmp_path / "bad.hnsw", DIM, good.metric)
    views = [parts[1], bad, parts[2]]
    pools = [len(v._pool) for v in views]
    with pytest.raises(GraphDamaged, match=r"bad\.hnsw is damaged: a link points outside"):
        search_views(views, [np.ones(v.count, np.bool_) for v in views], QUERIES[:1], K, 16)
    assert [len(v._pool) for v in views] == [max(1, p) for p in pools]  # every view's marks came back


def test_a_collections_sealed_graphs_are_walked_in_one_call_with_the_per_segment_answers(
    tmp_path: Path,
) -> None:
    """``nearest_all`` (the plain search's step over sealed segments) answers exactly what each
    segment's own ``nearest`` answers, with deletes and moved points, at several k and ef."""
    from lamina.engine.database import Database
    from lamina.engine.segments import nearest_all
    from lamina.index.tiers import Knobs
    from lamina.types import CollectionConfig, IndexConfig, SearchParams

    config = CollectionConfig(
        dim=DIM, metric="cosine", index=IndexConfig(type="hnsw"), segment_rows=1_500, max_segment_rows=1_500
    )
    truth = _exact(METRIC_IP)
    with Database(tmp_path) as database:
        col = database.create_collection("c", config)
        for lo in range(0, N, 1_500):  # sealed one by one: no merges into one graph
            col.upsert(list(range(lo, lo + 1_500)), BASE[lo : lo + 1_500])
            col.optimize()
        gone = set(range(0, N, 5)) | set(truth[:50, 0].tolist())
        col.delete(ids=sorted(gone))
        moved = truth[50:60, 0].tolist()  # upserted: their sealed rows die, the new ones are in the tail
        col.upsert(moved, BASE[moved] * -1)
        segments = col._segments
        assert len(segments) >= 4 and all(s.tier.view is not None for s in segments)  # type: ignore[attr-defined]
        for k, ef in ((10, 16), (10, 64), (1, 8), (2_000, 16)):  # k past a segment's live rows: exact
            knobs = Knobs(ef=ef, oversample=1.0)
            for q in QUERIES[:60]:
                query = q.reshape(1, -1)
                got = nearest_all(segments, query, k, knobs)
                want = [s.nearest(query, k, knobs) for s in segments]
                assert len(got) == len(want)
                for (gs, gr, gi), (ws, wr, wi) in zip(got, want, strict=True):
                    assert np.array_equal(gs, ws) and np.array_equal(gr, wr) and gi == wi
                    assert not gone & set(gi) and not set(moved) & set(gi)
        hits = [[h.id for h in col.search(q, k=K, params=SearchParams(ef=64))] for q in QUERIES]
    live = np.ones(N, np.bool_)
    live[sorted(gone | set(moved))] = False
    assert _recall(np.array(hits), _exact(METRIC_IP, live)) >= 0.95
