"""Lamina's gRPC server against PostgreSQL + pgvector and a bare gRPC echo, under many client processes.

``python -m bench serve`` (kernel-docs-minilm: 60,000 x 384 real embeddings; ``--rows N`` for fewer,
``--clients 1,4,16``, ``--duration S`` seconds per measurement, ``--rounds R`` (default 3: every
server stays up and the systems are alternated within each round, each point the median of its rounds),
``--systems lamina,pgvector,echo``).

Every system is a real server on loopback and every client is a process of its own doing single-query
searches (k = 10), as RAG backends do. Both databases build HNSW with M = 16 and ef_construction = 200
over the same vectors; each one's ef is the narrowest of ``EF_SWEEP`` that reaches recall@10 >= 0.95
against exact ground truth (measured with one client first). The echo floor is a bare Python grpc.aio
server returning the 1.6 KB request it got (a 384-d float32 query): what the transport alone allows.
Reported per system and client count: QPS, p50 and p99 latency, and the server's memory (PSS: shared
pages counted once, summed over the server's processes). Then Lamina embedded against raw hnswlib:
single-query searches with Lamina's ef, on the same graph (the sealed segment's own index), median CPU
time per query, layer by layer (raw walk, tier, segment, engine, SDK, payloads), with and without a
small mutable tail (``--systems '' --ef 32``: that measurement alone). ``--payloads text`` gives every
point its kernel-docs record as payload (source, section, chars and the paragraph's text, as a RAG store
holds; 324 bytes of JSON on average) in Lamina and in pgvector (a jsonb column), and every client fetches it with
its hits (Lamina ``with_payload=True``, pgvector ``SELECT id, payload``); the embedded measurement then
stores those payloads too. The load average is recorded: the machine may be shared. Lamina runs with its defaults: its index is
built by ``optimize()`` once loaded, as a collection under 100,000 points would otherwise stay in the
exact-scanned mutable segment.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, _pyplot, machine
from bench.compare import TARGET_RECALL, K, prepare
from bench.layers import embedded, embedded_table
from bench.peers import EF_CONSTRUCTION, EF_SWEEP, M
from bench.servers import (
    COLLECTION,
    DEFAULT_SYSTEMS,
    PAYLOADS_FILE,
    SERVERS,
    SYSTEMS,
    TABLE,
    Server,
    echo_server,
    echo_sync_server,
    lamina_sync_server,
    stored_payloads,
    write_payloads,
)


# ------------------------------------------------------------------ clients (one process each)
class Searcher:
    """One client's connection; ``search`` answers row ids, best first."""

    def __init__(self, system: str, target: str, ef: int | None, with_payload: bool = False) -> None:
        self.system = system
        self.with_payload = with_payload  # fetch each hit's payload too (``--payloads text``)
        if system.startswith("lamina"):
            import lamina

            self.db = lamina.connect(target, timeout=60)
            self.col = self.db.get_collection(COLLECTION)
        elif system == "pgvector":
            import psycopg
            from pgvector.psycopg import register_vector

            self.conn = psycopg.connect(target, autocommit=True)
            register_vector(self.conn)
            if ef is not None:
                self.conn.execute(f"SET hnsw.ef_search = {int(ef)}")
        else:
            import grpc

            self.channel = grpc.insecure_channel(target)
            self.call = self.channel.unary_unary("/bench.Echo/Echo")
        self.ef = ef

    def search(self, query: np.ndarray) -> list[int]:
        if self.system.startswith("lamina"):
            hits = self.col.search(query, k=K, with_payload=self.with_payload, ef=self.ef)
            return [int(h.id) for h in hits]
        if self.system == "pgvector":
            columns = "id, payload" if self.with_payload else "id"
            rows = self.conn.execute(
                f"SELECT {columns} FROM {TABLE} ORDER BY embedding <=> %s LIMIT {K}", (query,)
            ).fetchall()
            return [int(r[0]) for r in rows]
        self.call(query.tobytes(), timeout=30)  # echo and echo-sync
        return []

    def close(self) -> None:
        if self.system.startswith("lamina"):
            self.db.close()
        elif self.system == "pgvector":
            self.conn.close()
        else:
            self.channel.close()


def client(
    system: str,
    target: str,
    ef: int | None,
    queries_path: str,
    duration: float,
    seed: int,
    ready: Any,
    out: Any,
) -> None:
    """One client process: connect and warm up, wait at ``ready`` for every other client, search
    for ``duration`` seconds, put its count, window and latencies on ``out``."""
    queries = np.load(queries_path)
    searcher = Searcher(system, target, ef, (Path(queries_path).parent / PAYLOADS_FILE).exists())
    order = np.random.default_rng(seed).permutation(queries.shape[0])
    for i in order[:20]:
        searcher.search(queries[i])
    ready.wait()
    lat: list[float] = []
    start = time.perf_counter()
    n = 0
    while True:
        t0 = time.perf_counter()
        searcher.search(queries[order[n % order.size]])
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        n += 1
        if t1 - start >= duration:
            break
    searcher.close()
    out.put({"count": n, "elapsed": t1 - start, "lat": lat})


