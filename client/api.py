"""The public client: ``lamina.connect`` and the ``Client`` / ``Collection`` API.

One API over two transports, sync and async. ``connect("./lamina-data")`` opens the
data directory in this process; ``connect("localhost:6334")`` talks to a server;
``await connect_async(...)`` does either for asyncio code.

Each call is written once, in ``_ClientOps`` / ``_CollectionOps`` (lamina.client.ops): it checks and shapes
its inputs (numpy arrays, id lists) with the same checks the engine applies and returns
an ``Op``. ``Client`` / ``Collection`` run that ``Op`` on their transport and
``AsyncClient`` / ``AsyncCollection`` await it, so every transport raises the same
errors with the same words and answers with the same types.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from lamina.client.embedded import AsyncEmbeddedTransport, EmbeddedTransport
from lamina.client.ops import _ClientOps, _CollectionOps
from lamina.client.transport import (
    AsyncGrpcTransport,
    AsyncTransport,
    GrpcTransport,
    Op,
    Transport,
)
from lamina.config import DEFAULT_LIMITS, Limits
from lamina.engine.database import Database
from lamina.errors import InvalidArgument, NotFound
from lamina.types import (
    CollectionInfo,
    Metric,
)

P = ParamSpec("P")
T = TypeVar("T")

_ADDRESS = re.compile(
    r"(grpc://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}"
)  # fullmatch: no trailing newline


def is_address(target: str) -> bool:
    """Whether ``connect(target)`` talks to a server (``host:port``) rather than opening a directory."""
    return bool(_ADDRESS.fullmatch(target))


def connect(
    target: str = "./lamina-data",
    *,
    timeout: float | None = 60.0,
    sync_writes: bool = True,
    limits: Limits = DEFAULT_LIMITS,
    api_key: str | None = None,
    tls: bool = False,
    ca_cert: str | os.PathLike[str] | None = None,
    retries: int = 3,
) -> Client:
    """Open Lamina: a ``host:port`` (or ``grpc://host:port``) address talks to a
    server; anything else is a data directory opened in-process.

    ``sync_writes`` (embedded; default on) fsyncs the write-ahead log before a write
    returns, so acknowledged writes survive power loss; ``sync_writes=False`` saves that
    fsync (about a millisecond per call here) and still survives a process crash.
    Remote only: ``timeout`` is the per-request deadline in seconds; ``api_key`` is sent
    with every request (a server with keys configured requires one); ``tls=True``
    connects over TLS trusting the system's certificate authorities, ``ca_cert`` (a PEM
    file) over TLS trusting that one; ``retries`` is how often a request is sent again, with
    exponential back-off, when the server was too busy to take it or (for requests that
    can safely repeat: all but creating and dropping collections and snapshots) unreachable.

    >>> import tempfile, lamina
    >>> with lamina.connect(tempfile.mkdtemp()) as db:
    ...     db.list_collections()
    []
    """
    remote = _remote_options(target, timeout, limits, api_key, tls, ca_cert, retries)
    if remote is not None:
        return Client(GrpcTransport(**remote), limits)
    return Client(EmbeddedTransport(target, sync_writes=sync_writes, limits=limits), limits)


async def connect_async(
    target: str = "./lamina-data",
    *,
    timeout: float | None = 60.0,
    sync_writes: bool = True,
    limits: Limits = DEFAULT_LIMITS,
    api_key: str | None = None,
    tls: bool = False,
    ca_cert: str | os.PathLike[str] | None = None,
    retries: int = 3,
) -> AsyncClient:
    """``connect`` for asyncio: the same targets and options, an ``AsyncClient`` whose
    methods are those of ``Client``, awaited. Remote calls go over an asyncio gRPC
    channel; embedded calls run the engine in worker threads, off the event loop.

    >>> import asyncio, tempfile, lamina
    >>> async def main() -> list[str]:
    ...     async with await lamina.connect_async(tempfile.mkdtemp()) as db:
    ...         return await db.list_collections()
    >>> asyncio.run(main())
    []
    """
    remote = _remote_options(target, timeout, limits, api_key, tls, ca_cert, retries)
    if remote is not None:
        return AsyncClient(AsyncGrpcTransport(**remote), limits)
    embedded = await asyncio.to_thread(EmbeddedTransport, target, sync_writes=sync_writes, limits=limits)
    return AsyncClient(AsyncEmbeddedTransport(embedded), limits)


def _remote_options(
    target: str,
    timeout: float | None,
    limits: Limits,
    api_key: str | None,
    tls: bool,
    ca_cert: str | os.PathLike[str] | None,
    retries: int,
) -> dict[str, Any] | None:
    """The gRPC transport's settings when ``target`` is an address; None for a data directory."""
    if not isinstance(target, str) or not target:
        raise TypeError("connect() takes a data directory path or a 'host:port' address")
    if is_address(target):
        return {
            "address": target.removeprefix("grpc://"),
            "timeout": timeout,
            "limits": limits,
            "api_key": api_key,
            "tls": tls,
            "ca_cert": Path(ca_cert).read_bytes() if ca_cert is not None else None,
            "retries": retries,
        }
    if api_key is not None or tls or ca_cert is not None:
        raise InvalidArgument("api_key, tls and ca_cert are for servers; an embedded database needs none")
    return None


