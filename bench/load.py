"""Bounded loopback load test: many concurrent clients against one ``lamina serve``.

``python -m bench load --clients 32 --duration 180`` (CI runs 30 seconds through
tests/test_load.py). Each client loops over a 90% search / 10% upsert mix (a tenth of
the searches carry a payload filter); upserts replace points of a fixed id space, so
the data size stays constant and memory should too, while the optimizer keeps sealing
and compacting. Every interval prints throughput, search p50/p99, errors and the
server's resident memory; the summary checks the targets: 0 errors, p99 stable over
the run, memory growth under 10% after warm-up.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import lamina
from bench.common import RESULTS, _pyplot, machine, rss_mb
from lamina.testing import ServerProcess

COLLECTION = "load"


@dataclass
class Interval:
    """One reporting interval of the run."""

    t: float  # seconds since the start of the run, at the end of the interval
    ops: int
    qps: float
    search_p50_ms: float
    search_p99_ms: float
    upsert_p99_ms: float
    errors: int
    rss_mb: float
    segments: int  # sealed segments of the collection at the end of the interval
    mutable_points: int


@dataclass
class Report:
    clients: int
    duration_s: float
    points: int
    dim: int
    ops: int = 0
    ops_per_s: float = 0.0
    search_p50_ms: float = 0.0
    search_p99_ms: float = 0.0
    upsert_p50_ms: float = 0.0
    upsert_p99_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # every exception a client saw, by type
    clients_finished: int = 0  # clients that ran until told to stop (any other ended early)
    rss_after_warmup_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_growth: float = 0.0  # fraction, end vs after warm-up
    p99_spread: float = 0.0  # worst interval p99 / median interval p99 (after warm-up)
    intervals: list[Interval] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


class Recorder:
    """Latencies and errors from every client thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.search: list[float] = []
        self.upsert: list[float] = []
        self.errors: Counter[str] = Counter()
        self.finished = 0  # clients that ran until ``stop`` and closed cleanly

    def take(self) -> tuple[list[float], list[float], Counter[str]]:
        with self.lock:
            out = (self.search, self.upsert, self.errors)
            self.search, self.upsert, self.errors = [], [], Counter()
        return out


def _client(address: str, data: np.ndarray, seed: int, stop: threading.Event, rec: Recorder) -> None:
    """One client thread: every exception is counted (a request's, or one that ends the
    thread, as ``died: <type>``), and ``rec.finished`` counts threads that ran to the end."""
    try:
        _requests(address, data, seed, stop, rec)
    except Exception as exc:  # counted, so the run's error check sees a client that died
        with rec.lock:
            rec.errors[f"died: {type(exc).__name__}"] += 1
        return
    with rec.lock:
        rec.finished += 1


def _requests(address: str, data: np.ndarray, seed: int, stop: threading.Event, rec: Recorder) -> None:
    rng = np.random.default_rng(seed)
    n, dim = data.shape
    with lamina.connect(address, timeout=30) as client:
        col = client.get_collection(COLLECTION)
        while not stop.is_set():
            roll = rng.random()
            started = time.perf_counter()
            try:
                if roll < 0.9:
                    query = data[int(rng.integers(n))] + 0.05 * rng.standard_normal(dim).astype(np.float32)
                    flt = {"group": int(rng.integers(10))} if roll < 0.09 else None
                    col.search(query, k=10, filter=flt)
                    kind = "search"
                else:
                    ids = rng.integers(0, n, 20)
                    ids = np.unique(ids)
                    vectors = data[ids] + 0.01 * rng.standard_normal((ids.size, dim)).astype(np.float32)
                    col.upsert(
                        ids.tolist(),
                        vectors,
                        [{"group": int(i) % 10, "v": int(rng.integers(1 << 30))} for i in ids],
                    )
                    kind = "upsert"
            except Exception as exc:  # every failure counts, not only LaminaError
                with rec.lock:
                    rec.errors[type(exc).__name__] += 1
                continue
            ms = (time.perf_counter() - started) * 1000
            with rec.lock:
                (rec.search if kind == "search" else rec.upsert).append(ms)


