"""hnswlib against Lamina's ``GraphView`` (index/graphview.py) on the same saved graph.

``python -m bench graphview`` (kernel-docs-minilm and, with ``--data DIR``, the manifold sets
``manifold-N`` of ``--sizes``; see bench/scale.py). One hnswlib graph per data set (M=16,
ef_construction=200, the metric's space as Lamina uses it: cosine = ``ip`` over unit vectors),
saved and relabelled as a sealed segment's ``graph.hnsw`` (cached in ``--work``), then:

- load: in a fresh process each, hnswlib's ``load_index`` against opening the view: seconds,
  and the process's resident memory it added (RSS, and the anonymous part: private heap; the
  view's pages are the file's, in the page cache, shared by every process mapping it);
- search: both in this process, one thread, one query per call, k=10, at ef 16/32/64/128
  (rounds alternate the two systems; the best round counts, the machine is shared):
  recall@10 against exact ground truth, QPS, p50/p99, and the share of identical top-10 ids.

With ``--segments 4,2,1`` (and ``--sizes N``): the first manifold set in S equal segments, each
its own saved graph (built once, cached), searched as a collection's sealed segments are: a
Python loop of ``GraphView.search`` per segment against ``search_views`` (all segments in one
GIL-released call; alone, and split over two threads), each followed by the same merge of the
segments' top-k, against raw hnswlib over one graph of all N rows: recall@10 and QPS at equal
ef, ratios to the loop and to hnswlib in the same run.

Prints a markdown table, writes bench/results/<date>-graphview.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, machine
from bench.peers import EF_CONSTRUCTION, K, M

KERNEL_DOCS = Path(__file__).resolve().parents[2] / "shared" / "data" / "kernel-docs-minilm"
EFS = (16, 32, 64, 128)


def _datasets(args: argparse.Namespace) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, base, queries), unit-normalised float32."""
    out = []
    if not args.skip_kernel_docs:
        base = np.load(KERNEL_DOCS / "base.f16.npy").astype(np.float32)
        qs = np.load(KERNEL_DOCS / "queries.f16.npy").astype(np.float32)[: args.queries]
        out.append(("kernel-docs", base, qs))
    for n in args.sizes:
        folder = Path(args.data) / f"manifold-{n}"
        base = np.array(np.load(folder / "base.npy", mmap_mode="r")[:n], dtype=np.float32)
        qs = np.ascontiguousarray(np.load(folder / "queries.npy")[: args.queries], dtype=np.float32)
        out.append((f"manifold-{n}", base, qs))
    for _, base, qs in out:
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    return out


def _truth(base: np.ndarray, qs: np.ndarray, metric: str) -> np.ndarray:
    """Exact top-K ids (cosine on unit vectors = inner product; l2 squared distance)."""
    out = np.empty((qs.shape[0], K), np.int64)
    sq = np.einsum("ij,ij->i", base, base) if metric == "l2" else None
    for lo in range(0, qs.shape[0], 50):
        scores = qs[lo : lo + 50] @ base.T
        if sq is not None:
            scores = 2 * scores - sq[None, :]
        out[lo : lo + 50] = np.argsort(-scores, axis=1)[:, :K]
    return out


def _graph(work: Path, name: str, base: np.ndarray, metric: str) -> tuple[Path, float]:
    """The relabelled saved graph of ``base`` (built once, then cached), and its build seconds."""
    import hnswlib

    from lamina.index import graphfile

    path = work / f"{name}-{base.shape[0]}-{metric}-m{M}-efc{EF_CONSTRUCTION}.hnsw"
    stamp = path.with_suffix(".build-s")
    if path.exists() and stamp.exists():
        return path, float(stamp.read_text())
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"building the graph of {name} ({base.shape[0]:,} x {base.shape[1]}) ...", file=sys.stderr, flush=True
    )
    began = time.perf_counter()
    index = hnswlib.Index(space="ip" if metric == "cosine" else "l2", dim=base.shape[1])
    index.init_index(max_elements=base.shape[0], M=M, ef_construction=EF_CONSTRUCTION, random_seed=100)
    index.add_items(base, np.arange(base.shape[0]))
    build = time.perf_counter() - began
    raw = path.with_suffix(".raw")
    index.save_index(str(raw))
    graphfile.relabel(raw, path)
    raw.unlink()
    stamp.write_text(f"{build:.1f}")
    return path, build


