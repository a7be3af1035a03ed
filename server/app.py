"""The gRPC server: the request pipeline (``Api``: key, parsing, authorization, admission,
deadline, metrics) in front of the servicers of server/servicers.py, health checking,
reflection and graceful shutdown. Protobuf stops here: requests are converted by
``lamina.proto.convert`` and the engine only sees Python types.

Two server models (``LaminaServer(sync_server=)``, default ``SYNC_SERVER``): grpc's sync
(thread-pool) server, whose per-call work costs less than grpc.aio's, which was more than
half of a search's time served (docs/architecture.md, "Server"); there a plain search
(``SearchServicer.search_here``) is answered on the gRPC thread that took it, and every other
call runs the servicers' async methods on the event loop that started the server
(``Api.serve``). Or grpc.aio's server, every call on the event loop (``Api.call``). Both
go through the same checks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lamina.config import ServerConfig
from lamina.engine.protocol import DatabaseProtocol
from lamina.errors import FailedPrecondition, LaminaError
from lamina.proto.lamina.v1 import collections_pb2 as cpb
from lamina.proto.lamina.v1 import info_pb2 as ipb
from lamina.proto.lamina.v1 import points_pb2 as ppb
from lamina.proto.lamina.v1 import search_pb2 as spb
from lamina.server.admission import Gate
from lamina.server.auth import ApiKey, Authorizer
from lamina.server.metrics import Metrics
from lamina.server.network import host_port, is_loopback
from lamina.server.processes import Forwarder, ProcessRole, forwarded_peer
from lamina.server.servicers import (
    CallAborted,
    CollectionsServicer,
    InfoServicer,
    PointsServicer,
    SearchServicer,
    collection_of,
    request_caller,
    request_key,
    tenant_of,
    time_left,
)

log = logging.getLogger("lamina.server")
#: the server model ``LaminaServer`` uses unless told (see the module's doc), the config file's
#: default: grpc's sync server. On a quiet 2-core host (2026-12-01, ``python -m bench serve``, 2
#: processes, 3 alternated rounds) it answered 1.11x / 1.01x / 1.09x grpc.aio's QPS at 1 / 4 / 16
#: clients (README, "Served, against PostgreSQL + pgvector"); grpc.aio stays there to choose
#: (``lamina serve --aio-server``)
SYNC_SERVER = ServerConfig.sync_server

SERVICE_NAMES = (
    cpb.DESCRIPTOR.services_by_name["Collections"].full_name,
    ppb.DESCRIPTOR.services_by_name["Points"].full_name,
    spb.DESCRIPTOR.services_by_name["Search"].full_name,
    ipb.DESCRIPTOR.services_by_name["Info"].full_name,
)


class CallContext:
    """The parts of ``grpc.aio.ServicerContext`` that the request pipeline uses, for callers
        inside the server process (the web console): the caller's metadata (its API key) in,
        the status out, and a deadline (``timeout`` seconds from now; None: none) as a gRPC
    client's. ``abort`` raises ``CallAborted`` as gRPC's raises to end the RPC."""

    def __init__(
        self, metadata: Sequence[tuple[str, str]] = (), peer: str = "console", timeout: float | None = None
    ) -> None:
        self._metadata = tuple(metadata)
        self._peer = peer
        self._at = None if timeout is None else time.monotonic() + timeout  # the call's deadline
        self._code: grpc.StatusCode | None = None

    def peer(self) -> str:
        """Who calls (admission control's caller when the server has no keys)."""
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - time.monotonic())

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self._code = code
        raise CallAborted(code, details, trailing_metadata or ())