def run(
    clients: int = 32,
    duration: float = 180.0,
    points: int = 20_000,
    dim: int = 64,
    interval: float = 5.0,
    warmup: float | None = None,
    log: Any = print,
    processes: int = 1,
) -> Report:
    """Start a server (``lamina serve --processes processes``), load ``points`` vectors, run
    the mix for ``duration`` seconds."""
    warmup = duration * 0.2 if warmup is None else warmup
    rng = np.random.default_rng(0)
    data = rng.standard_normal((points, dim)).astype(np.float32)
    report = Report(clients, duration, points, dim)
    with tempfile.TemporaryDirectory(prefix="lamina-load-") as tmp:
        server = ServerProcess(Path(tmp) / "data", "--processes", str(processes))
        try:
            with lamina.connect(server.address, timeout=120) as client:
                col = client.create_collection(
                    COLLECTION, dim=dim, metric="cosine", segment_rows=5000, payload_index={"group": "int"}
                )
                for lo in range(0, points, 5000):
                    ids = list(range(lo, min(points, lo + 5000)))
                    col.upsert(ids, data[ids], [{"group": i % 10, "v": 0} for i in ids])
                col.optimize()
            rec = Recorder()
            stop = threading.Event()
            threads = [
                threading.Thread(target=_client, args=(server.address, data, seed, stop, rec), daemon=True)
                for seed in range(clients)
            ]
            started = time.perf_counter()
            for t in threads:
                t.start()
            all_search: list[float] = []
            all_upsert: list[float] = []
            errors: Counter[str] = Counter()
            log(
                f"{'t (s)':>6} {'ops/s':>8} {'search p50':>11} {'search p99':>11} {'upsert p99':>11} "
                f"{'errors':>7} {'RSS MB':>8} {'segments':>9} {'mutable':>8}"
            )
            monitor = lamina.connect(server.address, timeout=60)
            watched = monitor.get_collection(COLLECTION)
            while (elapsed := time.perf_counter() - started) < duration:
                time.sleep(min(interval, duration - elapsed))
                search, upsert, errs = rec.take()
                all_search += search
                all_upsert += upsert
                errors += errs
                ops = len(search) + len(upsert)
                status = watched.info().status
                row = Interval(
                    t=round(time.perf_counter() - started, 1),
                    ops=ops,
                    qps=ops / interval,
                    search_p50_ms=float(np.percentile(search, 50)) if search else 0.0,
                    search_p99_ms=float(np.percentile(search, 99)) if search else 0.0,
                    upsert_p99_ms=float(np.percentile(upsert, 99)) if upsert else 0.0,
                    errors=sum(errs.values()),
                    rss_mb=rss_mb(server.proc.pid, children=True),
                    segments=status.segments,
                    mutable_points=status.mutable_points,
                )
                report.intervals.append(row)
                log(
                    f"{row.t:>6.0f} {row.qps:>8.0f} {row.search_p50_ms:>9.1f}ms {row.search_p99_ms:>9.1f}ms "
                    f"{row.upsert_p99_ms:>9.1f}ms {row.errors:>7} {row.rss_mb:>8.0f} {row.segments:>9} "
                    f"{row.mutable_points:>8}"
                )
            stop.set()
            for t in threads:
                t.join(60)
            monitor.close()
            search, upsert, errs = rec.take()  # the requests that finished after the last interval
            all_search += search
            all_upsert += upsert
            errors += errs
            report.clients_finished = rec.finished  # a thread still running after 60 s is not counted
        finally:
            server.terminate()
    report.ops = len(all_search) + len(all_upsert)
    report.ops_per_s = report.ops / duration
    report.search_p50_ms, report.search_p99_ms = (float(np.percentile(all_search, q)) for q in (50, 99))
    report.upsert_p50_ms, report.upsert_p99_ms = (float(np.percentile(all_upsert, q)) for q in (50, 99))
    report.errors = dict(errors)
    steady = [i for i in report.intervals if i.t > warmup] or report.intervals
    report.rss_after_warmup_mb = steady[0].rss_mb
    report.rss_end_mb = report.intervals[-1].rss_mb
    report.rss_growth = report.rss_end_mb / report.rss_after_warmup_mb - 1
    p99s = [i.search_p99_ms for i in steady]
    report.p99_spread = max(p99s) / float(np.median(p99s))
    return report


def summary(report: Report) -> str:
    return (
        f"{report.clients} clients, {report.duration_s:.0f} s, {report.points:,} x {report.dim}: "
        f"{report.ops_per_s:,.0f} ops/s; search p50 {report.search_p50_ms:.1f} ms, p99 {report.search_p99_ms:.1f} ms; "
        f"upsert p50 {report.upsert_p50_ms:.1f} ms, p99 {report.upsert_p99_ms:.1f} ms; errors {report.error_count}; "
        f"{report.clients_finished}/{report.clients} clients ran to the end; "
        f"server RSS {report.rss_after_warmup_mb:.0f} -> {report.rss_end_mb:.0f} MB ({report.rss_growth:+.1%} after warm-up); "
        f"worst interval p99 / median interval p99 = {report.p99_spread:.2f}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds (default 180)")
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=1, help="lamina serve --processes (default 1)")
    args = parser.parse_args(argv)
    report = run(args.clients, args.duration, args.points, args.dim, args.interval, processes=args.processes)
    print("\n" + summary(report))
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{time.strftime('%Y-%m-%d')}-load"
    stem.with_suffix(".json").write_text(
        json.dumps({"benchmark": "load", "machine": machine(), **asdict(report)}, indent=2)
    )
    plt = _pyplot()
    if plt is not None:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        t = [i.t for i in report.intervals]
        ax1.plot(t, [i.search_p50_ms for i in report.intervals], "-o", label="search p50", markersize=3)
        ax1.plot(t, [i.search_p99_ms for i in report.intervals], "-o", label="search p99", markersize=3)
        ax1.plot(t, [i.upsert_p99_ms for i in report.intervals], "--", label="upsert p99")
        ax1.set_xlabel("seconds")
        ax1.set_ylabel("ms")
        ax1.legend()
        ax1.grid(alpha=0.3)
        ax2.plot(t, [i.rss_mb for i in report.intervals], "-o", markersize=3, color="#b5544a")
        ax2.set_xlabel("seconds")
        ax2.set_ylabel("server RSS (MB)")
        ax2.set_ylim(bottom=0)
        ax2.grid(alpha=0.3)
        fig.suptitle(f"{report.clients} clients, 90% search / 10% upsert, {report.ops_per_s:,.0f} ops/s")
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=90)
    print(f"wrote {stem}.json and .png")
    return 0
