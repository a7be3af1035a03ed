"""The index tier: sealed segments, every index/quantization combination, rerank,
deletes and compaction, persistence without rebuilds, settings and bad input."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lamina
from lamina.engine.database import Database
from lamina.errors import InvalidArgument
from lamina.index.kernels import METRIC_IP, METRIC_L2, hamming_topn, rerank
from lamina.index.tiers import binary_encode, binary_thresholds
from lamina.types import CollectionConfig, IndexConfig, QuantizationConfig, SearchParams

DIM = 64
N = 6_000
SEGMENT = 2_500


def embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors of low intrinsic dimension (12 latent factors mixed into ``dim``),
    the shape of real text embeddings; isotropic noise would make every quantizer look bad."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 12)).astype(np.float32)
    data = latent @ rng.standard_normal((12, dim)).astype(np.float32)
    data += 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data.astype(np.float32)


DATA = embeddings(N, DIM, 1)
_noise = np.random.default_rng(2).standard_normal((40, DIM)).astype(np.float32)
QUERIES = DATA[np.arange(0, N, N // 40)[:40]] + 0.3 / np.sqrt(DIM) * _noise  # near the data
QUERIES /= np.linalg.norm(QUERIES, axis=1, keepdims=True)


def truth(ids: np.ndarray, data: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    order = np.argsort(-(queries.astype(np.float64) @ data.T.astype(np.float64)), axis=1)[:, :k]
    return [set(ids[row].tolist()) for row in order]


def recall(results: list[list[lamina.Hit]], expected: list[set[int]]) -> float:
    k = len(expected[0])
    return float(
        np.mean([len({h.id for h in hits} & exp) / k for hits, exp in zip(results, expected, strict=True)])
    )


# (index, quantization, recall@10 it must reach with default search settings)
TIERS: list[tuple[dict[str, Any], dict[str, Any] | None, float]] = [
    ({"type": "flat"}, None, 1.0),
    ({"type": "hnsw", "m": 16, "ef_construction": 100}, None, 0.95),
    ({"type": "flat"}, {"type": "binary"}, 0.9),
    ({"type": "flat"}, {"type": "binary", "bits": 2}, 0.9),
    ({"type": "flat"}, {"type": "binary", "bits": 4}, 0.9),
    ({"type": "hnsw", "m": 16}, {"type": "binary", "bits": 2}, 0.85),
    ({"type": "flat"}, {"type": "pq", "m": 8, "oversample": 20}, 0.9),
    ({"type": "hnsw", "m": 16}, {"type": "pq", "m": 8, "oversample": 20}, 0.85),
]


@pytest.fixture(scope="module")
def tier_db(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One embedded database holding one collection per tier, sealed and optimized."""
    path = tmp_path_factory.mktemp("tiers")
    client = lamina.connect(str(path))
    for i, (index, quant, _) in enumerate(TIERS):
        col = client.create_collection(
            f"t{i}", DIM, index=index, quantization=quant, segment_rows=SEGMENT, max_segment_rows=SEGMENT
        )  # several segments: searches merge their answers
        for lo in range(0, N, 1_000):
            col.upsert(list(range(lo, lo + 1_000)), DATA[lo : lo + 1_000])
        col.optimize()
    yield client
    client.close()


@pytest.mark.parametrize(
    "case", range(len(TIERS)), ids=[f"{t[0]['type']}-{(t[1] or {}).get('type')}" for t in TIERS]
)
def test_every_tier_reaches_its_recall_and_exact_search_is_exact(tier_db: lamina.Client, case: int) -> None:
    index, quant, floor = TIERS[case]
    col = tier_db.get_collection(f"t{case}")
    info = col.info()
    assert info.status.segments >= 2 and info.status.mutable_points == 0
    assert info.status.indexed_points == N and info.count == N
    assert info.config.index.type == index["type"]
    assert (info.config.quantization.type if info.config.quantization else None) == (quant or {}).get("type")
    expected = truth(np.arange(N), DATA, QUERIES, 10)
    assert recall(col.search_batch(QUERIES, k=10), expected) >= floor
    exact = col.search_batch(QUERIES, k=10, exact=True)
    assert recall(exact, expected) == 1.0
    # exact scores are the true cosine similarities
    for hits, query in zip(exact, QUERIES, strict=True):
        ids = np.array([h.id for h in hits])
        np.testing.assert_allclose([h.score for h in hits], DATA[ids] @ query, rtol=1e-4, atol=1e-5)


