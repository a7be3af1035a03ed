"""Memory of ``lamina serve --processes N`` against one process, per index tier.

``python -m bench processes`` (kernel-docs-minilm, ``--rows N`` for fewer; ``--processes 1,2,4``;
``--tiers hnsw,binary``). For each tier and process count: a real server on loopback, the rows loaded
through it and sealed (``optimize()``), then a search sent to every process directly (its unix socket
in the run directory), so that every reader has opened the sealed segment. Measured over the server's
process tree (supervisor included): the sum of RSS (what ``ps`` shows; pages shared between
processes counted in each), and PSS split into anonymous memory (each process's own heap: Python,
the hnswlib graph, the mutable segment) and file-backed memory (the memory-mapped segment files and
the libraries, shared by every process through the page cache). Ratios are against one process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, machine
from bench.compare import prepare
from bench.peers import EF_CONSTRUCTION, M

TIERS: dict[str, dict[str, Any]] = {
    "hnsw": {"index": {"type": "hnsw", "m": M, "ef_construction": EF_CONSTRUCTION}},
    "binary": {"index": {"type": "flat"}, "quantization": {"type": "binary"}},
}


def tree_memory_mb(pid: int) -> dict[str, float]:
    """RSS, PSS, anonymous PSS and file-backed PSS of ``pid`` and its children, MB."""
    import psutil

    total = {"rss": 0.0, "pss": 0.0, "pss_anon": 0.0, "pss_file": 0.0}
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            lines = Path(f"/proc/{proc.pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        fields = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        total["rss"] += fields.get("Rss", 0) / 1024
        total["pss"] += fields.get("Pss", 0) / 1024
        total["pss_anon"] += fields.get("Pss_Anon", 0) / 1024
        total["pss_file"] += (fields.get("Pss_File", 0) + fields.get("Pss_Shmem", 0)) / 1024
    return total


def measure(work: Path, tier: str, processes: int, base: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    import lamina
    from lamina.client.api import Client
    from lamina.client.transport import GrpcTransport
    from lamina.config import DEFAULT_LIMITS
    from lamina.testing import ServerProcess

    run = work / f"run-{tier}-{processes}"
    data = work / f"data-{tier}-{processes}"
    many = ("--processes", str(processes), "--run-dir", str(run)) if processes > 1 else ()
    server = ServerProcess(data, *many)
    try:
        while processes > 1 and not all((run / f"process-{i}.ready").exists() for i in range(processes)):
            time.sleep(0.1)
        t0 = time.perf_counter()
        with lamina.connect(server.address, timeout=3600) as db:
            col = db.create_collection("mem", dim=base.shape[1], metric="cosine", **TIERS[tier])
            for lo in range(0, base.shape[0], 2000):
                col.upsert(list(range(lo, min(lo + 2000, base.shape[0]))), base[lo : lo + 2000])
            col.optimize()
        load_s = time.perf_counter() - t0
        for i in range(processes):  # every process opens the sealed segment and searches it
            target = f"unix:{run / f'process-{i}.sock'}" if processes > 1 else server.address
            client = Client(GrpcTransport(target, timeout=600), DEFAULT_LIMITS)
            with client:
                found = client.get_collection("mem")
                for q in queries[:50]:
                    found.search(q, k=10)
        time.sleep(1.0)
        memory = tree_memory_mb(server.proc.pid)
    finally:
        server.terminate()
    return {"tier": tier, "processes": processes, "load_s": load_s, **memory}


def markdown(results: list[dict[str, Any]], params: dict[str, Any]) -> str:
    lines = [
        f"{params['dataset']}, {params['rows']:,} x {params['dim']}, sealed into one segment; memory of the "
        "server's process tree (supervisor included) after every process searched",
        "",
        "| tier | processes | RSS sum MB | PSS MB | PSS anon MB | PSS file MB | PSS vs 1 process | RSS vs 1 |",
        "|" + "---|" * 8,
    ]
    for r in results:
        one = next(
            x
            for x in results
            if x["tier"] == r["tier"]
            and x["processes"] == min(y["processes"] for y in results if y["tier"] == r["tier"])
        )
        lines.append(
            f"| {r['tier']} | {r['processes']} | {r['rss']:,.0f} | {r['pss']:,.0f} | {r['pss_anon']:,.0f} | "
            f"{r['pss_file']:,.0f} | {r['pss'] / one['pss']:.2f}x | {r['rss'] / one['rss']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench processes", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=0, help="first N rows (default all; kernel-docs has 60,000)"
    )
    parser.add_argument(
        "--data",
        help="a folder with base.npy and queries.npy instead of kernel-docs (e.g. a manifold folder of "
        "`python -m bench scale`: the per-process interpreter dominates at 60,000 rows)",
    )
    parser.add_argument("--processes", default="1,2,4", help="comma-separated process counts (1 first)")
    parser.add_argument("--tiers", default="hnsw,binary", help=f"comma-separated, of {','.join(TIERS)}")
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON and markdown")
    args = parser.parse_args(argv)
    counts = sorted({int(n) for n in args.processes.split(",") if n})
    tiers = [t for t in args.tiers.split(",") if t]
    if not counts or counts[0] < 1 or set(tiers) - set(TIERS):
        parser.error(f"--processes takes counts >= 1; --tiers of {','.join(TIERS)}")
    work = Path(tempfile.mkdtemp(prefix="bench-processes-"))
    results = []
    try:
        if args.data:
            folder = Path(args.data)
            base = np.ascontiguousarray(np.load(folder / "base.npy", mmap_mode="r")[: args.rows or None])
            queries = np.ascontiguousarray(np.load(folder / "queries.npy")[:100], dtype=np.float32)
            params = {"dataset": folder.name, "rows": base.shape[0], "dim": base.shape[1]}
        else:
            params = prepare(work, "kernel-docs", args.rows, 384, 100)
            base, queries = np.load(work / "base.npy"), np.load(work / "queries.npy")
        for tier in tiers:
            for n in counts:
                print(f"{tier}, {n} process(es) ...", file=sys.stderr, flush=True)
                results.append(measure(work, tier, n, base, queries))
                r = results[-1]
                print(
                    f"  RSS sum {r['rss']:,.0f} MB, PSS {r['pss']:,.0f} MB "
                    f"(anon {r['pss_anon']:,.0f}, file {r['pss_file']:,.0f})",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown(results, params)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{time.strftime('%Y-%m-%d')}-processes"
    stem.with_suffix(".json").write_text(
        json.dumps({"params": params, "machine": machine(), "results": results}, indent=2)
    )
    stem.with_suffix(".md").write_text(table + "\n")
    return 0
