"""Where a search's time goes while an ingest runs: a diagnostic beside ``bench scale``.

    python -m scripts.ingest_trace PREBUILT DATA [SECONDS]     (from the repository root)

``PREBUILT`` is a data directory holding an indexed collection ``scale`` (for instance 100,000
manifold rows loaded with defaults and optimized), copied for the run; ``DATA`` the manifold
folder (``base.npy``, ``queries.npy``). It measures single searches (k 10, ef 32) for 10 s idle,
then for ``SECONDS`` (20) while a thread upserts 1,000-row batches of new ids at ``RATE`` rows/s,
and prints: p50 / p99 / p99.9 idle and during the ingest, the searches' own CPU time (the rest is
waiting for the GIL or a core), the slowest 1% and which of them overlapped an upsert or a growth
of the mutable arrays, p99 per 2 s and the optimizer's log lines. Knobs (environment):
``RATE`` (4000), ``OTHER=1`` (write into another collection: the searched one keeps no tail),
``NOOPT=1`` (no seals or builds in the searched collection), ``SWITCH=s``
(``sys.setswitchinterval``), plus Lamina's own (``LAMINA_BUILD_NICE``, ...). Session 24's figures
from it are in docs/scale.md ("Searches while an ingest runs"). It reaches into the engine's
private attributes: a diagnostic, not an API.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

import lamina
from bench.scale import steady_upserts


def _overlapping(searches: np.ndarray, windows: list[tuple[float, float]]) -> int:
    return sum(1 for t0, d, *_ in searches if any(a < t0 + d and t0 < b for a, b in windows))


def main(prebuilt: str, data: str, seconds: float) -> None:
    if os.environ.get("SWITCH"):
        sys.setswitchinterval(float(os.environ["SWITCH"]))
    rate = float(os.environ.get("RATE", "4000"))
    base = np.ascontiguousarray(np.load(f"{data}/base.npy"), dtype=np.float32)
    queries = np.ascontiguousarray(np.load(f"{data}/queries.npy")[:200], dtype=np.float32)
    events: list[tuple[float, str]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            events.append((time.perf_counter(), record.getMessage()))

    logging.getLogger("lamina").addHandler(Collect())
    logging.getLogger("lamina").setLevel(logging.INFO)
    scratch = tempfile.mkdtemp()
    shutil.copytree(prebuilt, f"{scratch}/db")
    db = lamina.connect(f"{scratch}/db")
    col = db.get_collection("scale")
    engine: Any = col._transport.db.get_collection("scale")  # type: ignore[attr-defined]
    growths: list[tuple[float, float]] = []
    reserve = engine._reserve

    def traced_reserve(rows: int) -> None:
        t0, capacity = time.perf_counter(), engine._matrix.shape[0]
        reserve(rows)
        if engine._matrix.shape[0] != capacity:
            growths.append((t0, time.perf_counter()))

    engine._reserve = traced_reserve
    if os.environ.get("NOOPT"):
        engine._optimize_step = lambda: False
    target = (
        db.create_collection("other", dim=base.shape[1], metric="cosine") if os.environ.get("OTHER") else col
    )

    def search(q: np.ndarray) -> None:
        col.search(q, 10, with_payload=False, ef=32)

    for i in range(2_000):
        search(queries[i % 200])

    def run(duration: float) -> np.ndarray:
        out = []
        end = time.perf_counter() + duration
        i = 0
        while time.perf_counter() < end:
            t0, c0 = time.perf_counter(), time.thread_time()
            search(queries[i % 200])
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
            snap = engine._published
            out.append((t0, wall, cpu, snap.live.size, len(snap.segments)))
            i += 1
        return np.array(out)

    idle = run(10.0)
    stop = threading.Event()
    upserts: list[tuple[float, float]] = []
    n = base.shape[0]
    writer = threading.Thread(target=steady_upserts, args=(target, base, rate, n, stop, upserts), daemon=True)
    writer.start()
    began = time.perf_counter()
    busy = run(seconds)
    stop.set()
    writer.join()
    status = col.info().status
    ms = 1e3
    i99, b99 = np.percentile(idle[:, 1], 99) * ms, np.percentile(busy[:, 1], 99) * ms
    print(
        f"idle p50 {np.percentile(idle[:, 1], 50) * ms:.2f} p99 {i99:.2f} ms | during the ingest p50 "
        f"{np.percentile(busy[:, 1], 50) * ms:.2f} p99 {b99:.2f} p99.9 {np.percentile(busy[:, 1], 99.9) * ms:.2f} "
        f"ms, {b99 / i99:.2f}x | searches {len(idle)} / {len(busy)} | rows {len(upserts) * 1_000:,}, "
        f"tail {status.mutable_points:,}, segments {status.segments}, load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"own CPU time p50 / p99: idle {np.percentile(idle[:, 2], 50) * ms:.2f} / "
        f"{np.percentile(idle[:, 2], 99) * ms:.2f} ms, during {np.percentile(busy[:, 2], 50) * ms:.2f} / "
        f"{np.percentile(busy[:, 2], 99) * ms:.2f} ms"
    )
    slowest = busy[np.argsort(busy[:, 1])[-max(1, len(busy) // 100) :]]
    print(
        f"slowest 1% ({len(slowest)}): wall {slowest[:, 1].mean() * ms:.2f} ms, own CPU "
        f"{slowest[:, 2].mean() * ms:.2f} ms; overlapping an upsert {_overlapping(slowest, upserts)}, a growth "
        f"{_overlapping(slowest, growths)}; upsert p50 {np.median([b - a for a, b in upserts]) * ms:.1f} ms"
    )
    for name, col_at in (("tail rows", 3), ("segments", 4)):
        values = np.unique(slowest[:, col_at] // (5_000 if col_at == 3 else 1))
        print(
            f"slowest 1% by {name}:",
            " ".join(
                f"{int(v)}:{int(np.sum(slowest[:, col_at] // (5_000 if col_at == 3 else 1) == v))}/"
                f"{int(np.sum(busy[:, col_at] // (5_000 if col_at == 3 else 1) == v))}"
                for v in values
            ),
        )
    second = (busy[:, 0] - began).astype(int)
    per = [busy[(second >= s) & (second < s + 2), 1] for s in range(0, int(seconds), 2)]
    print("p99 per 2 s (ms):", " ".join(f"{np.percentile(p, 99) * ms:.1f}" if p.size else "-" for p in per))
    for t, message in events:
        if t >= began:
            print(f"  +{t - began:6.2f} s {message[:110]}")
    db.close()
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 20.0)