def test_index_memory_is_a_fraction_of_the_float_vectors(tier_db: lamina.Client) -> None:
    sizes = {f"t{i}": tier_db.get_collection(f"t{i}").info().status.index_bytes for i in range(len(TIERS))}
    float_bytes = N * DIM * 4
    assert sizes["t2"] < float_bytes / 8  # 1-bit codes: dim / 8 bytes + mask
    assert sizes["t1"] > float_bytes  # float HNSW holds the vectors plus the graph
    assert sizes["t6"] < float_bytes / 2  # pq codes (m bytes) + codebooks


def test_more_oversampling_and_wider_beam_do_not_lose_recall(tier_db: lamina.Client) -> None:
    expected = truth(np.arange(N), DATA, QUERIES, 10)
    binary = tier_db.get_collection("t2")
    low = recall(binary.search_batch(QUERIES, k=10, oversample=1), expected)
    high = recall(binary.search_batch(QUERIES, k=10, oversample=50), expected)
    assert high >= low and high >= 0.97
    hnsw = tier_db.get_collection("t1")
    narrow = recall(hnsw.search_batch(QUERIES, k=10, ef=10), expected)
    wide = recall(hnsw.search_batch(QUERIES, k=10, ef=400), expected)
    assert wide >= narrow and wide >= 0.99


def test_the_ef_override_widens_the_hnsw_beam(tmp_path: Path) -> None:
    """On data where the beam matters (isotropic 32-d, a sparse m=4 graph, one segment), a
    wider ef must find clearly more of the true top-10: the override reaches the graph walk
    (on the low-dimensional tier data ef=10 already finds nearly everything)."""
    rng = np.random.default_rng(5)
    data = rng.standard_normal((4_000, 32)).astype(np.float32)
    queries = rng.standard_normal((40, 32)).astype(np.float32)
    dists = ((queries[:, None, :] - data[None]) ** 2).sum(axis=2)
    expected = [set(np.argsort(row)[:10].tolist()) for row in dists]
    with lamina.connect(str(tmp_path)) as client:
        col = client.create_collection(
            "h", 32, metric="l2", index={"type": "hnsw", "m": 4, "ef_construction": 16}, segment_rows=4_000
        )
        col.upsert(list(range(4_000)), data)
        col.optimize()
        narrow = recall(col.search_batch(queries, k=10, ef=10), expected)
        wide = recall(col.search_batch(queries, k=10, ef=400), expected)
        single = recall([col.search(q, k=10, ef=400) for q in queries], expected)
    assert wide >= narrow + 0.3 and wide >= 0.8, (narrow, wide)  # measured: 0.28 -> 0.89
    assert single == wide  # one query per call walks the same beam


