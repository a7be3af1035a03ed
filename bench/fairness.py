"""A light client's latency while a heavy client floods one ``lamina serve``, and what the
largest requests the server still takes cost.

``python -m bench fairness --duration 20`` starts a server process (``--workers``), loads
``--points`` points with unindexed payloads, then measures:

* ``quiet``: a light client's trivial calls (Count without filter, Search k=10) alone;
* ``flood``: the same while a heavy client (another connection, ``--heavy`` threads) sends
  Counts whose filter costs just under ``max_filter_checks`` (50 clauses over every
  unindexed payload) with a 10 s deadline, back to back;
* the largest accepted requests: the filter at the limit (and one just past it, refused),
  and the largest SearchBatch with vectors and payloads under the 64 MiB message limit
  (and one just past it, refused), with their time and the server's resident memory.

Latency ratios flood/quiet are measured in the same run (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import lamina
from bench.common import RESULTS, machine, rss_mb
from lamina.config import DEFAULT_LIMITS
from lamina.engine.bounds import HIT_OVERHEAD
from lamina.testing import ServerProcess

COLLECTION = "fair"


def _load(client: lamina.Client, points: int, dim: int) -> lamina.Collection:
    col = client.create_collection(COLLECTION, dim=dim)
    rng = np.random.default_rng(0)
    for lo in range(0, points, 10_000):
        ids = list(range(lo, min(points, lo + 10_000)))
        payloads = [{"tag": f"t{i}", "n": i, "body": f"document {i} " + "x" * 80} for i in ids]
        col.upsert(ids, rng.standard_normal((len(ids), dim)).astype(np.float32), payloads)
    return col


def _light(col: lamina.Collection, dim: int, seconds: float) -> np.ndarray:
    """Latencies (ms) of a light client's trivial calls, back to back, for ``seconds``."""
    q = np.ones(dim, np.float32)
    lat: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            if i % 2:
                col.count()
            else:
                col.search(q, k=10, with_payload=False)
        except lamina.DeadlineExceeded:
            pass  # counted at its full wait: the light client's deadline (30 s)
        lat.append((time.perf_counter() - started) * 1000)
        i += 1
    return np.asarray(lat)


def _timed(fn: Any) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        fn()
        outcome = "ok"
    except lamina.LaminaError as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:110]}"
    return time.perf_counter() - started, outcome


def run(points: int, dim: int, duration: float, workers: int, heavy_threads: int) -> dict[str, Any]:
    limits = DEFAULT_LIMITS
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", "--workers", str(workers))
        pid = server.proc.pid
        try:
            with lamina.connect(server.address, timeout=120) as admin:
                _load(admin, points, dim)
            report: dict[str, Any] = {"points": points, "dim": dim, "workers": workers}
            with lamina.connect(server.address, timeout=30) as light:
                col = light.get_collection(COLLECTION)
                _light(col, dim, 2.0)  # warm-up
                quiet = _light(col, dim, duration)
                clauses = max(1, limits.max_filter_checks // points)
                heavy_filter = {"$or": [{"tag": f"nope-{i}"} for i in range(clauses)]}
                stop = threading.Event()
                outcomes: dict[str, int] = {}
                lock = threading.Lock()
                with lamina.connect(server.address, timeout=10, retries=0) as heavy:
                    hcol = heavy.get_collection(COLLECTION)

                    def flood() -> None:
                        while not stop.is_set():
                            _, outcome = _timed(lambda: hcol.count(heavy_filter))
                            with lock:
                                key = outcome.split(":")[0]
                                outcomes[key] = outcomes.get(key, 0) + 1

                    threads = [threading.Thread(target=flood) for _ in range(heavy_threads)]
                    for t in threads:
                        t.start()
                    time.sleep(2.0)
                    flooded = _light(col, dim, duration)
                    rss_flood = rss_mb(pid)
                    stop.set()
                    for t in threads:
                        t.join(30)
                report["light"] = {
                    name: {
                        "calls": int(lat.size),
                        "p50_ms": float(np.percentile(lat, 50)),
                        "p99_ms": float(np.percentile(lat, 99)),
                        "max_ms": float(lat.max()),
                    }
                    for name, lat in (("quiet", quiet), ("flood", flooded))
                }
                report["heavy_outcomes"] = outcomes
                report["heavy_filter_clauses"] = clauses
                report["rss_during_flood_mb"] = rss_flood

                # the largest requests still taken, and just past them
                rss0 = rss_mb(pid)
                at_limit, at_outcome = _timed(lambda: col.count(heavy_filter))
                over = {"$or": [{"tag": f"nope-{i}"} for i in range(clauses + 1)]}
                past, past_outcome = _timed(lambda: col.count(over))
                per_hit = HIT_OVERHEAD + 4 * dim + 8 + (8 + 110)  # payloads here are ~110 bytes of JSON
                k = 1_000
                nq = min(limits.max_query_batch, int(limits.max_message_bytes * 0.9 // (per_hit * k)))
                queries = np.random.default_rng(1).standard_normal((nq, dim)).astype(np.float32)
                with lamina.connect(server.address, timeout=300) as big:
                    bcol = big.get_collection(COLLECTION)
                    batch_s, batch_outcome = _timed(
                        lambda: bcol.search_batch(queries, k=k, with_vector=True, with_payload=True)
                    )
                    rss_batch = rss_mb(pid)
                    more = np.concatenate([queries, queries[: max(1, nq // 5)]])
                    refused_s, refused_outcome = _timed(
                        lambda: bcol.search_batch(more, k=k, with_vector=True, with_payload=True)
                    )
                report["largest"] = {
                    "filter_at_limit": {
                        "checks": clauses * points,
                        "seconds": at_limit,
                        "outcome": at_outcome,
                    },
                    "filter_past_limit": {"seconds": past, "outcome": past_outcome},
                    "search_batch": {
                        "queries": nq,
                        "k": k,
                        "estimated_mib": nq * k * per_hit / 2**20,
                        "seconds": batch_s,
                        "outcome": batch_outcome,
                        "server_rss_before_mb": rss0,
                        "server_rss_after_mb": rss_batch,
                    },
                    "search_batch_past_limit": {
                        "queries": int(more.shape[0]),
                        "seconds": refused_s,
                        "outcome": refused_outcome,
                    },
                }
        finally:
            server.terminate()
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fairness", description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase (default 20)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--heavy", type=int, default=16, help="threads of the heavy client")
    args = parser.parse_args(argv)
    report = run(args.points, args.dim, args.duration, args.workers, args.heavy)
    quiet, flood = report["light"]["quiet"], report["light"]["flood"]
    print("| phase | light calls | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for name, row in report["light"].items():
        print(
            f"| {name} | {row['calls']:,} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['max_ms']:.1f} |"
        )
    print(
        f"\nflood/quiet p99: {flood['p99_ms'] / quiet['p99_ms']:.1f}x; heavy outcomes {report['heavy_outcomes']}"
    )
    for name, row in report["largest"].items():
        print(f"{name}: {json.dumps(row)}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y-%m-%d')}-fairness.json"
    path.write_text(json.dumps({"benchmark": "fairness", "machine": machine(), **report}, indent=2))
    print(f"wrote {path}")
    return 0