def restore_snapshot(
    snapshot: str | os.PathLike[str], data: str | os.PathLike[str], name: str | None = None
) -> CollectionInfo:
    """Restore a snapshot folder (``Collection.snapshot()``'s ``path``) as collection ``name``
    (default: its original name) in the data directory ``data``, which no running process
    may hold. Returns the restored collection's info."""
    db = Database(data)
    try:
        return db.restore_snapshot(snapshot, name).info()
    finally:
        db.close()


def _documented(method: Any, prepare: Callable[..., Any], returns: str | None = None) -> None:
    """Give ``method`` ``prepare``'s name, docstring and signature, answering what its ``Op``
    answers (or ``returns``), so that help() and IDEs show the call as users make it."""
    functools.update_wrapper(method, prepare)
    signature = inspect.signature(prepare)
    answer = returns or str(signature.return_annotation).removeprefix("Op[").removesuffix("]")
    method.__signature__ = signature.replace(return_annotation=answer)


def _sync(prepare: Callable[Concatenate[Any, P], Op[T]]) -> Callable[Concatenate[Any, P], T]:
    """The blocking method that runs ``prepare``'s ``Op`` on ``self._transport``."""

    def method(self: Any, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._transport.run(prepare(self, *args, **kwargs))

    _documented(method, prepare)
    return method


def _async(
    prepare: Callable[Concatenate[Any, P], Op[T]],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, T]]:
    """The coroutine method that awaits ``prepare``'s ``Op`` on ``self._transport``."""

    async def method(self: Any, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._transport.run(prepare(self, *args, **kwargs))

    _documented(method, prepare)
    return method


def _opens(
    prepare: Callable[Concatenate[Any, P], Op[CollectionInfo]],
) -> Callable[Concatenate[Client, P], Collection]:
    """``_sync`` for calls that answer a collection: wraps its info in a ``Collection``."""

    def method(self: Client, *args: P.args, **kwargs: P.kwargs) -> Collection:
        info = self._transport.run(prepare(self, *args, **kwargs))
        return Collection(self._transport, info, self._limits)

    _documented(method, prepare, "Collection")
    return method


def _opens_async(
    prepare: Callable[Concatenate[Any, P], Op[CollectionInfo]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, AsyncCollection]]:
    """``_async`` for calls that answer a collection: wraps its info in an ``AsyncCollection``."""

    async def method(self: AsyncClient, *args: P.args, **kwargs: P.kwargs) -> AsyncCollection:
        info = await self._transport.run(prepare(self, *args, **kwargs))
        return AsyncCollection(self._transport, info, self._limits)

    _documented(method, prepare, "AsyncCollection")
    return method


class Client:
    """A connection to Lamina, embedded or remote; use ``lamina.connect`` to make one."""

    def __init__(self, transport: Transport, limits: Limits = DEFAULT_LIMITS) -> None:
        self._transport = transport
        self._limits = limits

    create_collection = _opens(_ClientOps.create_collection)
    get_collection = _opens(_ClientOps.get_collection)
    list_collections = _sync(_ClientOps.list_collections)
    collections_info = _sync(_ClientOps.collections_info)
    delete_collection = _sync(_ClientOps.delete_collection)
    list_snapshots = _sync(_ClientOps.list_snapshots)
    delete_snapshot = _sync(_ClientOps.delete_snapshot)
    is_serving = _sync(_ClientOps.is_serving)
    server_info = _sync(_ClientOps.server_info)

    def get_or_create_collection(
        self, name: str, dim: int | None = None, metric: Metric = "cosine", *, embedding: Any = None
    ) -> Collection:
        """The collection called ``name``, created with these settings if missing."""
        try:
            return self.get_collection(name)
        except NotFound:
            return self.create_collection(name, dim, metric, embedding=embedding)

    def close(self) -> None:
        """Close the connection (embedded: flush and release the data directory)."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """``Client`` for asyncio (``await lamina.connect_async(...)``): the same methods, awaited."""

    def __init__(self, transport: AsyncTransport, limits: Limits = DEFAULT_LIMITS) -> None:
        self._transport = transport
        self._limits = limits

    create_collection = _opens_async(_ClientOps.create_collection)
    get_collection = _opens_async(_ClientOps.get_collection)
    list_collections = _async(_ClientOps.list_collections)
    collections_info = _async(_ClientOps.collections_info)
    delete_collection = _async(_ClientOps.delete_collection)
    list_snapshots = _async(_ClientOps.list_snapshots)
    delete_snapshot = _async(_ClientOps.delete_snapshot)
    is_serving = _async(_ClientOps.is_serving)
    server_info = _async(_ClientOps.server_info)

    async def get_or_create_collection(
        self, name: str, dim: int | None = None, metric: Metric = "cosine", *, embedding: Any = None
    ) -> AsyncCollection:
        """The collection called ``name``, created with these settings if missing."""
        try:
            return await self.get_collection(name)
        except NotFound:
            return await self.create_collection(name, dim, metric, embedding=embedding)

    async def close(self) -> None:
        """Close the connection (embedded: flush and release the data directory)."""
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Handle:
    """What a collection handle knows without asking: its name and settings."""

    def __init__(self, info: CollectionInfo, limits: Limits) -> None:
        self._limits = limits
        self.name = info.name
        self.config = info.config

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def metric(self) -> Metric:
        return self.config.metric

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, metric={self.metric!r})"


class Collection(_Handle):
    """A handle on one collection. Methods talk to the transport on every call."""

    def __init__(self, transport: Transport, info: CollectionInfo, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(info, limits)
        self._transport = transport

    info = _sync(_CollectionOps.info)
    upsert = _sync(_CollectionOps.upsert)
    add = _sync(_CollectionOps.add)
    embed = _sync(_CollectionOps.embed)
    search = _sync(_CollectionOps.search)
    explain = _sync(_CollectionOps.explain)
    query = _sync(_CollectionOps.query)
    create_payload_index = _sync(_CollectionOps.create_payload_index)
    drop_payload_index = _sync(_CollectionOps.drop_payload_index)
    search_batch = _sync(_CollectionOps.search_batch)
    optimize = _sync(_CollectionOps.optimize)
    snapshot = _sync(_CollectionOps.snapshot)
    get = _sync(_CollectionOps.get)
    count = _sync(_CollectionOps.count)
    delete = _sync(_CollectionOps.delete)
    list_tenants = _sync(_CollectionOps.list_tenants)
    delete_tenant = _sync(_CollectionOps.delete_tenant)
    scroll = _sync(_CollectionOps.scroll)


class AsyncCollection(_Handle):
    """``Collection`` for asyncio: the same methods, awaited."""

    def __init__(
        self, transport: AsyncTransport, info: CollectionInfo, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        super().__init__(info, limits)
        self._transport = transport

    info = _async(_CollectionOps.info)
    upsert = _async(_CollectionOps.upsert)
    add = _async(_CollectionOps.add)
    embed = _async(_CollectionOps.embed)
    search = _async(_CollectionOps.search)
    explain = _async(_CollectionOps.explain)
    query = _async(_CollectionOps.query)
    create_payload_index = _async(_CollectionOps.create_payload_index)
    drop_payload_index = _async(_CollectionOps.drop_payload_index)
    search_batch = _async(_CollectionOps.search_batch)
    optimize = _async(_CollectionOps.optimize)
    snapshot = _async(_CollectionOps.snapshot)
    get = _async(_CollectionOps.get)
    count = _async(_CollectionOps.count)
    delete = _async(_CollectionOps.delete)
    list_tenants = _async(_CollectionOps.list_tenants)
    delete_tenant = _async(_CollectionOps.delete_tenant)
    scroll = _async(_CollectionOps.scroll)