def test_concurrent_searches_each_walk_with_their_own_ef(tmp_path: Path) -> None:
    """hnswlib keeps ef on the index and walks release the GIL: searches asking ef 10 and
    ef 400 at once, from two threads, must each get the answer its own ef gives alone."""
    rng = np.random.default_rng(6)
    data = rng.standard_normal((4_000, 32)).astype(np.float32)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    with lamina.connect(str(tmp_path)) as client:
        col = client.create_collection(
            "h", 32, metric="l2", index={"type": "hnsw", "m": 4, "ef_construction": 16}, segment_rows=4_000
        )
        col.upsert(list(range(4_000)), data)
        col.optimize()
        alone = {ef: [[h.id for h in col.search(q, k=10, ef=ef)] for q in queries] for ef in (10, 400)}
        assert alone[10] != alone[400]  # the width matters on this data
        wrong: list[tuple[int, int]] = []

        def searches(ef: int) -> None:
            for _ in range(40):
                for i, q in enumerate(queries):
                    if [h.id for h in col.search(q, k=10, ef=ef)] != alone[ef][i]:
                        wrong.append((ef, i))

        threads = [threading.Thread(target=searches, args=(ef,)) for ef in (10, 400, 10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not wrong, f"{len(wrong)} searches walked with another request's ef: {wrong[:5]}"


@pytest.mark.parametrize("case", [1, 2, 5, 6])
def test_deletes_are_honoured_by_every_tier_and_compaction_removes_them(tmp_path: Path, case: int) -> None:
    index, quant, floor = TIERS[case]
    with lamina.connect(str(tmp_path)) as client:
        col = client.create_collection("c", DIM, index=index, quantization=quant, segment_rows=SEGMENT)
        for lo in range(0, N, 1_000):
            col.upsert(list(range(lo, lo + 1_000)), DATA[lo : lo + 1_000])
        col.optimize()
        gone = list(range(0, N, 3))  # a third of every segment
        assert col.delete(ids=gone) == len(gone)
        kept = np.array(sorted(set(range(N)) - set(gone)))
        results = col.search_batch(QUERIES, k=10)
        assert not {h.id for hits in results for h in hits} & set(gone)
        info = col.optimize()
        assert info.count == len(kept) == info.status.indexed_points
        segment_files = sorted(p.name for p in (tmp_path / "collections" / "c" / "segments").iterdir())
        assert len(segment_files) == info.status.segments
        expected = truth(kept, DATA[kept], QUERIES, 10)
        assert recall(col.search_batch(QUERIES, k=10), expected) >= floor - 0.05
    # after a restart the deletes and the compacted segments are still there
    with lamina.connect(str(tmp_path)) as client:
        col = client.get_collection("c")
        assert col.count() == len(kept)
        results = col.search_batch(QUERIES, k=10, exact=True)
        assert recall(results, expected) == 1.0


def test_reopen_loads_segments_without_rebuilding(tmp_path: Path) -> None:
    with lamina.connect(str(tmp_path)) as client:
        col = client.create_collection(
            "c", DIM, quantization={"type": "binary", "bits": 2}, segment_rows=SEGMENT
        )
        for lo in range(0, N, 1_000):
            col.upsert(list(range(lo, lo + 1_000)), DATA[lo : lo + 1_000])
        col.optimize()
        col.delete(ids=[5, 6, 7])  # deleted after sealing: must stay deleted after reopen
        col.upsert([N], DATA[:1] * -1)  # still in the mutable segment
        before = [[(h.id, h.score) for h in hits] for hits in col.search_batch(QUERIES, k=10)]
        folder = tmp_path / "collections" / "c" / "segments"
        codes = {str(p) for p in folder.rglob("codes.npy")}
        assert len(codes) == N // SEGMENT and codes <= _mapped_files()  # mapped by the writer, not read
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.rglob("*")}
    with lamina.connect(str(tmp_path)) as client:
        col = client.get_collection("c")
        info = col.info()
        assert info.count == N - 3 + 1 and info.status.mutable_points == 1
        after = [[(h.id, h.score) for h in hits] for hits in col.search_batch(QUERIES, k=10)]
        assert after == before
        assert col.search(-DATA[0], k=1)[0].id == N
        assert codes <= _mapped_files()  # and after a reopen: every server process shares their pages
    assert {p.name: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps  # nothing rebuilt


def _mapped_files() -> set[str]:
    """Paths of the files this process has memory-mapped (/proc/self/maps)."""
    with open("/proc/self/maps") as maps:
        return {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6}


def test_unfinished_segment_folders_are_removed_at_start(tmp_path: Path) -> None:
    with lamina.connect(str(tmp_path)) as client:
        col = client.create_collection("c", DIM, segment_rows=SEGMENT)
        col.upsert(list(range(100)), DATA[:100])
    folder = tmp_path / "collections" / "c" / "segments"
    (folder / "000000000000-deadbeef.tmp").mkdir()
    (folder / "000000000000-deadbeef").mkdir()  # renamed but never committed to the manifest
    with lamina.connect(str(tmp_path)) as client:
        assert client.get_collection("c").count() == 100
    assert list(folder.iterdir()) == []


def test_the_optimizer_seals_in_the_background_while_searches_run(tmp_path: Path) -> None:
    with lamina.connect(str(tmp_path)) as client:
        col = client.create_collection(
            "c", DIM, index={"type": "hnsw", "ef": 200}, segment_rows=1_000, max_segment_rows=1_000
        )  # no merges: every seal stays a segment
        for lo in range(0, 4_000, 500):
            col.upsert(list(range(lo, lo + 500)), DATA[lo : lo + 500])
            # every point written so far is found by an exact self-query, sealed or not
            for i in range(0, lo + 500, 97):
                assert col.search(DATA[i], k=1, exact=True)[0].id == i
        col.optimize()
        info = col.info()
        assert info.status.segments >= 3 and info.count == 4_000


def test_pq_with_too_few_points_falls_back_to_exact_and_says_so(tmp_path: Path) -> None:
    with lamina.connect(str(tmp_path)) as client:
        col = client.create_collection(
            "c", DIM, quantization={"type": "pq", "m": 8}, segment_rows=500, max_segment_rows=500
        )
        col.upsert(list(range(600)), DATA[:600])
        info = col.optimize()
        assert info.status.segments == 2 and "pq needs 9984 points to train" in info.status.note
        expected = truth(np.arange(600), DATA[:600], QUERIES, 10)
        assert recall(col.search_batch(QUERIES, k=10), expected) == 1.0


def test_settings_and_status_are_visible_over_grpc(db: lamina.Client) -> None:
    col = db.create_collection(
        "c",
        DIM,
        index={"type": "hnsw", "m": 8, "ef_construction": 50, "ef": 32},
        quantization={"type": "binary", "bits": 2, "oversample": 6},
        segment_rows=1_000,
        max_segment_rows=1_000,
    )
    col.upsert(list(range(1_500)), DATA[:1_500])
    info = col.optimize()
    assert info.config.index == IndexConfig(type="hnsw", m=8, ef_construction=50, ef=32)
    assert info.config.quantization == QuantizationConfig(type="binary", bits=2, oversample=6)
    assert info.config.segment_rows == 1_000
    # optimize() seals the 500 left over too, into a second segment
    assert info.status.segments == 2 and info.status.indexed_points == 1_500
    assert info.status.mutable_points == 0 and info.status.index_bytes > 1_500 * 2 * DIM // 8
    assert db.get_collection("c").config == info.config
    hits = col.search(DATA[3], k=5, ef=100, oversample=10)
    assert hits[0].id == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"index": {"type": "ivf"}}, "unknown index type"),
        ({"index": {"type": "hnsw", "m": 1}}, "m must be an integer in 2..256"),
        ({"index": {"type": "hnsw", "ef_construction": 0}}, "ef_construction"),
        ({"index": {"type": "hnsw", "mm": 3}}, "unknown index setting"),
        ({"quantization": {"type": "scalar"}}, "unknown quantization type"),
        ({"quantization": {"type": "binary", "bits": 3}}, "bits must be 1, 2 or 4"),
        ({"quantization": {"type": "binary", "oversample": 0.5}}, "oversample must be a number in 1..1000"),
        ({"quantization": {"type": "pq", "m": 5}}, "does not divide dim"),
        ({"quantization": {"type": "pq"}}, "pq m must be an integer"),
        ({"segment_rows": 10}, "segment_rows"),
    ],
)
def test_bad_index_settings_are_rejected_at_create(
    db: lamina.Client, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        db.create_collection("c", DIM, **kwargs)
    assert db.list_collections() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ef": 0}, "ef must be"),
        ({"oversample": 0.5}, "oversample must be"),
        ({"exact": "yes"}, "exact must be"),
    ],
)
def test_bad_search_overrides_are_rejected(db: lamina.Client, kwargs: dict[str, Any], message: str) -> None:
    col = db.create_collection("c", DIM)
    col.upsert([1], DATA[:1])
    with pytest.raises(InvalidArgument, match=message):
        col.search(DATA[0], k=1, **kwargs)