class Api:
    """Every RPC of one server by path (``Service/Method``), behind one pipeline: check the
    caller's API key, parse the request (a request that is not a valid message, truncated
    or with bad UTF-8 in a string, is INVALID_ARGUMENT rather than gRPC's generic UNKNOWN),
    check the key's role, collections and tenants, run the servicer, trim the answer to what
    the key may see, and count and time the call. The gRPC handlers and the web console
    both call ``call``, so both follow the same rules, limits and errors; the gRPC handlers
    (``serve``) answer the hot methods (``hot``) on their own thread through the same checks."""

    def __init__(self, auth: Authorizer, metrics: Metrics | None) -> None:
        self.auth = auth
        self.metrics = metrics
        self.methods: dict[str, tuple[Callable[[bytes], Any], Any]] = {}  # path -> (parse, servicer method)
        self.handlers: list[grpc.GenericRpcHandler] = []  # for grpc.aio's server (``call``)
        self.sync_handlers: list[grpc.GenericRpcHandler] = []  # for grpc's sync server (``serve``)
        #: a reader process of ``--processes N``: sends what it does not answer to the writer
        self.forward: Forwarder | None = None
        #: path -> its hot path: (request, context, caller) -> the response, or None when the
        #: request is not one the hot path answers (see ``SearchServicer.search_here``)
        self.hot: dict[str, Callable[[Any, Any, str], Any]] = {}
        #: the event loop that runs the async pipeline (set by ``LaminaServer.start``)
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, module: Any, servicer: Any) -> None:
        """Register the one service in ``module``, implemented by ``servicer``."""
        (service,) = module.DESCRIPTOR.services_by_name.values()
        on_aio, on_sync = {}, {}
        for method in service.methods:
            path = f"{service.name}/{method.name}"
            parse = GetMessageClass(method.input_type).FromString
            self.methods[path] = (parse, getattr(servicer, method.name))
            serialize = GetMessageClass(method.output_type).SerializeToString

            async def handle(raw: bytes, context: grpc.aio.ServicerContext, path: str = path) -> Any:
                return await self.call(path, raw, context)

            def handle_sync(raw: bytes, context: grpc.ServicerContext, path: str = path) -> Any:
                return self.serve(path, raw, context)

            on_aio[method.name] = grpc.unary_unary_rpc_method_handler(handle, response_serializer=serialize)
            on_sync[method.name] = grpc.unary_unary_rpc_method_handler(
                handle_sync, response_serializer=serialize
            )
        self.handlers.append(grpc.method_handlers_generic_handler(service.full_name, on_aio))
        self.sync_handlers.append(grpc.method_handlers_generic_handler(service.full_name, on_sync))

    async def call(self, path: str, request: Any, context: Any) -> Any:
        """Answer one call of ``path``: ``request`` is the serialized message (gRPC) or the
        message itself (in-process callers); ``context`` a gRPC servicer context or a
        ``CallContext``."""
        started = time.perf_counter()
        code = "OK"
        try:
            if self.forward is not None and self.forward.forwards(path) and isinstance(request, bytes):
                return await self.forward(path, request, context)
            return await self._checked(path, request, context)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except BaseException:
            code = getattr(context.code(), "name", None) or "UNKNOWN"  # the status abort() set
            raise
        finally:
            if self.metrics is not None:
                self.metrics.observe(path, code, time.perf_counter() - started)

    def serve(self, path: str, raw: bytes, context: grpc.ServicerContext) -> Any:
        """Answer one gRPC call on grpc's thread: a hot method's request the hot path takes
        here, through the same checks as ``call``; any other call through ``call`` on the
        event loop."""
        hot = self.hot.get(path)
        if hot is None or (self.forward is not None and self.forward.forwards(path)):
            try:
                return self._on_loop(lambda ctx: self.call(path, raw, ctx), context)  # counted there
            except CallAborted as exc:
                _abort(context, exc)
        started = time.perf_counter()
        code = "OK"
        try:
            key, request = self.admitted(path, raw, context)
            response = hot(request, context, caller_of(key, context))
            if response is None:  # not for the hot path: the servicer's async method answers
                return self._on_loop(lambda ctx: self._answer(path, key, request, ctx), context)
            return self.trim(path, key, response)
        except CallAborted as exc:
            code = exc.code.name
            _abort(context, exc)
        except BaseException:
            code = "UNKNOWN"
            raise
        finally:
            if self.metrics is not None:
                self.metrics.observe(path, code, time.perf_counter() - started)

    def _on_loop(self, run: Callable[[CallContext], Any], context: grpc.ServicerContext) -> Any:
        """Await ``run(ctx)`` on the event loop: its result, or ``CallAborted`` with its status;
        ``ctx`` carries the call's metadata, peer and deadline. A call the client gives up on
        is cancelled on the loop, as grpc.aio cancels its handler."""
        assert self.loop is not None, "the server was not started"
        ctx = CallContext(context.invocation_metadata(), context.peer(), time_left(context))
        future = asyncio.run_coroutine_threadsafe(run(ctx), self.loop)
        context.add_callback(future.cancel)  # when the RPC ends; a no-op once answered
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise CallAborted(grpc.StatusCode.CANCELLED, "the call was cancelled") from None

    def admitted(self, path: str, raw: Any, context: Any) -> tuple[ApiKey | None, Any]:
        """The caller's key and its parsed request, once the key, the message and the key's
        rights are checked (``CallAborted`` says which failed)."""
        auth = self.auth
        parse, _ = self.methods[path]
        try:
            key = auth.authenticate(context.invocation_metadata())
        except LaminaError as exc:
            raise CallAborted(grpc.StatusCode[exc.code], str(exc)) from None
        try:
            request = parse(raw) if isinstance(raw, bytes) else raw
        except DecodeError as exc:
            raise CallAborted(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}") from None
        if key is not None:  # without keys every caller may do everything
            try:
                auth.authorize(key, path, collection_of(request), tenant_of(request))
            except LaminaError as exc:
                log.info("denied %s to key %r: %s", path, key.name, exc)
                raise CallAborted(grpc.StatusCode[exc.code], str(exc)) from None
        return key, request

    async def _checked(self, path: str, raw: Any, context: Any) -> Any:
        try:
            key, request = self.admitted(path, raw, context)
        except CallAborted as exc:
            await context.abort(exc.code, exc.details, trailing_metadata=exc.trailing)
        return await self._answer(path, key, request, context)

    async def _answer(self, path: str, key: ApiKey | None, request: Any, context: Any) -> Any:
        """The servicer's answer to an admitted request, trimmed to what ``key`` may see."""
        request_key.set(key)
        request_caller.set(caller_of(key, context))
        _, impl = self.methods[path]
        return self.trim(path, key, await impl(request, context))

    @staticmethod
    def trim(path: str, key: ApiKey | None, response: Any) -> Any:
        """``response`` without what ``key`` may not see (other collections, other tenants)."""
        if key is not None and key.collections is not None and path == "Collections/List":
            visible = [c for c in response.collections if key.sees(c.name)]
            del response.collections[:]
            response.collections.extend(visible)
        if key is not None and key.tenants is not None:
            if path == "Points/ListTenants":
                mine = [t for t in response.tenants if t.name in key.tenants]
                del response.tenants[:]
                response.tenants.extend(mine)
            elif path in ("Collections/Get", "Collections/List"):  # totals span every tenant
                for info in [response] if path == "Collections/Get" else response.collections:
                    info.count = 0
                    info.ClearField("status")
        return response


