"""Lamina embedded against raw hnswlib, layer by layer (part of ``python -m bench serve``;
``--systems '' --ef 32`` runs it alone): single-query searches on the same graph (the sealed
segment's own file, loaded into hnswlib), median CPU time per query as each layer of the search
path is added (raw walk, tier, segment, engine, SDK, payloads), with and without a small mutable
tail. What each layer costs is where the embedded read path spends beyond the index walk."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.compare import K
from bench.peers import EF_CONSTRUCTION, M

COLLECTION = "layers"

#: rows upserted after the optimizer finished for the "small mutable tail" case (scanned exactly)
TAIL_ROWS = 2_000
#: the layers of an embedded single-query search, each measured on its own (see ``embedded``)
LAYERS = {
    "hnswlib": "raw hnswlib knn_query on the segment's graph (set_ef + walk)",
    "tier": "+ the tier's search (beam bookkeeping, kernel scores, counts)",
    "segment": "+ the segment (fault check, point ids at the graph's labels)",
    "engine": "+ the engine's Collection.search (validation, snapshot, mutable rows, hits)",
    "lamina": "+ the SDK (lamina.connect(path) ... col.search(q, with_payload=False))",
    "lamina_payload": "+ payloads (the SDK's default with_payload=True; sealed hits' from the segment's payload column)",
    "lamina_payload_rocksdb": "the same, payloads read from RocksDB (as for a segment written before the column)",
}


def embedded(
    work: Path,
    ef: int,
    payloads: list[dict[str, Any]] | None = None,
    rounds: int = 5,
    tail: int = TAIL_ROWS,
) -> dict[str, Any]:
    """Single-query searches (k = 10) of Lamina embedded against the same hnswlib graph walked
    directly (hnswlib loading the sealed segment's own graph file, so both walk the same
    nodes), layer by layer
    (``LAYERS``: each adds one step of the search path to the one before), first with one
    sealed segment and nothing else, then with ``tail`` more points in the mutable segment
    (written after the optimizer finished, as a live collection has). Median CPU time of each
    (``time.thread_time``: what this process spent, not what a busy machine's other processes
    took), measured in alternating blocks over the query set. ``work`` holds ``base.npy`` and
    ``queries.npy``; ``payloads``: one per base row (default ``{"doc": i}``)."""
    import lamina
    from lamina.engine.planner import DEFAULT_PARAMS
    from lamina.index.tiers import GRAPH, hnsw_index

    base, queries = np.load(work / "base.npy"), np.load(work / "queries.npy")
    payloads = payloads or [{"doc": i} for i in range(base.shape[0])]
    with lamina.connect(str(work / "embedded-data")) as db:
        col = db.create_collection(
            COLLECTION,
            dim=base.shape[1],
            metric="cosine",
            index={"type": "hnsw", "m": M, "ef_construction": EF_CONSTRUCTION},
        )
        for lo in range(0, base.shape[0], 5000):
            ids = list(range(lo, min(lo + 5000, base.shape[0])))
            col.upsert(ids, base[lo : lo + 5000], payloads[lo : lo + 5000])
        col.optimize()
        engine = db._transport.db.get_collection(COLLECTION)  # type: ignore[attr-defined]
        (segment,) = engine._segments  # one sealed segment after optimize(): its graph
        # the raw baseline: hnswlib itself, loaded from the graph file the segment searches
        # through its memory-mapped view (index/graphview.py)
        index = hnsw_index(engine.config, engine._metric)
        index.load_index(str(segment.folder / GRAPH))
        knobs = engine._knobs(replace(DEFAULT_PARAMS, ef=ef))
        params = replace(DEFAULT_PARAMS, ef=ef)
        rows = [q.reshape(1, -1) for q in queries]
        unit = [q / np.linalg.norm(q) for q in rows]  # what the engine hands the tier (cosine)

        def raw(i: int) -> Any:
            index.set_ef(ef)
            return index.knn_query(unit[i], k=K, num_threads=1)

        calls = {
            "hnswlib": raw,
            "tier": lambda i: segment.tier.search(segment.vectors, segment.live, unit[i], K, knobs),
            "segment": lambda i: segment.nearest(unit[i], K, knobs),
            "engine": lambda i: engine.search(queries[i], K, None, False, False, params),
            "lamina": lambda i: col.search(queries[i], k=K, with_payload=False, ef=ef),
            "lamina_payload": lambda i: col.search(queries[i], k=K, ef=ef),
            "lamina_payload_rocksdb": lambda i: _without_column(
                segment, lambda: col.search(queries[i], k=K, ef=ef)
            ),
        }
        sealed_only = _median_us(calls, len(rows), rounds)
        rng = np.random.default_rng(7)  # a tail of fresh points near the real ones
        picks = rng.integers(0, base.shape[0], tail)
        fresh = base[picks] + 0.05 * rng.standard_normal((tail, base.shape[1])).astype(np.float32)
        ids = list(range(base.shape[0], base.shape[0] + tail))
        col.upsert(ids, fresh, [payloads[int(p)] for p in picks])
        with_tail = _median_us(
            {
                n: calls[n]
                for n in ("hnswlib", "engine", "lamina", "lamina_payload", "lamina_payload_rocksdb")
            },
            len(rows),
            rounds,
        )
        assert engine._next_row - engine._mut_start == tail  # still in the mutable segment
    return {
        "ef": ef,
        "tail_rows": tail,
        "layers": LAYERS,
        "median_us": sealed_only,
        "qps": {name: 1e6 / v for name, v in sealed_only.items()},
        "vs_hnswlib": {name: sealed_only["hnswlib"] / v for name, v in sealed_only.items()},
        "tail_median_us": with_tail,
        "tail_vs_hnswlib": {name: with_tail["hnswlib"] / v for name, v in with_tail.items()},
    }


def _without_column(segment: Any, call: Any) -> Any:
    """``call()`` with ``segment`` read as one written before payload columns (RocksDB answers)."""
    column, segment.payload_column = getattr(segment, "payload_column", None), None
    try:
        return call()
    finally:
        segment.payload_column = column


def _median_us(calls: dict[str, Any], n: int, rounds: int) -> dict[str, float]:
    """Median CPU microseconds of each call over queries 0..n-1, the calls taking turns by blocks."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    clock = time.thread_time
    for _ in range(rounds):
        for name, call in calls.items():
            for i in range(n):
                t0 = clock()
                call(i)
                times[name].append(clock() - t0)
    return {name: float(np.median(t)) * 1e6 for name, t in times.items()}


def embedded_table(single: dict[str, Any]) -> str:
    """The embedded measurement as markdown: each layer's median time, its step and ratio."""
    us, tail = single["median_us"], single["tail_median_us"]
    lines = [
        f"Embedded single-query search, k = {K}, ef {single['ef']}, median CPU time per query, on the same "
        f"graph (one sealed segment; then {single['tail_rows']:,} more points in the mutable segment)",
        "",
        "| layer | µs | step µs | vs raw hnswlib | with the mutable tail µs | vs raw hnswlib |",
        "|---|---|---|---|---|---|",
    ]
    before = 0.0
    for name, what in single["layers"].items():
        if name not in us:  # a layer an older run did not measure
            continue
        t = tail.get(name)
        lines.append(
            f"| {name}: {what} | {us[name]:.0f} | {us[name] - before:+.0f} | {us['hnswlib'] / us[name]:.2f}x | "
            + (f"{t:.0f} | {tail['hnswlib'] / t:.2f}x |" if t is not None else "- | - |")
        )
        before = us[name]
    return "\n".join(lines)


# ------------------------------------------------------------------ report