def test_a_collection_from_before_the_index_tier_opens_as_flat(tmp_path: Path) -> None:
    """tests/data/pre-index-tier holds a collection written by Lamina before the index tier
    existed (its README says how): it opens as flat, unquantized, with every point intact,
    searches exactly, and takes writes and a seal."""
    shutil.copytree(Path(__file__).parent / "data" / "pre-index-tier", tmp_path / "data")
    ids: list[Any] = [*range(40), "doc-a", "doc-b"]
    vectors = (np.arange(len(ids) * 8, dtype=np.float32).reshape(len(ids), 8) % 13) / 3
    expected = {
        pid: (vectors[n].tobytes(), {"i": n, "tag": ["x", "y"][n % 2]})
        for n, pid in enumerate(ids)
        if pid not in (3, 5)
    }
    with lamina.connect(str(tmp_path / "data")) as db:
        col = db.get_collection("old")
        info = col.info()
        assert info.config.index.type == "flat" and info.config.quantization is None
        assert info.config.dim == 8 and info.config.metric == "l2"
        points, _ = col.scroll(limit=100, with_vector=True)
        assert {p.id: (p.vector.tobytes(), p.payload) for p in points} == expected  # type: ignore[union-attr]
        hits = col.search(vectors[7], k=3, filter={"tag": "y"})
        mine = sorted(
            (float(np.linalg.norm(vectors[n] - vectors[7])), n)
            for n in range(40)
            if n % 2 and n not in (3, 5)
        )
        np.testing.assert_allclose([h.score for h in hits], [d for d, _ in mine[:3]], atol=1e-4)
        assert all(h.payload is not None and h.payload["tag"] == "y" for h in hits) and len(hits) == 3
        col.upsert([100], vectors[:1], [{"new": True}])
        col.optimize()
        assert col.info().status.indexed_points == len(expected) + 1
    with lamina.connect(str(tmp_path / "data")) as db:
        assert db.get_collection("old").count() == len(expected) + 1