def measure(
    server: Server, system: str, ef: int | None, work: Path, clients: int, duration: float
) -> dict[str, Any]:
    """QPS and latency percentiles of ``clients`` processes searching for ``duration`` seconds, and
    the server's memory half way through (its connections to the clients included)."""
    ctx = mp.get_context("spawn")
    ready, out = ctx.Barrier(clients + 1), ctx.Queue()
    queries = str(work / "queries.npy")
    procs = [
        ctx.Process(target=client, args=(system, server.target(), ef, queries, duration, seed, ready, out))
        for seed in range(clients)
    ]
    for proc in procs:
        proc.start()
    ready.wait(timeout=300)  # every client has connected and warmed up
    time.sleep(duration / 2)
    server_mb = server.memory_mb()
    parts = [out.get(timeout=duration + 120) for _ in procs]
    for proc in procs:
        proc.join(30)
    lat = np.concatenate([np.asarray(p["lat"]) for p in parts]) * 1000
    window = max(p["elapsed"] for p in parts)
    return {
        "clients": clients,
        "qps": sum(p["count"] for p in parts) / window,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "server_mb": server_mb,
    }


def choose_ef(system: str, target: str, work: Path) -> tuple[int | None, list[dict[str, Any]]]:
    """The narrowest ef of ``EF_SWEEP`` with recall@10 >= the target, with the sweep."""
    queries, truth = np.load(work / "queries.npy"), np.load(work / "gt.npy")
    sweep = []
    for ef in EF_SWEEP:
        searcher = Searcher(system, target, ef)
        found = [searcher.search(q) for q in queries]
        searcher.close()
        rec = float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))
        sweep.append({"ef": ef, "recall": rec})
        print(f"  ef {ef}: recall@10 {rec:.3f}", file=sys.stderr, flush=True)
        if rec >= TARGET_RECALL:
            return ef, sweep
    return EF_SWEEP[-1], sweep


def start_system(system: str, work: Path) -> tuple[Server | None, dict[str, Any]]:
    """``system``'s server started, loaded and its ef chosen, with its result so far (no
    runs yet); (None, the error) when it cannot be installed or started: reported, not dropped."""
    try:
        server = SERVERS[system](work)
    except Exception as exc:
        return None, {"system": system, "error": f"{type(exc).__name__}: {exc}"}
    try:
        t0 = time.perf_counter()
        server.load(np.load(work / "base.npy"))
        load_s = time.perf_counter() - t0
        ef, sweep = (None, []) if system.startswith("echo") else choose_ef(system, server.target(), work)
    except BaseException:
        server.close()
        raise
    return server, {"system": system, "name": server.name, "load_s": load_s, "ef": ef, "sweep": sweep}


