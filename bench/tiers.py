"""Index tiers of Lamina beside the raw libraries on the same data, in one run.

    python -m bench tiers [--dataset kernel-docs|synthetic] [--n 1000000] [--queries 500] [--quick]

For each system and search setting: recall@10 against exact ground truth, QPS with
1 and 2 client threads (one query per call), p50/p99 latency, build time and
index memory per vector. Raw systems: hnswlib, faiss IndexHNSWFlat, faiss
IndexBinaryFlat (sign bits) + numpy rerank, faiss IVFPQ + IndexRefineFlat. Lamina
runs embedded, one query per call through the public SDK (``lamina.connect(path)``),
with payload fetching off. Also measured: the numba rerank kernel against numpy
gather + matmul + argsort, gathering candidates from the segment's memory map
against RocksDB, and reopening the collection.

Index memory: Lamina reports its tier's bytes (codes, graph, masks: the files it
loads); raw libraries are measured the same way (serialized index size).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import hnswlib
import numpy as np

import lamina
from bench.common import Row, clustered, plot_curves, save, table
from lamina.index import graphfile
from lamina.index.kernels import METRIC_IP, rerank
from lamina.storage.rocks import CollectionStore

K = 10
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kernel-docs-minilm"


def load(dataset: str, n: int, nq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if dataset == "kernel-docs":
        base = np.load(DATA / "base.f16.npy").astype(np.float32)
        queries = np.load(DATA / "queries.f16.npy").astype(np.float32)[:nq]
        truth = np.load(DATA / "gt_cosine_top100.npy")[:nq, :K]
        return base, queries, truth
    base = clustered(n, 128, seed=7, clusters=1000)
    queries = base[np.random.default_rng(8).choice(n, nq, replace=False)] + 0.1 * (
        np.random.default_rng(9).standard_normal((nq, 128)).astype(np.float32) / np.sqrt(128)
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(128)
    flat.add(base)
    _, truth = flat.search(queries, K)
    return base, queries.astype(np.float32), truth


def recall_of(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)])
    )


def measure(
    system: str,
    setting: str,
    search: Callable[[np.ndarray], np.ndarray],
    queries: np.ndarray,
    truth: np.ndarray,
    build_s: float,
    bytes_per_vec: float,
    note: str = "",
) -> Row:
    """Time one query per call with 1 thread (latencies) and with 2 threads (QPS)."""
    search(queries[0])
    lat = np.empty(len(queries))
    found = []
    start = time.perf_counter()
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        found.append(search(q))
        lat[i] = (time.perf_counter() - t0) * 1000
    qps1 = len(queries) / (time.perf_counter() - start)
    with ThreadPoolExecutor(2) as pool:
        start = time.perf_counter()
        list(pool.map(search, queries))
        qps2 = len(queries) / (time.perf_counter() - start)
    row = Row(
        system,
        setting,
        qps1,
        "QPS",
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        recall_of(found, truth),
        None,
        note,
        {"qps_2_threads": qps2, "build_s": build_s, "index_bytes_per_vector": bytes_per_vec},
    )
    print(
        f"  {system:28s} {setting:16s} recall={row.recall:.3f} qps1={qps1:8.0f} qps2={qps2:8.0f} "
        f"p50={row.p50_ms:.3f}ms p99={row.p99_ms:.3f}ms build={build_s:.1f}s mem/vec={bytes_per_vec:.0f}B",
        flush=True,
    )
    return row


# ---------------------------------------------------------------- raw libraries
def raw_hnswlib(
    base: np.ndarray, queries: np.ndarray, truth: np.ndarray, efs: list[int], m: int, efc: int
) -> list[Row]:
    start = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=m, ef_construction=efc, random_seed=100)
    index.add_items(base, np.arange(len(base)), num_threads=os.cpu_count() or 1)
    build = time.perf_counter() - start
    with tempfile.NamedTemporaryFile() as fh:
        index.save_index(fh.name)
        size = os.path.getsize(fh.name) / len(base)
    rows = []
    for ef in efs:
        index.set_ef(ef)
        rows.append(
            measure(
                "raw hnswlib",
                f"ef={ef}",
                lambda q: index.knn_query(q, k=K, num_threads=1)[0][0],
                queries,
                truth,
                build,
                size,
            )
        )
    return rows


def raw_faiss_hnsw(
    base: np.ndarray, queries: np.ndarray, truth: np.ndarray, efs: list[int], m: int, efc: int
) -> list[Row]:
    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(base.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = efc
    index.add(base)
    build = time.perf_counter() - start
    size = len(faiss.serialize_index(index)) / len(base)
    rows = []
    faiss.omp_set_num_threads(1)
    for ef in efs:
        params = faiss.SearchParametersHNSW(efSearch=ef)
        rows.append(
            measure(
                "raw faiss HNSWFlat",
                f"ef={ef}",
                lambda q, params=params: index.search(q[None], K, params=params)[1][0],
                queries,
                truth,
                build,
                size,
            )
        )
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return rows


def raw_faiss_binary(
    base: np.ndarray, queries: np.ndarray, truth: np.ndarray, oversamples: list[int]
) -> list[Row]:
    start = time.perf_counter()
    dim = base.shape[1]
    index = faiss.IndexBinaryFlat(dim)
    index.add(np.packbits(base > 0, axis=1))
    build = time.perf_counter() - start
    size = len(faiss.serialize_index_binary(index)) / len(base)  # measured like the other indexes
    rows = []
    faiss.omp_set_num_threads(1)
    for os_ in oversamples:

        def search(q: np.ndarray, n: int = K * os_) -> np.ndarray:
            _, cand = index.search(np.packbits(q[None] > 0, axis=1), n)
            cand = cand[0]
            scores = base[cand] @ q
            return cand[np.argsort(-scores)[:K]]

        rows.append(
            measure(
                "faiss BinaryFlat+rerank",
                f"oversample={os_}",
                search,
                queries,
                truth,
                build,
                size,
                "sign bits; numpy rerank",
            )
        )
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return rows


def raw_faiss_ivfpq(
    base: np.ndarray, queries: np.ndarray, truth: np.ndarray, pq_m: int, factors: list[int]
) -> list[Row]:
    dim = base.shape[1]
    nlist = int(4 * np.sqrt(len(base)))
    start = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    ivfpq = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    sample = base[np.random.default_rng(0).choice(len(base), min(len(base), 65_536), replace=False)]
    ivfpq.train(sample)
    index = faiss.IndexRefineFlat(ivfpq)
    index.add(base)
    build = time.perf_counter() - start
    ivfpq.nprobe = 32
    rows = []
    faiss.omp_set_num_threads(1)
    # the IVFPQ index serialized (coarse centroids, PQ codebooks, codes + ids in the inverted
    # lists); the refine vectors IndexRefineFlat keeps beside it are extra float32, in the note
    code_bytes = len(faiss.serialize_index(ivfpq)) / len(base)
    for factor in factors:
        params = faiss.IndexRefineSearchParameters(
            k_factor=factor, base_index_params=faiss.SearchParametersIVF(nprobe=32)
        )
        rows.append(
            measure(
                "faiss IVFPQ+RefineFlat",
                f"k_factor={factor}",
                lambda q, params=params: index.search(q[None], K, params=params)[1][0],
                queries,
                truth,
                build,
                code_bytes,
                f"nlist={nlist}, nprobe=32; +{4 * dim} B/vec float32 in RAM for refine",
            )
        )
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return rows


# ---------------------------------------------------------------- Lamina
def lamina_tier(
    path: Path,
    label: str,
    base: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    settings: list[dict[str, Any]],
    segment_rows: int,
    **create: Any,
) -> tuple[list[Row], float]:
    """Ingest through the SDK, seal with optimize(), then sweep search settings."""
    shutil.rmtree(path, ignore_errors=True)
    client = lamina.connect(str(path))
    col = client.create_collection("bench", base.shape[1], segment_rows=segment_rows, **create)
    start = time.perf_counter()
    for lo in range(0, len(base), 10_000):
        col.upsert(list(range(lo, min(lo + 10_000, len(base)))), base[lo : lo + 10_000])
    ingest = time.perf_counter() - start
    info = col.optimize()
    build = time.perf_counter() - start
    per_vec = info.status.index_bytes / len(base)
    rows = []
    for extra in settings:
        setting = ",".join(f"{k}={v}" for k, v in extra.items()) or "default"
        rows.append(
            measure(
                f"lamina {label}",
                setting,
                lambda q, extra=extra: np.array(
                    [h.id for h in col.search(q, k=K, with_payload=False, **extra)]
                ),
                queries,
                truth,
                build,
                per_vec,
                f"{info.status.segments} segment(s); ingest {ingest:.1f}s + seal/index {build - ingest:.1f}s",
            )
        )
    client.close()
    start = time.perf_counter()
    client = lamina.connect(str(path))
    reopen = time.perf_counter() - start
    client.close()
    anon, file = serving_rss(path, queries)
    for row in rows:
        row.rss_mb = anon
        row.extra["rss_anon_bytes_per_vector"] = anon * 2**20 / len(base)
        row.extra["rss_file_bytes_per_vector"] = file * 2**20 / len(base)
    print(
        f"  serving RSS after reopen: anonymous {anon:.0f} MB ({anon * 2**20 / len(base):.0f} B/vector), "
        f"file-backed {file:.0f} MB (page cache of the memory maps)",
        flush=True,
    )
    return rows, reopen


_SERVE_PROBE = """
import sys, tempfile, numpy as np, lamina
def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return [int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile")]
queries = np.load(sys.argv[2])
with lamina.connect(tempfile.mkdtemp()) as warm:  # load libraries and compiled kernels first
    tiny = warm.create_collection("w", queries.shape[1], index={"type": "flat"})
    tiny.upsert([1, 2], queries[:2])
    tiny.search(queries[0], k=1)
base = status()
with lamina.connect(sys.argv[1]) as db:
    col = db.get_collection("bench")
    for q in queries:
        col.search(q, k=10, with_payload=False)
    now = status()
print(now[0] - base[0], now[1] - base[1])
"""


def serving_rss(path: Path, queries: np.ndarray) -> tuple[float, float]:
    """Resident memory (MB) that opening the collection and serving the queries adds to a
    fresh process: (anonymous: heap and index tier, file-backed: mapped vector/id pages)."""
    import subprocess
    import sys

    qfile = path / "queries.npy"
    np.save(qfile, queries)
    out = subprocess.run(
        [sys.executable, "-c", _SERVE_PROBE, str(path), str(qfile)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


# ---------------------------------------------------------------- kernels
def rerank_vs_numpy(base: np.ndarray, queries: np.ndarray) -> list[Row]:
    rows = []
    rng = np.random.default_rng(1)
    live = np.ones(len(base), bool)
    for c in (100, 300, 1000):
        cands = np.stack([rng.choice(len(base), c, replace=False) for _ in range(len(queries))])
        rerank(base, cands[:1], live, queries[:1], K, METRIC_IP)
        start = time.perf_counter()
        for i in range(len(queries)):
            rerank(base, cands[i : i + 1], live, queries[i : i + 1], K, METRIC_IP)
        numba_s = (time.perf_counter() - start) / len(queries)
        start = time.perf_counter()
        for i in range(len(queries)):
            scores = base[cands[i]] @ queries[i]
            cands[i][np.argsort(-scores)[:K]]
        numpy_s = (time.perf_counter() - start) / len(queries)
        start = time.perf_counter()
        rerank(base, cands, live, queries, K, METRIC_IP)
        numba_b = (time.perf_counter() - start) / len(queries)
        start = time.perf_counter()
        scores_b = np.einsum("qcd,qd->qc", base[cands], queries)
        np.take_along_axis(cands, np.argsort(-scores_b, axis=1)[:, :K], axis=1)
        numpy_b = (time.perf_counter() - start) / len(queries)
        print(
            f"  rerank {c:5d} candidates, 1 query/call: numba {numba_s * 1e6:.1f} us, numpy {numpy_s * 1e6:.1f} us "
            f"({numpy_s / numba_s:.1f}x); all queries in one call: numba {numba_b * 1e6:.1f} us, "
            f"numpy {numpy_b * 1e6:.1f} us ({numpy_b / numba_b:.1f}x)",
            flush=True,
        )
        for mode, ours, theirs in (("1 query/call", numba_s, numpy_s), ("batch", numba_b, numpy_b)):
            task = f"rerank {c} cands, {mode}"
            rows.append(
                Row("lamina numba rerank", task, 1 / ours, "queries/s", note=f"{theirs / ours:.1f}x numpy")
            )
            rows.append(Row("numpy gather+matmul+argsort", task, 1 / theirs, "queries/s"))
    return rows


def gather_mmap_vs_rocksdb(path: Path, base: np.ndarray, n_rows: int = 100, reps: int = 200) -> list[Row]:
    """Read n_rows random full-precision vectors: from a sealed segment's memory map, or from RocksDB."""
    client = lamina.connect(str(path))
    client.close()
    seg_dir = next((path / "collections" / "bench" / "segments").iterdir())
    mm = (  # an HNSW segment's vectors are the records of its graph file (index/graphfile.py)
        np.memmap(seg_dir / "vectors.f32", dtype="<f4", mode="r").reshape(-1, base.shape[1])
        if (seg_dir / "vectors.f32").exists()
        else graphfile.vectors(seg_dir / "graph.hnsw", base.shape[1])
    )
    store = CollectionStore(path / "collections" / "bench")
    rng = np.random.default_rng(2)
    picks = [np.sort(rng.choice(mm.shape[0], n_rows, replace=False)) for _ in range(reps)]
    start = time.perf_counter()
    for p in picks:
        np.asarray(mm[p])
    mmap_s = (time.perf_counter() - start) / reps
    start = time.perf_counter()
    for p in picks:
        blobs = store.vectors_of([int(r) for r in p])
        np.frombuffer(b"".join(b for b in blobs if b is not None), dtype="<f4")
    rocks_s = (time.perf_counter() - start) / reps
    store.close()
    print(
        f"  gather {n_rows} vectors: mmap {mmap_s * 1e6:.0f} us, RocksDB multi-get {rocks_s * 1e6:.0f} us",
        flush=True,
    )
    return [
        Row("segment memory map", f"gather {n_rows} vectors", 1 / mmap_s, "gathers/s"),
        Row("RocksDB multi-get", f"gather {n_rows} vectors", 1 / rocks_s, "gathers/s"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench tiers", description=__doc__)
    parser.add_argument("--dataset", choices=["kernel-docs", "synthetic"], default="kernel-docs")
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic rows")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="fewer settings")
    args = parser.parse_args(argv)
    base, queries, truth = load(args.dataset, args.n, args.queries)
    n, dim = base.shape
    print(
        f"{args.dataset}: {n} x {dim}, {len(queries)} queries, M={args.m}, ef_construction={args.ef_construction}"
    )
    efs = [16, 32, 64, 128] if args.quick else [16, 32, 64, 128, 256]
    oversamples = [4, 10, 20] if args.quick else [2, 4, 10, 20, 40]
    pq_m = dim // 4 if dim % 4 == 0 else dim
    hnsw = {"type": "hnsw", "m": args.m, "ef_construction": args.ef_construction}
    rows: list[Row] = []
    print("raw libraries", flush=True)
    rows += raw_hnswlib(base, queries, truth, efs, args.m, args.ef_construction)
    gc.collect()
    rows += raw_faiss_hnsw(base, queries, truth, efs, args.m, args.ef_construction)
    gc.collect()
    rows += raw_faiss_binary(base, queries, truth, oversamples)
    rows += raw_faiss_ivfpq(base, queries, truth, pq_m, [2, 5, 10, 20])
    gc.collect()
    print("lamina (embedded, one query per call, payloads off)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-"))
    segment_rows = max(n, 256)  # one sealed segment, as the raw libraries have one index
    reopen: dict[str, float] = {}
    try:
        r, reopen["hnsw"] = lamina_tier(
            work / "hnsw", "hnsw", base, queries, truth, [{"ef": ef} for ef in efs], segment_rows, index=hnsw
        )
        rows += r
        flat = {"type": "flat"}
        tiers: list[tuple[str, str, list[dict[str, Any]], dict[str, Any]]] = [
            *(
                (
                    f"binary{bits}",
                    f"flat+binary {bits}-bit",
                    [{"oversample": o} for o in oversamples],
                    {"index": flat, "quantization": {"type": "binary", "bits": bits}},
                )
                for bits in (1, 2, 4)
            ),
            (
                "hnsw+binary",
                "hnsw+binary 2-bit",
                [{"oversample": o, "ef": max(64, K * o)} for o in oversamples[1:]],
                {"index": hnsw, "quantization": {"type": "binary", "bits": 2}},
            ),
            (
                "pq",
                f"flat+pq m={pq_m}",
                [{"oversample": o} for o in oversamples],
                {"index": flat, "quantization": {"type": "pq", "m": pq_m}},
            ),
        ]
        for key, label, settings, create in tiers:
            r, reopen[key] = lamina_tier(
                work / key, label, base, queries, truth, settings, segment_rows, **create
            )
            rows += r
        print("kernels and storage", flush=True)
        rows += rerank_vs_numpy(base, queries)
        rows += gather_mmap_vs_rocksdb(work / "binary1", base)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, seconds in reopen.items():
        print(f"  reopen {name}: {seconds:.2f} s")
    search_rows = [r for r in rows if r.unit == "QPS"]
    md = (
        table_tiers(search_rows)
        + "\n\n"
        + table([r for r in rows if r.unit != "QPS"], {})
        + "\n\nreopen (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in reopen.items())
    )
    print(md)
    name = f"tiers-{args.dataset}" + ("" if args.dataset == "kernel-docs" else f"-{n}")
    params = {
        "n": n,
        "dim": dim,
        "queries": len(queries),
        "m": args.m,
        "ef_construction": args.ef_construction,
        "reopen_s": reopen,
    }
    print("saved", save(name, rows, params, md))
    print("plot", plot_curves(name, search_rows))
    return 0


def hnswlib_qps_at(rows: list[Row], recall: float) -> float | None:
    """Raw hnswlib's 1-thread QPS at ``recall``, interpolated (log QPS, linear recall)
    between its two neighbouring ef settings; None outside its measured range."""
    ref = sorted((r.recall or 0.0, r.rate) for r in rows if r.system == "raw hnswlib")
    for (r0, q0), (r1, q1) in itertools.pairwise(ref):
        if r0 <= recall <= r1:
            t = 0.0 if r1 == r0 else (recall - r0) / (r1 - r0)
            return float(np.exp((1 - t) * np.log(q0) + t * np.log(q1)))
    return None


def table_tiers(rows: list[Row]) -> str:
    """Recall/QPS table; ``vs hnswlib`` divides by raw hnswlib's QPS at the same recall."""
    lines = [
        "| system | setting | recall@10 | QPS 1 thr | QPS 2 thr | vs hnswlib* | p50 ms | p99 ms | build s "
        "| index B/vec | note |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        rec = r.recall or 0.0
        ref = hnswlib_qps_at(rows, rec)
        ratio = f"{r.rate / ref:.2f}x" if ref else "-"
        e = r.extra
        lines.append(
            f"| {r.system} | {r.task} | {rec:.3f} | {r.rate:,.0f} | {e['qps_2_threads']:,.0f} | {ratio} | "
            f"{r.p50_ms:.3f} | {r.p99_ms:.3f} | {e['build_s']:.1f} | {e['index_bytes_per_vector']:.0f} | {r.note} |"
        )
    lines.append(
        "\n*vs hnswlib: 1-thread QPS over raw hnswlib's QPS at the same recall@10, interpolated between its "
        "ef settings ('-': outside the recall range hnswlib covered)."
    )
    return "\n".join(lines)
