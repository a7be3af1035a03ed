"""What the web console costs gRPC serving: ``python -m bench console``.

One data directory is served by a real ``lamina serve`` three ways, in turns (``--rounds``
rounds, so that the machine's noise falls on every way alike):

- ``off``: ``--no-console``;
- ``idle``: the console on, nobody looking (its metrics sampler still runs);
- ``watched``: the console on and a watcher polling ``/api/metrics`` every 2 s and the
  collections page every 10 s, as an open metrics page does.

Each run: ``--clients`` threads send gRPC searches (k=10) for ``--seconds`` seconds after a
warm-up. The table gives the median rate and latency per way and each rate over ``off``'s.
Then the metrics sampler's own cost: CPU time of one sample (thread time), with 18 RPC/status
series recorded and 10 collections, nobody watching and watched.
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

import lamina
from bench.common import Row, clustered, save, table
from lamina.testing import ServerProcess, free_port

WAYS = ("off", "idle", "watched")
NOTES = {"off": "--no-console", "idle": "console on, nobody looking", "watched": "metrics page open"}


def _watch(port: int, stop: threading.Event) -> int:
    """Poll the console as an open metrics page does; returns the polls made."""
    polls = 0
    last_list = 0.0
    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        paths = ["/api/metrics"]
        if time.monotonic() - last_list > 10:
            paths.append("/api/collections")
            last_list = time.monotonic()
        for path in paths:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, path
            polls += 1
        conn.close()
        stop.wait(2.0)
    return polls


def _run(data: Path, way: str, queries: np.ndarray, clients: int, seconds: float) -> dict[str, Any]:
    http_port = free_port()
    extra = ("--no-console",) if way == "off" else ("--http-port", str(http_port))
    server = ServerProcess(data, *extra)
    stop_watch = threading.Event()
    watcher: list[int] = []
    try:
        with lamina.connect(server.address) as db:
            col = db.get_collection("docs")
            for q in queries[:50]:  # warm-up
                col.search(q, k=10)
        if way == "watched":
            thread = threading.Thread(target=lambda: watcher.append(_watch(http_port, stop_watch)))
            thread.start()
        latencies: list[list[float]] = [[] for _ in range(clients)]
        deadline = time.monotonic() + seconds

        def client(i: int) -> None:
            with lamina.connect(server.address) as db:
                col = db.get_collection("docs")
                n = i
                while time.monotonic() < deadline:
                    t0 = time.perf_counter()
                    col.search(queries[n % len(queries)], k=10)
                    latencies[i].append((time.perf_counter() - t0) * 1000)
                    n += clients

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        stop_watch.set()
        if way == "watched":
            thread.join()
    finally:
        stop_watch.set()
        server.terminate()
    lat = np.concatenate([np.asarray(x) for x in latencies])
    return {
        "qps": len(lat) / elapsed,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "polls": watcher[0] if watcher else 0,
    }


def sampler_cost(tmp: Path) -> dict[str, float]:
    """CPU seconds of one MetricsHistory sample, unwatched and watched."""
    from lamina.engine.database import Database
    from lamina.server.admission import Gate
    from lamina.server.metrics import Metrics, MetricsHistory
    from lamina.types import CollectionConfig

    db = Database(tmp / "sampler")
    try:
        for i in range(10):
            col = db.create_collection(f"c{i}", CollectionConfig(dim=64))
            col.upsert(list(range(1000)), clustered(1000, 64, seed=i))
        metrics = Metrics(db, Gate(64, 64, ThreadPoolExecutor(1), 1))
        for method in ("Search/Search", "Points/Upsert", "Points/Get", "Collections/Get", "Points/Scroll"):
            for code in ("OK", "NOT_FOUND", "INVALID_ARGUMENT"):
                metrics.observe(method, code, 0.003)
        for code in ("OK", "NOT_FOUND", "PERMISSION_DENIED"):
            metrics.observe("Collections/List", code, 0.001)
        history = MetricsHistory(metrics, db)
        cost = {}
        for way in ("unwatched", "watched"):
            if way == "watched":
                history.series()
            started = time.thread_time()
            for _ in range(200):
                history._sample()
            cost[way] = (time.thread_time() - started) / 200
        return cost
    finally:
        db.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench console", description=__doc__)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    vectors = clustered(args.points, args.dim, seed=1)
    queries = clustered(500, args.dim, seed=2)
    with tempfile.TemporaryDirectory(prefix="lamina-bench-console-") as tmp:
        data = Path(tmp) / "data"
        with lamina.connect(str(data)) as db:
            col = db.create_collection("docs", dim=args.dim, segment_rows=10_000)
            for lo in range(0, args.points, 5_000):
                col.upsert(list(range(lo, lo + 5_000)), vectors[lo : lo + 5_000])
            col.optimize()
        runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
        for r in range(args.rounds):
            for way in WAYS if r % 2 == 0 else tuple(reversed(WAYS)):
                result = _run(data, way, queries, args.clients, args.seconds)
                runs[way].append(result)
                print(
                    f"round {r + 1}/{args.rounds} {way:8s} {result['qps']:8.0f} searches/s  "
                    f"p50 {result['p50']:.2f} ms  p99 {result['p99']:.2f} ms",
                    flush=True,
                )
        sampler = sampler_cost(Path(tmp))
    rows = []
    for way in WAYS:
        med = {k: float(np.median([x[k] for x in runs[way]])) for k in ("qps", "p50", "p99")}
        note = NOTES[way]
        rows.append(
            Row(
                system=way,
                task="gRPC search k=10",
                rate=med["qps"],
                unit="searches/s",
                p50_ms=med["p50"],
                p99_ms=med["p99"],
                note=f"{note}; median of {args.rounds}",
                extra={"runs": runs[way]},
            )
        )
    markdown = table(rows, {"gRPC search k=10": "off"})
    markdown += "\n\nmetrics sampler, CPU per sample (one every 2 s): " + ", ".join(
        f"{way} {seconds * 1e3:.2f} ms ({seconds / 2 * 100:.3f}% of a core)"
        for way, seconds in sampler.items()
    )
    print(markdown)
    path = save("console", rows, {**vars(args), "sampler_seconds_per_sample": sampler}, markdown)
    print(f"saved {path}")
    return 0
