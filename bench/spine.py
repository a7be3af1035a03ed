"""Ingest rate and exact-search QPS of Lamina (embedded and gRPC) beside numpy and
faiss IndexFlatIP on the same data.

    python -m bench spine [--n 100000] [--dim 128] [--queries 300]

Lamina's ingest is durable (RocksDB WAL, one write batch per 1,000 points); faiss
and numpy hold vectors in memory only. All searches are exact (k=10, cosine on
unit vectors == inner product), so recall@10 should be 1.000 everywhere.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

import lamina
from bench.common import Row, clustered, ground_truth, plot, recall, rss_mb, save, table, time_each
from lamina.testing import ServerProcess

K = 10
BATCH = 1000
QUERY_BATCH = 100
SINGLE = "search k=10 (1 query/call)"
MANY = f"search k=10 ({QUERY_BATCH} queries/call)"


def search_rows(
    system: str,
    one: Callable[[np.ndarray], list[int]],
    many: Callable[[np.ndarray], list[list[int]]],
    queries: np.ndarray,
    truth: np.ndarray,
    rss: float | None,
) -> list[Row]:
    """Time ``one`` query per call and ``many`` per call; check recall against ``truth``."""
    one(queries[0])  # warm-up: numba compile, connection
    found: list[list[int]] = []
    qps, lat = time_each(lambda i: found.append(one(queries[i])), len(queries))
    batches = [queries[i : i + QUERY_BATCH] for i in range(0, len(queries), QUERY_BATCH)]
    found_b: list[list[int]] = []
    bps, lat_b = time_each(lambda i: found_b.extend(many(batches[i])), len(batches))
    return [
        Row(system, SINGLE, qps, "QPS", *np.percentile(lat, [50, 99]).tolist(), recall(found, truth), rss),
        Row(
            system,
            MANY,
            bps * QUERY_BATCH,
            "QPS",
            *np.percentile(lat_b, [50, 99]).tolist(),
            recall(found_b, truth),
            rss,
        ),
    ]


def bench_lamina(
    name: str,
    db: lamina.Client,
    data: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    server_pid: int | None,
) -> list[Row]:
    base_rss = 0.0 if server_pid else rss_mb()  # embedded: count what Lamina adds to this process
    col = db.create_collection("bench", dim=data.shape[1], metric="cosine")
    start = time.perf_counter()
    for lo in range(0, len(data), BATCH):
        col.upsert(list(range(lo, min(lo + BATCH, len(data)))), data[lo : lo + BATCH])
    ingest = len(data) / (time.perf_counter() - start)
    rss = rss_mb(server_pid) - base_rss
    what = "RSS: whole server process" if server_pid else "RSS: growth of this process"
    return [
        Row(name, "ingest", ingest, "rows/s", rss_mb=rss, note=f"durable, batches of {BATCH}; {what}"),
        *search_rows(
            name,
            lambda q: [int(h.id) for h in col.search(q, k=K, with_payload=False)],
            lambda qs: [[int(h.id) for h in hits] for hits in col.search_batch(qs, k=K, with_payload=False)],
            queries,
            truth,
            rss,
        ),
    ]


def bench_faiss(data: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> list[Row]:
    before = rss_mb()
    index = faiss.IndexFlatIP(data.shape[1])
    start = time.perf_counter()
    for lo in range(0, len(data), BATCH):
        index.add(data[lo : lo + BATCH])
    ingest = len(data) / (time.perf_counter() - start)
    rss = rss_mb() - before
    threads = faiss.omp_get_max_threads()

    def many(qs: np.ndarray) -> list[list[int]]:
        faiss.omp_set_num_threads(threads)
        try:
            return index.search(qs, K)[1].tolist()  # type: ignore[no-any-return]
        finally:
            faiss.omp_set_num_threads(1)

    # On 2 cores a single query runs faster on one OpenMP thread (measured 2.9 vs 7.4 ms) and a
    # batch on all of them: give faiss its best setting for each task.
    faiss.omp_set_num_threads(1)
    try:
        searches = search_rows(
            "faiss IndexFlatIP",
            lambda q: index.search(q[None, :], K)[1][0].tolist(),
            many,
            queries,
            truth,
            rss,
        )
    finally:
        faiss.omp_set_num_threads(threads)
    ingest_row = Row(
        "faiss IndexFlatIP",
        "ingest",
        ingest,
        "rows/s",
        rss_mb=rss,
        note="in memory, not durable; RSS: growth",
    )
    return [ingest_row, *searches]


def bench_numpy(data: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> list[Row]:
    def topk(q: np.ndarray) -> np.ndarray:
        scores = q @ data.T
        part = np.argpartition(-scores, K, axis=-1)[..., :K]
        order = np.take_along_axis(scores, part, -1).argsort(axis=-1)[..., ::-1]
        return np.take_along_axis(part, order, -1)

    return search_rows(
        "numpy matmul+argpartition",
        lambda q: topk(q).tolist(),
        lambda qs: topk(qs).tolist(),
        queries,
        truth,
        None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench spine", description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args(argv)
    args.queries = max(QUERY_BATCH, args.queries // QUERY_BATCH * QUERY_BATCH)
    print(f"data: {args.n:,} x {args.dim} clustered float32, {args.queries} queries, k={K}")
    data = clustered(args.n, args.dim, seed=1)
    queries = clustered(args.queries, args.dim, seed=2)
    truth = ground_truth(data, queries, K)

    rows: list[Row] = []
    print("faiss ...", flush=True)
    rows += bench_faiss(data, queries, truth)
    print("numpy ...", flush=True)
    rows += bench_numpy(data, queries, truth)
    tmp = Path(tempfile.mkdtemp(prefix="lamina-bench-"))
    try:
        print("lamina embedded ...", flush=True)
        with lamina.connect(str(tmp / "embedded")) as db:
            rows += bench_lamina("lamina embedded", db, data, queries, truth, None)
        start = time.perf_counter()
        with lamina.connect(str(tmp / "embedded")) as db:
            db.get_collection("bench").count()
            reopen = time.perf_counter() - start
        print("lamina gRPC ...", flush=True)
        server = ServerProcess(tmp / "server")
        try:
            with lamina.connect(server.address) as db:
                rows += bench_lamina("lamina gRPC", db, data, queries, truth, server.proc.pid)
        finally:
            server.terminate()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    order = {"ingest": 0, SINGLE: 1, MANY: 2}
    rows.sort(key=lambda r: order[r.task])
    markdown = table(rows, dict.fromkeys(order, "faiss IndexFlatIP"))
    markdown += f"\n\nReopen of the {args.n:,}-point embedded collection (rebuilds the in-memory matrix from RocksDB): {reopen:.2f} s"
    print()
    print(markdown)
    path = save("spine", rows, vars(args) | {"k": K, "batch": BATCH, "reopen_s": reopen}, markdown)
    png = plot("spine", rows, list(order))
    print(f"\nwrote {path}" + (f" and {png}" if png else ""))
    return 0
