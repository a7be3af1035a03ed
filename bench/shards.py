"""Sharded Lamina on Ray: 1, 2 and 4 shards (and 2 shards x 2 replicas) beside one node.

``python -m bench shards`` (kernel-docs-minilm: 60,000 x 384 real embeddings, cosine, 500
queries, by default; ``--dataset synthetic --rows --dim`` for clustered synthetic vectors).

Every system runs on this machine: "single node" is an embedded ``lamina.connect``; the
sharded systems are ``lamina.distributed.connect`` over a local Ray (``ray.init``), each
shard replica a Ray actor process with its own data directory. For each system:

* ``ingest, sdk loop``: 1,000-row ``upsert`` calls from one thread until the last is
  acknowledged (on every replica);
* ``ingest, ray tasks`` (sharded only): ``lamina.distributed.ingest`` of the same rows from
  an ``.npy`` file, Ray tasks reading 20,000-row blocks and writing them straight to the shards;
* ``build``: ``optimize()`` after the load: seal and index (HNSW) every shard;
* ``search, 1 query per call`` and ``search, batches of 100``: QPS with recall@10 against
  exact ground truth, p50 / p99 per call;
* memory: growth of the resident memory of the processes holding the data, from before the
  load to after the searches (single node: this process; sharded: the sum over the
  replica actor processes, from just after the collection's actors started).

Ratios are against the single node. The table's note says how many cores the machine has
(Ray is given 2 CPUs): on a small machine every shard shares them, so more shards cannot
add compute; the figures then show the cost of the scatter, the merge and the Ray hop,
not the scale-out a cluster of machines would give.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import lamina
import lamina.distributed as ld
from bench.common import RESULTS, Row, clustered, ground_truth, plot, recall, rss_mb, save, table, time_each
from bench.compare import DATA

BATCH = 1_000
QUERY_BATCH = 100
SYSTEMS = [("1 shard", 1, 1), ("2 shards", 2, 1), ("4 shards", 4, 1), ("2 shards x 2 replicas", 2, 2)]


def _searches(col: Any, queries: np.ndarray, truth: np.ndarray, system: str, mem: float) -> list[Row]:
    found: list[list[int]] = [[] for _ in range(len(queries))]

    def one(i: int) -> None:
        found[i] = [int(h.id) for h in col.search(queries[i], k=10, with_payload=False)]

    for i in range(min(20, len(queries))):  # warm up (numba, first calls of each actor)
        one(i)
    qps, lat = time_each(one, len(queries))
    rows = [
        Row(
            system,
            "search, 1 query per call",
            qps,
            "QPS",
            float(np.percentile(lat, 50)),
            float(np.percentile(lat, 99)),
            recall(found, truth),
            mem,
        )
    ]
    batches = [queries[lo : lo + QUERY_BATCH] for lo in range(0, len(queries), QUERY_BATCH)]
    batch_found: list[list[int]] = []

    def batch(i: int) -> None:
        batch_found.extend(
            [int(h.id) for h in hits] for hits in col.search_batch(batches[i], k=10, with_payload=False)
        )

    calls, lat = time_each(batch, len(batches))
    rows.append(
        Row(
            system,
            "search, batches of 100",
            calls * QUERY_BATCH,
            "QPS",
            float(np.percentile(lat, 50)),
            float(np.percentile(lat, 99)),
            recall(batch_found, truth),
            mem,
        )
    )
    return rows


def _loop(col: Any, vectors: np.ndarray) -> float:
    started = time.perf_counter()
    for lo in range(0, vectors.shape[0], BATCH):
        col.upsert(list(range(lo, min(lo + BATCH, vectors.shape[0]))), vectors[lo : lo + BATCH])
    return time.perf_counter() - started


def _actors_rss(client: lamina.Client, name: str) -> float:
    import ray

    col = client._transport.db.get_collection(name)  # type: ignore[attr-defined]
    pids = ray.get([s.handle.pid.remote() for slots in col._slots for s in slots])
    return sum(psutil.Process(p).memory_info().rss for p in pids) / 2**20


def run(dataset: str, rows: int, dim: int, nq: int, work: Path) -> list[Row]:
    import ray

    if dataset == "kernel-docs":
        vectors = np.load(DATA / "base.f16.npy").astype(np.float32)
        queries = np.load(DATA / "queries.f16.npy").astype(np.float32)[:nq]
        if rows:
            vectors = vectors[:rows]
    else:
        vectors = clustered(rows or 200_000, dim, seed=1)
        queries = clustered(nq, dim, seed=2)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows, dim = vectors.shape
    truth = ground_truth(vectors, queries, 10)
    path = work / "vectors.npy"
    np.save(path, vectors)
    results: list[Row] = []

    def say(row: Row) -> None:
        results.append(row)
        extra = f" recall {row.recall:.3f}" if row.recall is not None else ""
        print(
            f"  {row.system:24} {row.task:28} {row.rate:12,.0f} {row.unit}{extra}",
            file=sys.stderr,
            flush=True,
        )

    print(f"single node: {rows:,} x {dim}", file=sys.stderr)
    before = rss_mb()
    with lamina.connect(str(work / "single")) as db:
        col = db.create_collection("bench", dim)
        seconds = _loop(col, vectors)
        say(
            Row(
                "single node", "ingest", rows / seconds, "rows/s", note="sdk loop", extra={"seconds": seconds}
            )
        )
        started = time.perf_counter()
        col.optimize()
        build = time.perf_counter() - started
        say(
            Row(
                "single node",
                "build",
                rows / build,
                "rows/s",
                note=f"{build:.1f} s",
                extra={"seconds": build},
            )
        )
        for row in _searches(col, queries, truth, "single node", rss_mb() - before):
            say(row)

    print("starting a local Ray (2 CPUs)", file=sys.stderr)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for system, shards, replicas in SYSTEMS:
            print(f"{system}:", file=sys.stderr)
            with ld.connect(work / system.replace(" ", "-")) as client:
                loop_col = client.create_collection("loop", dim, shards=shards, replicas=replicas)
                seconds = _loop(loop_col, vectors)
                say(
                    Row(
                        system,
                        "ingest",
                        rows / seconds,
                        "rows/s",
                        note="sdk loop",
                        extra={"seconds": seconds},
                    )
                )
                client.delete_collection("loop")
                col = client.create_collection("bench", dim, shards=shards, replicas=replicas)
                actors_before = _actors_rss(client, "bench")  # started, empty: growth is measured from here
                started = time.perf_counter()
                written = ld.ingest(client, "bench", path, rows_per_block=20_000)
                seconds = time.perf_counter() - started
                assert written == rows, (written, rows)
                say(
                    Row(
                        f"{system}, ray tasks",
                        "ingest",
                        rows / seconds,
                        "rows/s",
                        note="ld.ingest from .npy",
                        extra={"seconds": seconds},
                    )
                )
                started = time.perf_counter()
                col.optimize()
                build = time.perf_counter() - started
                say(
                    Row(
                        system,
                        "build",
                        rows / build,
                        "rows/s",
                        note=f"{build:.1f} s",
                        extra={"seconds": build},
                    )
                )
                grown = _actors_rss(client, "bench") - actors_before
                for row in _searches(col, queries, truth, system, grown):
                    say(row)
    finally:
        ray.shutdown()
    return results


TASKS = ["ingest", "build", "search, 1 query per call", "search, batches of 100"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["kernel-docs", "synthetic"], default="kernel-docs")
    parser.add_argument(
        "--rows", type=int, default=0, help="rows to load (default: all of kernel-docs; synthetic 200,000)"
    )
    parser.add_argument("--dim", type=int, default=128, help="synthetic only")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--work", help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        if args.dataset == "kernel-docs" and not (DATA / "base.f16.npy").exists():
            raise SystemExit(
                f"{DATA} has no kernel-docs-minilm data (../shared/data); use --dataset synthetic"
            )
        rows = run(args.dataset, args.rows, args.dim, args.queries, Path(tmp))
    markdown = table(rows, {task: "single node" for task in TASKS})
    cores = len(os.sched_getaffinity(0))
    markdown += (
        f"\n\n{cores} cores on this machine (Ray given 2 CPUs): every shard and replica shares them; "
        "ratios show the cost of sharding on this machine, not cluster scale-out. Memory: growth of the "
        "processes holding the data (single node: this process; sharded: the replica actors)."
    )
    print(markdown)
    params = {
        "dataset": args.dataset,
        "rows": args.rows,
        "dim": args.dim,
        "queries": args.queries,
        "batch": BATCH,
    }
    name = f"shards-{args.dataset}"
    json_path = save(name, rows, params, markdown)
    png = plot(name, rows, TASKS)
    print(f"wrote {json_path}" + (f" and {png}" if png else ""), file=sys.stderr)
    print(f"(results folder: {RESULTS})", file=sys.stderr)
    return 0