def caller_of(key: ApiKey | None, context: Any) -> str:
    """Who a request counts against in admission control: its API key, or without keys its
    connection (for a call a reader process forwarded, the reader's caller's)."""
    return f"key {key.name}" if key is not None else f"peer {forwarded_peer(context)}"


def _abort(context: grpc.ServicerContext, aborted: CallAborted) -> NoReturn:
    """End a call on grpc's sync server with ``aborted``'s status (raises)."""
    if aborted.trailing:
        context.set_trailing_metadata(aborted.trailing)
    context.abort(aborted.code, aborted.details)
    raise AssertionError("unreachable")  # abort raises


class LaminaServer:
    """A running gRPC server over one Database.

    ``await server.start()`` binds and returns the port (``port=0`` picks a free one);
    ``await server.stop()`` stops taking requests, drains them and closes the database.
    """

    def __init__(
        self,
        db: DatabaseProtocol,
        host: str = "127.0.0.1",
        port: int = 6334,
        workers: int = 8,
        keys: Sequence[ApiKey] = (),
        tls: tuple[bytes, bytes] | None = None,
        metrics_port: int | None = None,
        metrics_key: str | None = None,
        metrics_names: bool = False,
        role: ProcessRole | None = None,
        sync_server: bool = SYNC_SERVER,
    ) -> None:
        self.db = db
        #: grpc's sync server with Search's hot path (True), or grpc.aio's (False); see the module
        self.sync_server = sync_server
        self.role = role  # one process of ``lamina serve --processes N`` (None: the only one)
        self.metrics_port = metrics_port  # None: no metrics endpoint; 0: pick a port
        self.metrics_key = metrics_key  # sha256:... hash of the key a scrape must carry (None: none)
        self.metrics_names = metrics_names  # label gauges with collection names (default: totals only)
        self.metrics: Metrics | None = None
        self.host = host
        self.port = port
        self.workers = workers
        self.auth = Authorizer(keys)
        self.tls = tls  # (certificate chain, private key), PEM
        self._executor: ThreadPoolExecutor | None = None
        self._calls: ThreadPoolExecutor | None = None  # grpc's server's threads
        self._server: grpc.Server | grpc.aio.Server | None = None
        self._health: health.HealthServicer | health.aio.HealthServicer | None = None
        self.api: Api | None = None  # set by start(): every RPC behind the auth pipeline

    def _build(self) -> grpc.Server | grpc.aio.Server:
        """Make the gRPC server and the pipeline behind it (grpc.aio's on the running loop)."""
        db = self.db
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="lamina-worker")
        limits = db.limits
        max_bytes = db.limits.max_message_bytes
        # A backstop behind the Gate, which answers with a clearer message first. On the sync
        # server every call holds one of grpc's threads until answered (calls served on the event
        # loop wait for it there), so there is a thread for each: a burst past the Gate's limits
        # reaches the Gate at once and gets its RESOURCE_EXHAUSTED, never a queue.
        calls = 2 * limits.max_concurrent_requests + 16
        options = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # one process: a port in use is an error; several share it (the supervisor checked it)
            ("grpc.so_reuseport", 0 if self.role is None else 1),
        ]
        server: grpc.Server | grpc.aio.Server
        if self.sync_server:
            self._calls = ThreadPoolExecutor(max_workers=calls, thread_name_prefix="lamina-grpc")
            server = grpc.server(self._calls, maximum_concurrent_rpcs=calls, options=options)
            self._health = health.HealthServicer()
        else:
            server = grpc.aio.server(maximum_concurrent_rpcs=calls, options=options)
            self._health = health.aio.HealthServicer()
        self.gate = Gate(
            limits.max_concurrent_requests, limits.max_requests_per_caller, self._executor, self.workers
        )
        self.metrics = Metrics(db, self.gate, names=self.metrics_names)
        servicers = (
            (cpb, CollectionsServicer),
            (ppb, PointsServicer),
            (spb, SearchServicer),
            (ipb, InfoServicer),
        )
        self.api = Api(self.auth, self.metrics)
        for module, cls in servicers:
            servicer = cls(db, self.gate)
            self.api.add(module, servicer)
            if isinstance(servicer, SearchServicer):
                self.api.hot["Search/Search"] = servicer.search_here
        if self.role is not None and not self.role.writer:
            self.api.forward = Forwarder(self.role.run)
        server.add_generic_rpc_handlers(self.api.sync_handlers if self.sync_server else self.api.handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return server

    async def start(self) -> int:
        loopback = is_loopback(self.host)
        if not self.auth.enabled and not loopback:
            raise FailedPrecondition(
                f"refusing to serve on {self.host} without API keys: anyone who can reach it could read and "
                "write. Add [[keys]] to the config file (lamina keys create), or bind 127.0.0.1"
            )
        self._server = self._build()
        address = host_port(self.host, self.port)
        if self.tls is not None:
            cert, key = self.tls
            self.port = self._server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        if self.role is not None:
            self._server.add_insecure_port(self.role.address)  # the writer's: readers forward to it
        assert self.api is not None and self._health is not None
        self.api.loop = asyncio.get_running_loop()  # the servicers' async methods run on it
        if isinstance(self._server, grpc.aio.Server):
            await self._server.start()
        else:
            self._server.start()
        for name in ("", *SERVICE_NAMES):
            answer = self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
            if inspect.isawaitable(answer):  # grpc.aio's
                await answer
        log.info(
            "serving on %s over %s on grpc's %s server (data: %s)",
            host_port(self.host, self.port),
            "TLS" if self.tls else "plaintext",
            "sync" if self.sync_server else "aio",
            self.db.path,
        )
        if self.metrics_port is not None and self.metrics is not None:
            self.metrics_port = self.metrics.serve(self.host, self.metrics_port, self.tls, self.metrics_key)
        if self.auth.enabled:
            log.info("API keys required (%d configured)", len(self.auth))
        else:
            log.info("no API keys configured: serving local clients only (%s)", self.host)
        if self.tls is None and self.auth.enabled and not loopback:
            log.warning("API keys travel in plaintext: configure [tls] for connections from other machines")
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, let those in flight finish for up to ``grace`` seconds, then
        stop their work (each at its next deadline check) and close the database."""
        log.info("shutting down: finishing requests in flight (up to %.0fs), then stopping them", grace)
        if self._health is not None:
            answer = self._health.enter_graceful_shutdown()
            if inspect.isawaitable(answer):
                await answer
        if isinstance(self._server, grpc.aio.Server):
            await self._server.stop(grace)
        elif self._server is not None:  # off the loop's thread: the calls it serves finish meanwhile
            await asyncio.to_thread(self._server.stop(grace).wait)
        if self._executor is not None:
            if self.gate.in_flight:
                log.info("stopping the work of %d request(s) still in flight", self.gate.in_flight)
            self.gate.cancel_all("the server is shutting down")
            # off the loop's thread: the jobs' completions run on it meanwhile
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        if self._calls is not None:  # the calls grpc still runs stop at their next deadline check
            await asyncio.to_thread(self._calls.shutdown, wait=True)
        if self.metrics is not None:
            self.metrics.stop()
        if self.api is not None and self.api.forward is not None:
            await self.api.forward.close()
        self.db.close()
        log.info("stopped; data flushed and closed")


class Companion(Protocol):
    """A service that runs beside the gRPC server on its event loop and calls its ``Api``
    (the web console): started once the server is serving, stopped before it drains."""

    async def start(self, server: LaminaServer) -> None: ...

    async def stop(self) -> None: ...


async def serve(
    db: DatabaseProtocol,
    host: str,
    port: int,
    workers: int = 8,
    keys: Sequence[ApiKey] = (),
    tls: tuple[bytes, bytes] | None = None,
    metrics_port: int | None = None,
    metrics_key: str | None = None,
    metrics_names: bool = False,
    grace: float = 5.0,
    companions: Sequence[Companion] = (),
    role: ProcessRole | None = None,
    sync_server: bool = SYNC_SERVER,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (``grace`` seconds for the
    requests in flight, then their work is stopped). ``role``: one process of ``lamina serve
    --processes N`` (server/processes.py); ``sync_server``: grpc's sync server with Search's
    hot path instead of grpc.aio's (see the module's doc)."""
    server = LaminaServer(
        db, host, port, workers, keys, tls, metrics_port, metrics_key, metrics_names, role, sync_server
    )
    await server.start()
    started: list[Companion] = []
    try:
        for companion in companions:
            await companion.start(server)
            started.append(companion)
        if role is not None:  # ready once its companions serve too: a console port taken is a start failure
            role.announce()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for companion in reversed(started):
            await companion.stop()
        await server.stop(grace)