def run_systems(
    systems: list[str], work: Path, clients: list[int], duration: float, rounds: int
) -> list[dict[str, Any]]:
    """Every system's server up at once, then ``rounds`` rounds of every client count, the
    systems alternated within each (this machine's speed drifts by tens of percent over
    minutes: one system measured after another compares two moments); each point is the
    median over the rounds (QPS of each round kept in ``qps_rounds``)."""
    servers: dict[str, Server] = {}
    results: list[dict[str, Any]] = []
    seq = 0
    try:
        for system in systems:
            print(f"{system} ...", file=sys.stderr, flush=True)
            server, result = start_system(system, work)
            results.append(result)
            if server is None:
                print(f"  {result['error']}", file=sys.stderr)
            else:
                servers[system] = server
        for r in range(rounds):
            for n in clients:
                for result in results:
                    if "error" in result:
                        continue
                    system = result["system"]
                    run = measure(servers[system], system, result["ef"], work, n, duration)
                    seq += 1  # the order of measurements across systems (they alternate)
                    result.setdefault("rounds", []).append({"round": r, "seq": seq, **run})
                    print(
                        f"  round {r + 1}/{rounds}, {system}, {n:>3} clients: {run['qps']:,.0f} QPS, "
                        f"p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms, "
                        f"server {run['server_mb']:,.0f} MB",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.close()
    for result in results:
        if "error" not in result:
            result["runs"] = [
                _median_run([x for x in result["rounds"] if x["clients"] == n]) for n in clients
            ]
    return results


def _median_run(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One client count's result over its rounds: the median of each figure."""
    return {
        "clients": rounds[0]["clients"],
        **{
            key: float(np.median([x[key] for x in rounds]))
            for key in ("qps", "p50_ms", "p99_ms", "server_mb")
        },
        "qps_rounds": [x["qps"] for x in rounds],
    }


def markdown(results: list[dict[str, Any]], params: dict[str, Any]) -> str:
    ok = {r["system"]: r for r in results if "error" not in r}
    counts = sorted({run["clients"] for r in ok.values() for run in r["runs"]})

    def run_of(system: str, n: int) -> dict[str, Any] | None:
        r = ok.get(system)
        return next((x for x in r["runs"] if x["clients"] == n), None) if r else None

    lines = [
        f"{params['dataset']}, {params['rows']:,} x {params['dim']}, {params['queries']} queries, k = {K}, "
        f"HNSW M = {M} / ef_construction = {EF_CONSTRUCTION}, ef per system for recall@10 >= {TARGET_RECALL}, "
        f"{params['duration']:.0f} s per measurement, median of {params.get('rounds', 1)} rounds "
        "(systems alternated in each), every client its own process"
        + (
            ", every hit fetched with its payload (--payloads text)"
            if params.get("payloads") == "text"
            else ""
        ),
        "",
        "| system | ef (recall@10) | clients | QPS | p50 ms | p99 ms | server MB (PSS) | QPS vs pgvector "
        "| QPS vs echo floor |",
        "|" + "---|" * 9,
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['error']} |" + " |" * 7)
            continue
        chosen = next((s for s in r["sweep"] if s["ef"] == r["ef"]), None)
        knob = f"{r['ef']} ({chosen['recall']:.3f})" if chosen else "-"
        for n in counts:
            run = run_of(r["system"], n)
            if run is None:
                continue
            ratios = []
            for peer in ("pgvector", "echo"):
                other = run_of(peer, n)
                ratios.append(f"{run['qps'] / other['qps']:.2f}x" if other else "-")
            lines.append(
                f"| {r['name']} | {knob} | {n} | {run['qps']:,.0f} | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | "
                f"{run['server_mb']:,.0f} | {ratios[0]} | {ratios[1]} |"
            )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> Path | None:
    plt = _pyplot()
    if plt is None:
        return None
    fig, (qps_ax, p99_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        if "error" in r:
            continue
        xs = [run["clients"] for run in r["runs"]]
        style = "-o" if r["system"].startswith("lamina") else "--s"
        qps_ax.plot(xs, [run["qps"] for run in r["runs"]], style, label=r["name"])
        p99_ax.plot(xs, [run["p99_ms"] for run in r["runs"]], style, label=r["name"])
    for ax, label in ((qps_ax, "QPS (single-query searches)"), (p99_ax, "p99 latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("client processes")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    qps_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench serve", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=0, help="first N rows of kernel-docs (default all 60,000)"
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client process counts")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of every client count, the systems alternated in each; each point is their median",
    )
    parser.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated, of {','.join(SYSTEMS)} (echo-sync: the echo on grpc's sync server)",
    )
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON, markdown and PNG")
    parser.add_argument(
        "--no-embedded", action="store_true", help="skip Lamina embedded against raw hnswlib (same graph)"
    )
    parser.add_argument(
        "--ef",
        type=int,
        help="ef of the embedded measurement when no Lamina server ran (e.g. --systems '' --ef 32: "
        "the embedded measurement alone); default: the ef the Lamina server chose",
    )
    parser.add_argument(
        "--payloads",
        choices=["none", "text"],
        default="none",
        help="text: every point carries its kernel-docs record as payload and every client fetches it "
        "(default none: ids only; the embedded measurement then stores {'doc': i})",
    )
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--echo-sync-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lamina-sync-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        echo_server(args.echo_server)
        return 0
    if args.echo_sync_server:
        echo_sync_server(args.echo_sync_server)
        return 0
    if args.lamina_sync_server:
        lamina_sync_server(args.lamina_sync_server, Path(args.work))
        return 0
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {SYSTEMS}")
    if args.rounds < 1:
        parser.error("--rounds takes a positive count")
    clients = sorted({int(c) for c in args.clients.split(",") if c})
    if not clients or min(clients) < 1:
        parser.error("--clients takes positive counts, e.g. 1,4,16")
    results: list[dict[str, Any]] = []
    single: dict[str, Any] | None = None
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        params = prepare(work, "kernel-docs", args.rows, 384, args.queries)
        params["duration"] = args.duration
        params["payloads"] = args.payloads
        if args.payloads == "text":
            write_payloads(work, params["rows"])
        print(f"data: {params}", file=sys.stderr)
        params["rounds"] = args.rounds
        results = run_systems(systems, work, clients, args.duration, args.rounds)
        lamina_ef = next((r["ef"] for r in results if r["system"] == "lamina" and "error" not in r), args.ef)
        if lamina_ef is not None and not args.no_embedded:
            print("lamina embedded vs raw hnswlib ...", file=sys.stderr, flush=True)
            single = embedded(work, lamina_ef, stored_payloads(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown(results, params) if results else ""
    if single is not None:
        table += ("\n\n" if table else "") + embedded_table(single)
    table += f"\n\nload average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)"
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{time.strftime('%Y-%m-%d')}-serve"
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                "params": params,
                "machine": machine(),
                "load_average": os.getloadavg(),
                "results": results,
                "embedded": single,
            },
            indent=2,
        )
    )
    stem.with_suffix(".md").write_text(table + "\n")
    png = plot(results, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md" + (f", {png.name}" if png else ""), file=sys.stderr)
    return 0
