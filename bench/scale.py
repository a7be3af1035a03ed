"""How search cost grows with the size of a collection: Lamina with default settings against one
raw hnswlib graph and one faiss HNSW graph over the same data, at several sizes.

``python -m bench scale`` (N = 100,000 and 300,000 x 384; ``--sizes 100000,300000,1000000`` or
``--with-1m`` for more). The data is the manifold of real MiniLM embeddings
(``../shared/data/make_manifold.py``: real geometry at any N, the real held-out queries, exact
ground truth), generated on demand into ``--data`` (never committed). ``--synthetic`` uses small
clustered vectors instead: for the smoke test only (on them recall means little at scale).

Every (system, N) runs in its own process (its memory is its own). Lamina is used as a new user
would: ``create_collection(dim, metric="cosine")`` with every other setting at its default, points
upserted in batches of 5,000, no ``optimize()`` call: the run waits until the background optimizer
is idle (time until indexed, from the last acknowledged write). hnswlib and faiss build one graph
with M = 16 and ef_construction = 200 (Lamina's defaults) using every core. Then, for each system:
recall@10 against exact ground truth and single-query QPS (one thread, one query per call), p50 /
p99, at each ef of ``EF_SWEEP``; the table reports the narrowest ef reaching recall@10 >= 0.95.
Resident memory is the growth of the process over its baseline with the data loaded; disk is the
size of what the system saved. Lamina also reports its reopen time (open + first search) and its
search p99 while a writer upserts new points at a steady rate, against its idle p99. The load
average is recorded with every figure (the machine is shared: compare ratios within a run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, clustered, machine
from bench.peers import EF_CONSTRUCTION, EF_SWEEP, K, M, folder_mb, resident_mb

MAKE_MANIFOLD = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "make_manifold.py"
SYSTEMS = ["lamina", "hnswlib", "faiss"]
BATCH = 5_000
TARGET_RECALL = 0.95
DEFAULT_SIZES = [100_000, 300_000]
#: ingest rates (rows/s) of the p99-during-ingest phases: one an index build on 2 cores keeps
#: up with (the tail stays near a seal's size), one it does not (a bulk load: the tail grows)
DEFAULT_RATES = [1_000, 4_000]


# ------------------------------------------------------------------ data
def dataset(data: Path, n: int, synthetic: bool) -> Path:
    """The folder holding ``base.npy``, ``queries.npy`` and ``gt.npy`` (exact top ids) for ``n``
    points, generated if missing."""
    folder = data / (f"synthetic-{n}" if synthetic else f"manifold-{n}")
    if (folder / "gt.npy").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if synthetic:
        base = clustered(n, 48, seed=1, clusters=20)
        queries = clustered(60, 48, seed=2, clusters=20)
        gt = np.argsort(-(queries @ base.T), axis=1)[:, :K]
        np.save(folder / "base.npy", base)
        np.save(folder / "queries.npy", queries)
        np.save(folder / "gt.npy", gt)
        return folder
    if not MAKE_MANIFOLD.exists():
        raise SystemExit(f"{MAKE_MANIFOLD} is missing (../shared/data); use --synthetic for a smoke run")
    print(f"generating {n:,} manifold points into {folder} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(MAKE_MANIFOLD), str(n), str(folder)], check=True)
    return folder


def _load(folder: Path, queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = np.ascontiguousarray(np.load(folder / "base.npy"), dtype=np.float32)
    qs = np.ascontiguousarray(np.load(folder / "queries.npy")[:queries], dtype=np.float32)
    gt = np.load(folder / "gt.npy")[:queries, :K]
    return base, qs, gt


# ------------------------------------------------------------------ measuring
#: timed passes over the queries at each ef: QPS is the fastest pass's (the steady state a server
#: reaches, as ann-benchmarks reports its best run), p50 / p99 over every pass. One pass of 200
#: queries varied by 15% from run to run on this 2-core machine (session 25)
PASSES = 3


def sweep(search: Any, set_ef: Any, queries: np.ndarray, gt: np.ndarray) -> list[dict[str, Any]]:
    """recall@10, QPS (1 thread, 1 query per call; the fastest of ``PASSES`` passes), p50 / p99
    at each ef of the sweep; stops after the first ef reaching recall 0.99 (wider ones only cost
    more)."""
    curve = []
    for ef in EF_SWEEP:
        set_ef(ef)
        for q in queries[:20]:  # warm the caches / pages the walk touches
            search(q)
        lat = np.empty((PASSES, queries.shape[0]))
        walls = []
        hits = 0
        for p in range(PASSES):
            found = []
            began = time.perf_counter()
            for i, q in enumerate(queries):
                t0 = time.perf_counter()
                found.append(search(q))
                lat[p, i] = time.perf_counter() - t0
            walls.append(time.perf_counter() - began)
            if p == 0:  # the answers do not change between passes: recall once, outside the clock
                hits = sum(len(set(f[:K]) & set(gt[i].tolist())) for i, f in enumerate(found))
        curve.append(
            {
                "ef": ef,
                "recall": hits / (K * queries.shape[0]),
                "qps": queries.shape[0] / min(walls),
                "qps_passes": [round(queries.shape[0] / w, 1) for w in walls],
                "p50_ms": float(np.percentile(lat, 50) * 1000),
                "p99_ms": float(np.percentile(lat, 99) * 1000),
                "load": os.getloadavg()[0],
            }
        )
        if curve[-1]["recall"] >= 0.99:
            break
    return curve


def qps_at_target(curve: list[dict[str, Any]]) -> float | None:
    """QPS at exactly recall ``TARGET_RECALL``, interpolated (log QPS linear in recall) between
    the two efs of the sweep around it: the measured ef points jump by 1.5-2x in QPS, so which
    side of 0.95 one graph's ef 32 falls on (0.946 or 0.962 for two builds of the same data)
    would otherwise decide a ratio. The first point's QPS when it already reaches it; None when
    no point does."""
    for below, above in itertools.pairwise(curve):
        if below["recall"] < TARGET_RECALL <= above["recall"]:
            t = (TARGET_RECALL - below["recall"]) / (above["recall"] - below["recall"])
            return float(np.exp((1 - t) * np.log(below["qps"]) + t * np.log(above["qps"])))
    reached = [c for c in curve if c["recall"] >= TARGET_RECALL]
    return float(reached[0]["qps"]) if reached else None


def chosen(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """The narrowest ef reaching the target recall (else the best recall measured)."""
    return next((c for c in curve if c["recall"] >= TARGET_RECALL), max(curve, key=lambda c: c["recall"]))


def _memory() -> float:
    anon, file = resident_mb()
    return anon + file


def worker(
    system: str, folder: Path, queries: int, work: Path, ingest_s: float, rates: list[int] = DEFAULT_RATES
) -> dict[str, Any]:
    base, qs, gt = _load(folder, queries)
    n, dim = base.shape
    before = _memory()
    result: dict[str, Any] = {"system": system, "n": n, "dim": dim, "load_before": os.getloadavg()[0]}
    if system == "lamina":
        result |= _lamina(base, qs, gt, work, before, ingest_s, rates)
    elif system == "hnswlib":
        result |= _hnswlib(base, qs, gt, work, before)
    else:
        result |= _faiss(base, qs, gt, work, before)
    result["chosen"] = chosen(result["curve"])
    result["load_after"] = os.getloadavg()[0]
    return result


def _hnswlib(base: np.ndarray, qs: np.ndarray, gt: np.ndarray, work: Path, before: float) -> dict[str, Any]:
    import hnswlib

    began = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=base.shape[1])
    index.init_index(max_elements=base.shape[0], M=M, ef_construction=EF_CONSTRUCTION)
    index.add_items(base, np.arange(base.shape[0]), num_threads=os.cpu_count() or 1)
    build = time.perf_counter() - began
    curve = sweep(lambda q: index.knn_query(q, k=K, num_threads=1)[0][0].tolist(), index.set_ef, qs, gt)
    memory = _memory() - before
    path = work / "index.hnsw"
    index.save_index(str(path))

    return _one_graph(
        build, curve, memory, path, lambda: hnswlib.Index(space="ip", dim=base.shape[1]).load_index(str(path))
    )


def _faiss(base: np.ndarray, qs: np.ndarray, gt: np.ndarray, work: Path, before: float) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    began = time.perf_counter()
    index = faiss.IndexHNSWFlat(base.shape[1], M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(base)
    build = time.perf_counter() - began
    faiss.omp_set_num_threads(1)
    params = faiss.SearchParametersHNSW(efSearch=64)

    def set_ef(ef: int) -> None:
        params.efSearch = ef

    curve = sweep(lambda q: index.search(q[None, :], K, params=params)[1][0].tolist(), set_ef, qs, gt)
    memory = _memory() - before
    path = work / "index.faiss"
    faiss.write_index(index, str(path))

    return _one_graph(build, curve, memory, path, lambda: faiss.read_index(str(path)))


def _one_graph(
    build: float, curve: list[dict[str, Any]], memory: float, path: Path, reopen: Callable[[], object]
) -> dict[str, Any]:
    """The result of a raw library's one graph, built in ``build`` seconds and saved at
    ``path``; ``reopen`` loads it back (timed)."""
    began = time.perf_counter()
    reopen()
    return {
        "build_s": build,
        "indexed_s": build,
        "curve": curve,
        "memory_mb": memory,
        "disk_mb": folder_mb(path),
        "reopen_s": time.perf_counter() - began,
        "layout": "1 graph",
    }


def _wait_indexed(col: Any, timeout: float) -> tuple[float, Any]:
    """Seconds until the optimizer is idle with nothing pending (twice in a row), and the status."""
    began = time.perf_counter()
    quiet = 0
    while time.perf_counter() - began < timeout:
        status = col.info().status
        quiet = quiet + 1 if not status.optimizing else 0
        if quiet >= 3:
            return time.perf_counter() - began, status
        time.sleep(0.5)
    raise SystemExit(f"the optimizer was still busy after {timeout:.0f} s")


def _lamina(
    base: np.ndarray,
    qs: np.ndarray,
    gt: np.ndarray,
    work: Path,
    before: float,
    ingest_s: float,
    rates: list[int],
) -> dict[str, Any]:
    import lamina

    path = work / "lamina"
    db = lamina.connect(str(path))
    col = db.create_collection("scale", dim=base.shape[1], metric="cosine")
    n = base.shape[0]
    began = time.perf_counter()
    for lo in range(0, n, BATCH):
        col.upsert(list(range(lo, min(n, lo + BATCH))), base[lo : lo + BATCH])
    load = time.perf_counter() - began
    print(f"  lamina: loaded {n:,} in {load:.1f} s; waiting for the optimizer", file=sys.stderr, flush=True)
    indexed, status = _wait_indexed(col, timeout=max(600.0, n / 200))
    layout = f"{status.segments} segment(s), {status.mutable_points:,} mutable"
    print(f"  lamina: indexed after {indexed:.1f} s: {layout}", file=sys.stderr, flush=True)
    ef_now = [64]

    def search(q: np.ndarray) -> list[int]:
        return [int(h.id) for h in col.search(q, K, with_payload=False, ef=ef_now[0])]

    curve = sweep(search, lambda ef: ef_now.__setitem__(0, ef), qs, gt)
    memory = _memory() - before
    ef_now[0] = chosen(curve)["ef"]
    ingest: list[dict[str, Any]] = []
    # the idle p99 once, everything indexed; then each ingest phase from an idle optimizer (rows
    # a phase left below the seal size stay in the tail), the slower first
    idle = _p99(search, qs, min(10.0, ingest_s)) if ingest_s > 0 else (0.0, 0, 0.0)
    for rate in rates if ingest_s > 0 else []:
        _wait_indexed(col, timeout=max(600.0, n / 200))
        first_id = n + len(ingest) * 10**8
        ingest.append(_search_while_ingesting(col, search, base, qs, ingest_s, rate, first_id, idle))
    held = col.count()  # the ingest added points: disk is compared with the float32 of all held
    db.close()
    disk = folder_mb(path)
    began = time.perf_counter()
    db = lamina.connect(str(path))
    col = db.get_collection("scale")
    search(qs[0])
    reopen = time.perf_counter() - began
    db.close()
    return {
        "load_s": load,
        "build_s": indexed,
        "indexed_s": indexed,
        "curve": curve,
        "memory_mb": memory,
        "disk_mb": disk,
        "rows_held": held,
        "reopen_s": reopen,
        "layout": layout,
        "segments": status.segments,
        "ingest": ingest,
    }


def _p99(search: Any, qs: np.ndarray, duration: float) -> tuple[float, int, float]:
    """p99 latency (ms) of back-to-back single searches for ``duration`` seconds, their number,
    and the p99 of their own CPU time (ms; the gap to the latency is time spent waiting: for the
    GIL, for a core)."""
    lat, cpu = [], []
    end = time.perf_counter() + duration
    i = 0
    while time.perf_counter() < end:
        t0, c0 = time.perf_counter(), time.thread_time()
        search(qs[i % qs.shape[0]])
        lat.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        i += 1
    return float(np.percentile(lat, 99) * 1000), len(lat), float(np.percentile(cpu, 99) * 1000)


def steady_upserts(
    col: Any,
    base: np.ndarray,
    rate: float,
    first_id: int,
    stop: threading.Event,
    upserts: list[tuple[float, float]],
) -> None:
    """Upsert 1,000-row batches (the vectors of ``base``'s rows under new ids from ``first_id``)
    at ``rate`` rows a second until ``stop`` is set, appending each upsert's (start, end)
    ``time.perf_counter()`` to ``upserts``. (scripts/ingest_trace.py drives the same writer.)"""
    row, n = 0, base.shape[0]
    while not stop.is_set():
        t0 = time.perf_counter()
        lo = row % (n - 1_000)
        col.upsert(list(range(first_id + row, first_id + row + 1_000)), base[lo : lo + 1_000])
        upserts.append((t0, time.perf_counter()))
        row += 1_000
        stop.wait(max(0.0, 1_000 / rate - (time.perf_counter() - t0)))


def _search_while_ingesting(
    col: Any,
    search: Any,
    base: np.ndarray,
    qs: np.ndarray,
    seconds: float,
    rate: int,
    first_id: int,
    idle: tuple[float, int, float],
) -> dict[str, Any]:
    """Search p99 while a writer upserts new points (1,000 per batch, ``rate`` rows a second,
    the vectors of existing points under new ids from ``first_id``) for ``seconds``, against
    the ``idle`` p99 (and its search count) measured once, with everything indexed."""
    idle_p99, idle_count, idle_cpu = idle
    stop = threading.Event()
    upserts: list[tuple[float, float]] = []
    writer = threading.Thread(
        target=steady_upserts, args=(col, base, rate, first_id, stop, upserts), daemon=True
    )
    writer.start()
    busy, busy_count, busy_cpu = _p99(search, qs, seconds)
    stop.set()
    writer.join()
    return {
        "rate": rate,
        "idle_p99_ms": idle_p99,
        "ingest_p99_ms": busy,
        "ratio": busy / idle_p99,
        "idle_cpu_p99_ms": idle_cpu,
        "ingest_cpu_p99_ms": busy_cpu,
        "rows_per_s": len(upserts) * 1_000 / seconds,
        "searches": [idle_count, busy_count],
        "load": os.getloadavg()[0],
    }


def run_one(
    system: str, folder: Path, queries: int, ingest_s: float, limit: float, rates: list[int] = DEFAULT_RATES
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "bench", "scale", "--worker", system, "--work", tmp]
        cmd += ["--folder", str(folder), "--queries", str(queries), "--ingest-seconds", str(ingest_s)]
        cmd += ["--ingest-rates", ",".join(map(str, rates))]
        try:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {"system": system, "error": f"did not finish within the {limit:.0f} s limit"}
    if done.returncode != 0:
        return {"system": system, "error": f"failed (exit {done.returncode}), see its stderr above"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------ report
def markdown(results: list[dict[str, Any]], params: dict[str, Any]) -> str:
    head = (
        "| N | system | layout | load s | until indexed s | ef | recall@10 | QPS | vs hnswlib | "
        f"QPS at {TARGET_RECALL} interpolated (vs hnswlib) | p50 ms | "
        "p99 ms | RSS MB | disk MB | disk / float32 | reopen s | load avg |"
    )
    lines = [head, "|" + "---|" * 17]
    for n in params["sizes"]:
        ref = next(
            (r for r in results if r.get("n") == n and r["system"] == "hnswlib" and "error" not in r), None
        )
        for r in (r for r in results if r.get("n") == n):
            if "error" in r:
                lines.append(f"| {n:,} | {r['system']} | {r['error']} |" + " |" * 14)
                continue
            c = r["chosen"]
            ratio = f"{c['qps'] / ref['chosen']['qps']:.2f}x" if ref else "-"
            mine, theirs = qps_at_target(r["curve"]), qps_at_target(ref["curve"]) if ref else None
            interpolated = (
                "-" if mine is None else f"{mine:,.0f}" + (f" ({mine / theirs:.2f}x)" if theirs else "")
            )
            load = f"{r['load_s']:.1f}" if "load_s" in r else "-"
            # the float32 of the rows the system holds when its disk is measured (Lamina: after the ingest)
            raw_mb = r.get("rows_held", n) * r["dim"] * 4 / 2**20  # MiB, as folder_mb
            lines.append(
                f"| {n:,} | {r['system']} | {r['layout']} | {load} | {r['indexed_s']:.1f} | {c['ef']} | "
                f"{c['recall']:.3f} | {c['qps']:,.0f} | {ratio} | {interpolated} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | "
                f"{r['memory_mb']:,.0f} | {r['disk_mb']:,.0f} | {r['disk_mb'] / raw_mb:.2f}x | {r['reopen_s']:.2f} | "
                f"{r['load_before']:.1f}-{r['load_after']:.1f} |"
            )
    ingest = [r for r in results if r.get("ingest")]
    if ingest:
        lines += [
            "",
            "| N | ingest rows/s asked | idle p99 ms | p99 ms during ingest | ratio | search CPU p99 ms idle / "
            "ingest | rows/s written | load avg |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in ingest:
            for g in r["ingest"]:
                lines.append(
                    f"| {r['n']:,} | {g['rate']:,} | {g['idle_p99_ms']:.2f} | {g['ingest_p99_ms']:.2f} | "
                    f"{g['ratio']:.2f}x | {g['idle_cpu_p99_ms']:.2f} / {g['ingest_cpu_p99_ms']:.2f} | "
                    f"{g['rows_per_s']:,.0f} | {g['load']:.1f} |"
                )
    setup = (
        f"{params['data']}, x {params.get('dim', '?')}, {params['queries']} queries, k = {K}; QPS: one thread, "
        f"one query per call, the fastest of {PASSES} passes, at the narrowest ef reaching recall@10 >= "
        f"{TARGET_RECALL}; until indexed: "
        "Lamina from its last acknowledged write to an idle optimizer, the libraries their build (all cores)"
    )
    return "\n".join([setup, "", *lines])


def plot(results: list[dict[str, Any]], path: Path) -> Path | None:
    """QPS at recall@10 = 0.95 (``qps_at_target``: interpolated between the efs around it, as
    the table's ratios are) against N, one line per system (log-log)."""
    from bench.common import _pyplot

    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in SYSTEMS:
        points = sorted(
            (r["n"], qps)
            for r in results
            if r["system"] == system and "error" not in r and (qps := qps_at_target(r["curve"])) is not None
        )
        if points:
            style = "-o" if system == "lamina" else "--s"
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=system)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("points N")
    ax.set_ylabel(f"QPS at recall@10 = {TARGET_RECALL}, interpolated (1 thread)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated N")
    parser.add_argument("--with-1m", action="store_true", help="add N = 1,000,000 (an hour of the machine)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--data", default="/tmp/lamina-scale-data", help="where generated data sets are kept")
    parser.add_argument("--synthetic", action="store_true", help="small clustered data: smoke test only")
    parser.add_argument(
        "--ingest-seconds", type=float, default=30.0, help="search p99 during ingest (0: skip)"
    )
    parser.add_argument(
        "--ingest-rates",
        default=",".join(map(str, DEFAULT_RATES)),
        help="rows/s of each ingest phase, comma-separated (each starts from an idle optimizer)",
    )
    parser.add_argument("--limit", type=float, default=3600.0, help="seconds one system at one N may take")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.ingest_rates.split(",") if r]
    if any(r <= 0 for r in rates):
        parser.error("--ingest-rates: rows per second must be positive")
    if args.worker:
        print(
            json.dumps(
                worker(
                    args.worker, Path(args.folder), args.queries, Path(args.work), args.ingest_seconds, rates
                )
            )
        )
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([1_000_000] if args.with_1m else [])
    systems = [s for s in args.systems.split(",") if s]
    if set(systems) - set(SYSTEMS):
        parser.error(f"unknown systems {sorted(set(systems) - set(SYSTEMS))}; choose from {SYSTEMS}")
    data = Path(args.data)
    results: list[dict[str, Any]] = []
    for n in sizes:
        folder = dataset(data, n, args.synthetic)
        for system in systems:
            print(f"N = {n:,}: {system} ...", file=sys.stderr, flush=True)
            ingest = args.ingest_seconds if system == "lamina" else 0.0
            result = run_one(system, folder, args.queries, ingest, args.limit, rates)
            result.setdefault("n", n)
            results.append(result)
            if "error" in result:
                print(f"  {result['error']}", file=sys.stderr)
            else:
                c = result["chosen"]
                print(
                    f"  ef {c['ef']}: recall {c['recall']:.3f}, {c['qps']:,.0f} QPS, indexed in "
                    f"{result['indexed_s']:.1f} s, {result['memory_mb']:,.0f} MB RSS, {result['disk_mb']:,.0f} MB disk",
                    file=sys.stderr,
                    flush=True,
                )
    dim = next((r["dim"] for r in results if "dim" in r), None)
    params = {
        "data": "synthetic" if args.synthetic else "manifold",
        "sizes": sizes,
        "queries": args.queries,
        "dim": dim,
    }
    text = markdown(results, params)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{time.strftime('%Y-%m-%d')}-scale{'-synthetic' if args.synthetic else ''}"
    report = {"benchmark": "scale", "params": params, "machine": machine(), "results": results}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(text + "\n")
    plot(results, stem.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