# ---------------------------------------------------------------- kernels vs numpy
@pytest.mark.parametrize("metric", [METRIC_IP, METRIC_L2])
def test_rerank_matches_numpy(metric: int) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 24)).astype(np.float32)
    queries = rng.standard_normal((7, 24)).astype(np.float32)
    candidates = np.stack([rng.permutation(501)[:60] - 1 for _ in range(7)])  # unique per query, -1 unused
    live = rng.random(500) > 0.2
    scores, rows, counts = rerank(vectors, candidates, live, queries, 5, metric)
    for q in range(7):
        cand = np.unique(candidates[q][candidates[q] >= 0])
        cand = cand[live[cand]]
        if metric == METRIC_IP:
            ref = vectors[cand] @ queries[q]
        else:
            ref = -((vectors[cand] - queries[q]) ** 2).sum(axis=1)
        order = np.argsort(-ref)[:5]
        assert counts[q] == min(5, cand.size)
        np.testing.assert_allclose(scores[q, : counts[q]], ref[order], rtol=1e-4, atol=1e-4)
        assert set(rows[q, : counts[q]].tolist()) == set(cand[order].tolist())


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_hamming_topn_matches_numpy(bits: int) -> None:
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((3_000, 40)).astype(np.float32)
    queries = rng.standard_normal((5, 40)).astype(np.float32)
    thresholds = binary_thresholds(vectors, bits)
    codes, query_codes = binary_encode(vectors, thresholds), binary_encode(queries, thresholds)
    live = rng.random(3_000) > 0.1
    crowded = np.zeros(5, np.bool_)
    found = hamming_topn(codes, live, query_codes, 50, crowded)
    unpack = np.unpackbits(codes.view(np.uint8), axis=1).astype(np.int32)
    for q in range(5):
        qbits = np.unpackbits(query_codes[q].view(np.uint8)).astype(np.int32)
        dist = np.abs(unpack - qbits).sum(axis=1)
        dist[~live] = 10**6
        cut = np.sort(dist)[49]
        got = found[q]
        assert (got >= 0).all() and len(set(got.tolist())) == 50 and live[got].all()
        assert (dist[got] <= cut).all()  # no row closer than the cut-off was passed over
        assert (dist[got] < cut).sum() == (dist < cut).sum()
        assert crowded[q] == ((dist == cut).sum() > 50)  # more tie at the cut than fit
    everything = hamming_topn(codes, live, query_codes[:1], 3_000, np.zeros(1, np.bool_))[0]  # more than live
    assert sorted(everything[everything >= 0].tolist()) == np.flatnonzero(live).tolist()
    assert (everything[int(live.sum()) :] == -1).all()