def _memory() -> dict[str, float]:
    status = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return {"rss": int(status["VmRSS"].split()[0]) / 1024, "anon": int(status["RssAnon"].split()[0]) / 1024}


def measure_load(system: str, path: str, dim: int, metric: str) -> dict[str, float]:
    """In this (fresh) process: seconds to open the graph with ``system`` and memory it added."""
    import hnswlib

    from lamina.index.graphview import GraphView
    from lamina.index.kernels import METRIC_IP, METRIC_L2, normalize_rows

    normalize_rows(np.ones((1, 4), np.float32))  # numba's runtime starts (once per process, ~1-2 s) first
    before = _memory()
    began = time.perf_counter()
    if system == "hnswlib":
        index = hnswlib.Index(space="ip" if metric == "cosine" else "l2", dim=dim)
        index.load_index(path)
    else:
        index = GraphView(Path(path), dim, METRIC_IP if metric == "cosine" else METRIC_L2)
    seconds = time.perf_counter() - began
    query = np.ones((1, dim), np.float32) / np.sqrt(dim)
    began = time.perf_counter()
    if isinstance(index, GraphView):
        index.search(query, K, 16, np.ones(index.count, np.bool_))  # loads the cached kernel
    else:
        index.knn_query(query, k=K)
    first = time.perf_counter() - began
    after = _memory()
    return {
        "load_s": seconds,
        "first_query_s": first,
        "rss_mb": after["rss"] - before["rss"],
        "anon_mb": after["anon"] - before["anon"],
    }


def _load_in_child(system: str, path: Path, dim: int, metric: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "graphview", "--measure-load", system, str(path), str(dim), metric],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _sweep(
    path: Path, dim: int, metric: str, qs: np.ndarray, gt: np.ndarray, rounds: int
) -> list[dict[str, Any]]:
    import hnswlib

    from lamina.index.graphview import GraphView
    from lamina.index.kernels import METRIC_IP, METRIC_L2

    index = hnswlib.Index(space="ip" if metric == "cosine" else "l2", dim=dim)
    index.load_index(str(path))
    view = GraphView(path, dim, METRIC_IP if metric == "cosine" else METRIC_L2)
    live = np.ones(view.count, np.bool_)
    one = [qs[i : i + 1] for i in range(qs.shape[0])]

    def run_hnswlib(ef: int) -> tuple[np.ndarray, np.ndarray]:
        index.set_ef(ef)
        found = np.empty((len(one), K), np.int64)
        lat = np.empty(len(one))
        for i, q in enumerate(one):
            t0 = time.perf_counter()
            labels, _ = index.knn_query(q, k=K, num_threads=1)
            lat[i] = time.perf_counter() - t0
            found[i] = labels[0]
        return found, lat

    def run_view(ef: int) -> tuple[np.ndarray, np.ndarray]:
        found = np.empty((len(one), K), np.int64)
        lat = np.empty(len(one))
        for i, q in enumerate(one):
            t0 = time.perf_counter()
            _, labels, _ = view.search(q, K, ef, live)
            lat[i] = time.perf_counter() - t0
            found[i] = labels[0]
        return found, lat

    rows = []
    for ef in EFS:
        best: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for _ in range(rounds):
            for system, run in (("hnswlib", run_hnswlib), ("graphview", run_view)):
                if system not in best:
                    run(ef)  # warm the pages and caches the walk touches
                found, lat = run(ef)
                if system not in best or lat.sum() < best[system][1].sum():
                    best[system] = (found, lat)
        same = float(
            np.mean(
                [
                    len(set(a) & set(b)) / K
                    for a, b in zip(best["hnswlib"][0], best["graphview"][0], strict=True)
                ]
            )
        )
        for system, (found, lat) in best.items():
            rows.append(
                {
                    "system": system,
                    "ef": ef,
                    "recall": float(
                        np.mean([len(set(f) & set(t)) / K for f, t in zip(found, gt, strict=True)])
                    ),
                    "qps": len(one) / lat.sum(),
                    "p50_ms": float(np.percentile(lat, 50) * 1e3),
                    "p99_ms": float(np.percentile(lat, 99) * 1e3),
                    "same_ids": same,
                }
            )
    return rows


