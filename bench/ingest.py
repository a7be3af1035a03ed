"""Bulk ingest: ``lamina ingest`` against a plain SDK loop, embedded and over gRPC.

``python -m bench ingest`` (1,000,000 x 128 by default; ``--rows``, ``--dim``).

The vectors are written once to an .npy file. Each system loads all of them into a new
default collection (cosine, HNSW, 100,000-row segments; the optimizer seals and indexes
segments in the background while the load runs, as it would for a user) in a fresh data
directory or a fresh ``lamina serve`` process:

* ``sdk loop``: ``col.upsert`` of 1,000 rows at a time, one thread, the way a user's script does it;
* ``async sdk``: ``lamina.connect_async``, 1,000-row upserts, ``--parallel`` in flight;
* ``lamina ingest``: the CLI with its defaults: batches of 1,000, 2 in flight embedded and 4 to a
  server (``--parallel`` sets both), progress bar and checkpoint.

Rate = rows / seconds from the first upsert until the last one is acknowledged (every
row durable). The CLI reports that from its own clock; its process wall time (start-up,
reading, closing) is given beside it. Ratios are against the SDK loop on the same target.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import lamina
from bench.common import RESULTS, Row, plot, save, table
from lamina.testing import ServerProcess

BATCH = 1_000


def make_file(path: Path, rows: int, dim: int, seed: int = 0) -> None:
    """Clustered float32 vectors written in blocks (the file may be larger than wanted in memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for lo in range(0, rows, 100_000):
        n = min(100_000, rows - lo)
        out[lo : lo + n] = centres[rng.integers(0, 256, n)] + 0.3 * rng.standard_normal((n, dim))
    out.flush()
    del out


def sdk_loop(target: str, vectors: np.ndarray) -> float:
    """Seconds for a one-thread loop of 1,000-row upserts to be acknowledged."""
    with lamina.connect(target) as db:
        col = db.create_collection("bench", dim=vectors.shape[1])
        started = time.perf_counter()
        for lo in range(0, vectors.shape[0], BATCH):
            col.upsert(list(range(lo, lo + BATCH)), vectors[lo : lo + BATCH])
            if lo % 100_000 == 0:
                print(f"  sdk loop: {lo:,} rows", file=sys.stderr, flush=True)
        return time.perf_counter() - started


def async_sdk(target: str, vectors: np.ndarray, parallel: int) -> float:
    """Seconds for the async SDK with ``parallel`` upserts in flight."""

    async def run() -> float:
        async with await lamina.connect_async(target) as db:
            col = await db.create_collection("bench", dim=vectors.shape[1])
            gate = asyncio.Semaphore(parallel)

            async def one(lo: int) -> None:
                async with gate:
                    await col.upsert(list(range(lo, lo + BATCH)), vectors[lo : lo + BATCH])

            started = time.perf_counter()
            await asyncio.gather(*(one(lo) for lo in range(0, vectors.shape[0], BATCH)))
            return time.perf_counter() - started

    return asyncio.run(run())


def cli(target: str, path: Path, parallel: int | None) -> tuple[float, float]:
    """(seconds the CLI reports for its upserts, process wall seconds)."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "lamina", "ingest", str(path), "-c", "bench", "-t", target]
    if parallel is not None:
        cmd += ["--parallel", str(parallel)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"lamina ingest failed: {done.stderr[-2000:]}")
    found = re.search(r"\(([\d.]+) s, [\d,]+ points/s\)", done.stderr)
    assert found, done.stderr[-500:]
    return float(found.group(1)), wall


def run(rows: int, dim: int, parallel: int | None, work: Path) -> list[Row]:
    path = work / f"vectors-{rows}x{dim}.npy"
    print(f"writing {rows:,} x {dim} vectors to {path}", file=sys.stderr)
    make_file(path, rows, dim)
    vectors = np.load(path, mmap_mode="r")
    results: list[Row] = []

    def record(system: str, task: str, seconds: float, note: str = "", **extra: Any) -> None:
        results.append(
            Row(system, task, rows / seconds, "rows/s", note=note, extra={"seconds": seconds, **extra})
        )
        print(
            f"  {task:9} {system:32} {rows / seconds:10,.0f} rows/s  ({seconds:.1f} s) {note}",
            file=sys.stderr,
        )

    for place in ("embedded", "server"):
        for system in ("sdk loop", "async sdk", "lamina ingest"):
            data = work / f"{place}-{system.replace(' ', '-')}"
            server = ServerProcess(data) if place == "server" else None
            target = server.address if server else str(data)
            try:
                if system == "sdk loop":
                    record(system, place, sdk_loop(target, vectors))
                elif system == "async sdk":
                    record(
                        f"{system}, {parallel or 4} in flight",
                        place,
                        async_sdk(target, vectors, parallel or 4),
                    )
                else:
                    in_flight = parallel or (2 if place == "embedded" else 4)
                    seconds, wall = cli(target, path, parallel)
                    label = f"{system}, {in_flight} in flight"
                    record(label, place, seconds, f"process wall {wall:.1f} s", wall=wall)
            finally:
                if server:
                    server.terminate()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument(
        "--parallel",
        type=int,
        help="batches in flight (async SDK: 4; CLI: its default, 2 embedded / 4 server)",
    )
    parser.add_argument("--work", help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        rows = run(args.rows, args.dim, args.parallel, Path(tmp))
    baseline = {"embedded": "sdk loop", "server": "sdk loop"}
    markdown = table(rows, baseline)
    print(markdown)
    params = {"rows": args.rows, "dim": args.dim, "parallel": args.parallel, "batch": BATCH}
    json_path = save("ingest", rows, params, markdown)
    png = plot("ingest", rows, ["embedded", "server"])
    print(f"wrote {json_path}" + (f" and {png}" if png else ""), file=sys.stderr)
    print(f"(results folder: {RESULTS})", file=sys.stderr)
    return 0