def test_hamming_topn_ties_at_the_cut_off() -> None:
    """Rows tied at the cut-off distance fill exactly the places left, and none is taken twice."""
    codes = np.zeros((100, 1), np.uint64)
    codes[:10, 0] = 0  # distance 0 from the query
    codes[10:, 0] = 1  # distance 1: 90 rows tied
    live = np.ones(100, np.bool_)
    live[5] = False
    crowded = np.zeros(1, np.bool_)
    found = hamming_topn(codes, live, np.zeros((1, 1), np.uint64), 30, crowded)[0]
    assert len(set(found.tolist())) == 30 and (found >= 0).all() and live[found].all()
    assert set(range(10)) - {5} <= set(found.tolist())  # every closer live row is in
    assert crowded[0]  # 90 rows tie at the cut-off, more than the 30 asked
    hamming_topn(codes, live, np.zeros((1, 1), np.uint64), 95, crowded)
    assert not crowded[0]  # all 99 live rows fit: nothing left out at random


@pytest.mark.parametrize(("dim", "bits"), [(384, 1), (40, 2), (100, 4), (7, 1)])
def test_binary_encode_of_one_query_matches_the_batch_encoding(dim: int, bits: int) -> None:
    """A single query (the search path) takes a shorter way to its code: the same bits."""
    vectors = np.random.default_rng(dim).standard_normal((200, dim)).astype(np.float32)
    thresholds = binary_thresholds(vectors, bits)
    batch = binary_encode(vectors, thresholds)
    for i in range(20):
        np.testing.assert_array_equal(binary_encode(vectors[i : i + 1], thresholds), batch[i : i + 1])


def test_median_thresholds_set_each_bit_for_half_the_points() -> None:
    data = np.random.default_rng(5).standard_normal((2_001, 16)).astype(np.float32) + 3.0  # far from zero
    codes = binary_encode(data, binary_thresholds(data, 1))
    frac = np.unpackbits(codes.view(np.uint8), axis=1)[:, :16].mean(axis=0)
    np.testing.assert_allclose(frac, 0.5, atol=0.01)  # sign bits would all be 1 here


def test_build_threads_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from lamina.engine.optimizer.build import build_threads

    monkeypatch.setenv("LAMINA_BUILD_THREADS", "1")
    assert build_threads() == 1
    monkeypatch.delenv("LAMINA_BUILD_THREADS")
    assert build_threads() == len(os.sched_getaffinity(0))  # this machine sets no cgroup CPU quota


@pytest.mark.parametrize(
    ("variable", "value"),
    [("LAMINA_BUILD_THREADS", "abc"), ("LAMINA_BUILD_THREADS", "-2"), ("LAMINA_GRAPH_MEMORY", "heap")],
)
def test_bad_engine_settings_are_refused_at_open_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A bad environment setting of the engine fails when a database opens, naming the
    variable and the value, not later in a background build or the first graph opened."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(lamina.InvalidArgument, match=f"{variable} must be .*{value!r}"):
        lamina.connect(str(tmp_path / "data"))
    monkeypatch.delenv(variable)
    with lamina.connect(str(tmp_path / "data")) as db:  # the same directory opens once it is fixed
        assert db.list_collections() == []


def test_niced_work_runs_on_a_lower_priority_thread_and_hands_back_its_outcome() -> None:
    from lamina.cores import niced

    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = own_nice()
    assert niced(5, own_nice) == min(19, mine + 5)
    assert own_nice() == mine  # the caller keeps its priority
    assert niced(0, own_nice) == mine
    with pytest.raises(KeyError, match="gone"):
        niced(5, lambda: {}["gone"])