def _segmented(
    args: argparse.Namespace, name: str, base: np.ndarray, qs: np.ndarray, gt: np.ndarray, whole: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``--segments`` comparison on one data set (see the module's docstring)."""
    import hnswlib

    from lamina.index.kernels import METRIC_IP, METRIC_L2

    metric = METRIC_IP if args.metric == "cosine" else METRIC_L2
    dim = base.shape[1]
    one = [qs[i : i + 1] for i in range(qs.shape[0])]
    index = hnswlib.Index(space="ip" if args.metric == "cosine" else "l2", dim=dim)
    index.load_index(str(whole))
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    for parts in args.segments:
        got, table = _layout(args, name, base, parts, one, gt, index, metric, whole)
        rows += got
        lines += table
    return rows, lines


def _layout(
    args: argparse.Namespace,
    name: str,
    base: np.ndarray,
    parts: int,
    one: list[np.ndarray],
    gt: np.ndarray,
    index: Any,
    metric: int,
    whole: Path,
) -> tuple[list[dict[str, Any]], list[str]]:
    """One layout of ``--segments``: ``base`` in ``parts`` graphs (one: ``whole``, hnswlib's
    own graph), every system at every ef."""
    from lamina.index.graphview import GraphView, search_views

    n, dim = base.shape
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    step = n // parts
    paths = (
        [
            _graph(Path(args.work), f"{name}-part{i}of{parts}", base[i * step : (i + 1) * step], args.metric)[
                0
            ]
            for i in range(parts)
        ]
        if parts > 1
        else [whole]
    )
    views = [GraphView(path, dim, metric) for path in paths]
    lives = [np.ones(v.count, np.bool_) for v in views]
    starts = np.arange(parts, dtype=np.int64)[:, None] * step

    def merged(dists: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The segments' (S, k) top-k lists as one top-K of global rows (as Reads._plain merges)."""
        order = np.argsort(dists.ravel(), kind="stable")[:K]
        return (labels + starts).ravel()[order]

    def run_loop(ef: int, q: np.ndarray) -> np.ndarray:
        found = [v.search(q, K, ef, live) for v, live in zip(views, lives, strict=True)]
        return merged(np.stack([f[0][0] for f in found]), np.stack([f[1][0] for f in found]))

    def run_call(ef: int, q: np.ndarray) -> np.ndarray:
        dists, labels, _ = search_views(views, lives, q, K, ef)
        return merged(dists[:, 0], labels[:, 0])

    def run_split(ef: int, q: np.ndarray) -> np.ndarray:
        dists, labels, _ = search_views(views, lives, q, K, ef, parallel=True)
        return merged(dists[:, 0], labels[:, 0])

    def run_hnswlib(ef: int, q: np.ndarray) -> np.ndarray:
        index.set_ef(ef)
        return np.asarray(index.knn_query(q, k=K, num_threads=1)[0][0])

    systems = {"loop": run_loop, "one call": run_call, "hnswlib (1 graph)": run_hnswlib}
    if parts > 1:
        systems["one call, 2 threads"] = run_split
    for ef in EFS:
        best: dict[str, tuple[np.ndarray, float, float]] = {}
        for _ in range(args.rounds):
            for system, run in systems.items():
                if system not in best:
                    for q in one[:50]:
                        run(ef, q)  # warm pages and caches
                found = np.empty((len(one), K), np.int64)
                began, cpu = time.perf_counter(), time.process_time()
                for i, q in enumerate(one):
                    found[i] = run(ef, q)
                took, cpu = time.perf_counter() - began, time.process_time() - cpu
                if system not in best or took < best[system][1]:
                    best[system] = (found, took, min(cpu, best.get(system, (0, 0, cpu))[2]))
                else:
                    best[system] = (*best[system][:2], min(cpu, best[system][2]))
        qps = {system: len(one) / took for system, (_, took, _) in best.items()}
        cpu_us = {system: cpu / len(one) * 1e6 for system, (_, _, cpu) in best.items()}
        for system, (found, _, _) in best.items():
            row = {
                "data": name,
                "n": n,
                "segments": 1 if system.startswith("hnswlib") else parts,
                "system": system,
                "ef": ef,
                "recall": float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, gt, strict=True)])),
                "qps": qps[system],
                "vs_loop": qps[system] / qps["loop"],
                "vs_hnswlib": qps[system] / qps["hnswlib (1 graph)"],
                "cpu_us": cpu_us[system],
                "cpu_vs_loop": cpu_us[system] / cpu_us["loop"],
            }
            rows.append(row)
            lines.append(
                f"| {name} | {parts} x {step:,} | {system} | {ef} | {row['recall']:.3f} | "
                f"{row['qps']:,.0f} | {row['vs_loop']:.2f}x | {row['vs_hnswlib']:.2f}x | "
                f"{row['cpu_us']:,.0f} | {row['cpu_vs_loop']:.2f}x |"
            )
        print("\n".join(lines[-len(best) :]), flush=True)
    return rows, lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench graphview", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/data", help="folder of manifold-N sets (bench/scale.py)")
    parser.add_argument("--sizes", default="", help="manifold sizes, comma-separated (e.g. 100000,300000)")
    parser.add_argument("--skip-kernel-docs", action="store_true")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per system and ef (best counts)")
    parser.add_argument("--metric", choices=("cosine", "l2"), default="cosine")
    parser.add_argument("--work", default="/tmp/lamina-bench-graphview", help="where built graphs are cached")
    parser.add_argument("--name", default="graphview", help="results file name")
    parser.add_argument(
        "--segments",
        default="",
        help="segment counts, comma-separated (e.g. 4,2,1): the --sizes set split into that many graphs",
    )
    parser.add_argument(
        "--measure-load", nargs=4, metavar=("SYSTEM", "PATH", "DIM", "METRIC"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.measure_load:
        system, path, dim, metric = args.measure_load
        print(json.dumps(measure_load(system, path, int(dim), metric)))
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.segments = [int(s) for s in args.segments.split(",") if s]
    if args.segments:
        return segments_main(args)
    results: list[dict[str, Any]] = []
    lines = [
        f"GraphView vs hnswlib on the same saved graph (M={M}, ef_construction={EF_CONSTRUCTION}, {args.metric}); "
        f"{args.queries} queries, k={K}, one thread, one query per call, best of {args.rounds} alternating rounds; "
        f"load and memory in a fresh process each",
        "",
        "| data | N | system | load s | first query s | RSS added MB | anon MB | ef | recall@10 | QPS | vs hnswlib | p50 ms | p99 ms | same ids |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, base, qs in _datasets(args):
        path, build = _graph(Path(args.work), name, base, args.metric)
        gt = _truth(base, qs, args.metric)
        dim, n = base.shape[1], base.shape[0]
        del base
        loads = {s: _load_in_child(s, path, dim, args.metric) for s in ("hnswlib", "graphview")}
        curve = _sweep(path, dim, args.metric, qs, gt, args.rounds)
        base_qps = {r["ef"]: r["qps"] for r in curve if r["system"] == "hnswlib"}
        for r in curve:
            ld = loads[r["system"]]
            r.update(data=name, n=n, build_s=build, graph_mb=os.path.getsize(path) / 2**20, **ld)
            lines.append(
                f"| {name} | {n:,} | {r['system']} | {ld['load_s']:.3f} | {ld['first_query_s']:.3f} | {ld['rss_mb']:.0f} | {ld['anon_mb']:.0f} | "
                f"{r['ef']} | {r['recall']:.3f} | {r['qps']:,.0f} | {r['qps'] / base_qps[r['ef']]:.2f}x | "
                f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['same_ids']:.4f} |"
            )
            results.append(r)
        print("\n".join(lines[-len(curve) :]), flush=True)
    _write(args, "graphview", lines, results)
    return 0


def _write(args: argparse.Namespace, benchmark: str, lines: list[str], results: list[dict[str, Any]]) -> None:
    """Print the table; write bench/results/<date>-<name>.{json,md}."""
    markdown = "\n".join(lines)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    params = {k: v for k, v in vars(args).items() if k != "measure_load"}
    params["load_average"] = os.getloadavg()
    (RESULTS / f"{stamp}-{args.name}.json").write_text(
        json.dumps(
            {"benchmark": benchmark, "params": params, "machine": machine(), "rows": results}, indent=2
        )
    )
    (RESULTS / f"{stamp}-{args.name}.md").write_text(markdown + "\n")


def _dispatch(work: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """What a call costs beyond the walk: S graphs of 32 elements (384-d, k=10, ef=16, the walk a
    few microseconds), CPU microseconds of this thread per query (immune to waiting for a core on
    a loaded machine), best of 15 runs of 500: the loop of ``GraphView.search`` against
    ``search_views``."""
    import hnswlib

    from lamina.index import graphfile
    from lamina.index.graphview import GraphView, search_views
    from lamina.index.kernels import METRIC_IP

    rng = np.random.default_rng(0)
    work.mkdir(parents=True, exist_ok=True)
    views = []
    for i in range(8):
        data = rng.standard_normal((32, 384)).astype(np.float32)
        data /= np.linalg.norm(data, axis=1, keepdims=True)
        index = hnswlib.Index(space="ip", dim=384)
        index.init_index(32, M=M, ef_construction=50, random_seed=1)
        index.add_items(data, np.arange(32))
        index.save_index(str(work / f"tiny{i}.raw"))
        graphfile.relabel(work / f"tiny{i}.raw", work / f"tiny{i}.hnsw")
        views.append(GraphView(work / f"tiny{i}.hnsw", 384, METRIC_IP))
    masks = [np.ones(32, np.bool_) for _ in views]
    query = rng.standard_normal((1, 384)).astype(np.float32)

    def cpu_us(run: Any) -> float:
        best = np.inf
        for _ in range(15):
            began = time.thread_time()
            for _ in range(500):
                run()
            best = min(best, (time.thread_time() - began) / 500 * 1e6)
        return float(best)

    rows, lines = (
        [],
        [
            "",
            "| graphs of 32 elements | loop: CPU us per query | one call: CPU us per query | one call / loop |",
            "|---|---|---|---|",
        ],
    )
    for count in (1, 2, 4, 8):
        vs, ms = views[:count], masks[:count]
        search_views(vs, ms, query, K, 16)  # compiled / loaded
        loop = cpu_us(lambda vs=vs, ms=ms: [v.search(query, K, 16, m) for v, m in zip(vs, ms, strict=True)])
        call = cpu_us(lambda vs=vs, ms=ms: search_views(vs, ms, query, K, 16))
        rows.append({"system": "dispatch", "segments": count, "loop_cpu_us": loop, "call_cpu_us": call})
        lines.append(f"| {count} | {loop:.1f} | {call:.1f} | {call / loop:.2f}x |")
    return rows, lines


def segments_main(args: argparse.Namespace) -> int:
    """``--segments``: one data set in S graphs, the loop against one call against hnswlib."""
    args.skip_kernel_docs = True
    args.sizes = args.sizes[:1]
    if not args.sizes:
        raise SystemExit("--segments needs --sizes N (a manifold set)")
    lines = [
        f"S sealed segments searched per query (M={M}, ef_construction={EF_CONSTRUCTION}, {args.metric}): a Python "
        f"loop of GraphView.search per segment, search_views (one call; alone and split over 2 threads), and raw "
        f"hnswlib over one graph of all rows; {args.queries} queries, k={K}, one query per call, the segments' "
        f"top-k merged as Reads._plain does; best of {args.rounds} alternating rounds (wall clock: QPS; the "
        f"process's CPU time per query, the least of the rounds: CPU us, robust to waiting for a core)",
        "",
        "| data | segments | system | ef | recall@10 | QPS | vs loop | vs hnswlib | CPU us | CPU vs loop |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    results: list[dict[str, Any]] = []
    for name, base, qs in _datasets(args):
        whole, _ = _graph(Path(args.work), name, base, args.metric)
        gt = _truth(base, qs, args.metric)
        rows, table = _segmented(args, name, base, qs, gt, whole)
        results += rows
        lines += table
    rows, table = _dispatch(Path(args.work))
    results += rows
    lines += table
    _write(args, "graphview-segments", lines, results)
    return 0