def test_index_builds_run_below_searches_and_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build (and the graph builder's threads it starts, which inherit it) runs niced by
    LAMINA_BUILD_NICE (default BACKGROUND_NICE): it yields the CPU to searches and writes,
    while the optimizer thread, which holds the collection lock between builds, keeps its
    priority; 0 keeps the build's; a bad value fails the open with its name."""
    from lamina.cores import BACKGROUND_NICE

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    monkeypatch.setenv("LAMINA_BUILD_THREADS", "1")  # a build long enough to be seen

    def nices_during_a_build(path: Path) -> set[int]:
        seen: set[int] = set()
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for task in Path("/proc/self/task").iterdir():
                    with contextlib.suppress(OSError):  # ended meanwhile
                        seen.add(os.getpriority(os.PRIO_PROCESS, int(task.name)))
                time.sleep(0.002)

        vectors = np.random.default_rng(8).standard_normal((6_000, 32)).astype(np.float32)
        with lamina.connect(str(path)) as db:
            col = db.create_collection("c", dim=32)
            col.upsert(list(range(6_000)), vectors)
            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                assert col.optimize(timeout=120)
            finally:
                done.set()
                sampler.join()
            optimizer = next(t for t in threading.enumerate() if t.name == "optimizer-c")
            assert optimizer.native_id is not None
            assert os.getpriority(os.PRIO_PROCESS, optimizer.native_id) == mine
        return seen

    assert min(19, mine + BACKGROUND_NICE) in nices_during_a_build(tmp_path / "a")
    monkeypatch.setenv("LAMINA_BUILD_NICE", "0")
    assert nices_during_a_build(tmp_path / "b") == {mine}
    monkeypatch.setenv("LAMINA_BUILD_NICE", "lowest")
    with (
        pytest.raises(ValueError, match=r"LAMINA_BUILD_NICE must be an integer 0\.\.19"),
        lamina.connect(str(tmp_path / "a")) as db,
    ):
        db.get_collection("c")


def test_engine_direct_use_with_configs(tmp_path: Path) -> None:
    with Database(tmp_path) as database:
        config = CollectionConfig(
            dim=DIM,
            metric="l2",
            index=IndexConfig(type="flat"),
            quantization=QuantizationConfig(type="binary", bits=4),
            segment_rows=1_000,
        )
        col = database.create_collection("c", config)
        col.upsert(list(range(2_000)), DATA[:2_000] * 3)
        col.optimize()
        hits = col.search(DATA[7] * 3, k=3)
        assert hits[0].id == 7 and hits[0].score == pytest.approx(0.0, abs=1e-3)  # l2 distance


def test_points_deleted_while_their_segment_is_built_stay_deleted_after_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMINA_BUILD_THREADS", "1")  # a slow build, so that the delete lands inside it
    data = embeddings(8_000, DIM, 7)
    with Database(tmp_path) as database:
        config = CollectionConfig(
            dim=DIM, index=IndexConfig(type="hnsw", ef_construction=400), segment_rows=8_000
        )
        col = database.create_collection("c", config)
        col.upsert(list(range(8_000)), data)
        deadline = time.monotonic() + 5
        while not col._busy and time.monotonic() < deadline:  # wait for the optimizer to start sealing
            time.sleep(0.001)
        assert col._busy, "the optimizer did not start sealing: the race this test is about did not happen"
        assert col.delete(ids=list(range(0, 8_000, 10))) == 800
        assert col.info().status.segments == 0  # the delete was acknowledged before the segment was sealed
        col.optimize()
        assert col.info().status.indexed_points == 7_200
    with Database(tmp_path) as database:
        col = database.get_collection("c")
        assert col.count() == 7_200
        for i in range(0, 8_000, 50):  # a deleted point's exact self-query must not return it
            top = col.search(data[i], k=1, params=SearchParams(exact=True))[0]
            assert top.id != i if i % 10 == 0 else top.id == i
