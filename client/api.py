"""The public client: ``lamina.connect`` and the ``Client`` / ``Collection`` API.

One API over two transports. ``connect("./lamina-data")`` opens the data
directory in this process; ``connect("localhost:6334")`` talks to a server.
Inputs are shaped here once (numpy arrays, id lists) with the same checks the
engine applies, so both transports raise the same errors with the same words.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lamina.client.transport import EmbeddedTransport, GrpcTransport, Transport
from lamina.config import DEFAULT_LIMITS, Limits
from lamina.errors import InvalidArgument, NotFound
from lamina.types import (
    DEFAULT_SEGMENT_ROWS,
    DEFAULT_TENANT_INDEX_ROWS,
    CollectionConfig,
    CollectionInfo,
    Filter,
    Hit,
    IndexConfig,
    Metric,
    Payload,
    Point,
    PointId,
    QuantizationConfig,
    QueryPlan,
    SearchParams,
    SnapshotInfo,
    TenantInfo,
    check_payload_field,
)
from lamina.validation import as_rows, as_vector, check_collection_name, check_ids, check_int, check_tenant

_ADDRESS = re.compile(r"^(grpc://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")


def is_address(target: str) -> bool:
    """Whether ``connect(target)`` talks to a server (``host:port``) rather than opening a directory."""
    return bool(_ADDRESS.match(target))


def connect(
    target: str = "./lamina-data",
    *,
    timeout: float | None = 60.0,
    sync_writes: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    api_key: str | None = None,
    tls: bool = False,
    ca_cert: str | os.PathLike[str] | None = None,
    retries: int = 3,
) -> Client:
    """Open Lamina: a ``host:port`` (or ``grpc://host:port``) address talks to a
    server; anything else is a data directory opened in-process.

    ``sync_writes=True`` (embedded) fsyncs the write-ahead log on every write for
    power-loss durability; without it, acknowledged writes survive a process crash.
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
    if not isinstance(target, str) or not target:
        raise TypeError("connect() takes a data directory path or a 'host:port' address")
    if is_address(target):
        address = target.removeprefix("grpc://")
        ca = Path(ca_cert).read_bytes() if ca_cert is not None else None
        transport = GrpcTransport(
            address, timeout=timeout, limits=limits, api_key=api_key, tls=tls, ca_cert=ca, retries=retries
        )
        return Client(transport, limits)
    if api_key is not None or tls or ca_cert is not None:
        raise InvalidArgument("api_key, tls and ca_cert are for servers; an embedded database needs none")
    return Client(EmbeddedTransport(target, sync_writes=sync_writes, limits=limits), limits)


def restore_snapshot(
    snapshot: str | os.PathLike[str], data: str | os.PathLike[str], name: str | None = None
) -> CollectionInfo:
    """Restore a snapshot folder (``Collection.snapshot()``'s ``path``) as collection ``name``
    (default: its original name) in the data directory ``data``, which no running process
    may hold. Returns the restored collection's info."""
    transport = EmbeddedTransport(str(data))
    try:
        return transport.db.restore_snapshot(snapshot, name).info()
    finally:
        transport.close()


class Client:
    """A connection to Lamina, embedded or remote; use ``lamina.connect`` to make one."""

    def __init__(self, transport: Transport, limits: Limits = DEFAULT_LIMITS) -> None:
        self._transport = transport
        self._limits = limits

    def create_collection(
        self,
        name: str,
        dim: int,
        metric: Metric = "cosine",
        *,
        index: dict[str, Any] | IndexConfig | None = None,
        quantization: dict[str, Any] | QuantizationConfig | None = None,
        segment_rows: int = DEFAULT_SEGMENT_ROWS,
        payload_index: dict[str, str] | None = None,
        multi_tenant: bool = False,
        tenant_index_rows: int = DEFAULT_TENANT_INDEX_ROWS,
    ) -> Collection:
        """Create a collection of ``dim``-dimensional vectors compared by ``metric``
        (``"cosine"``, ``"dot"`` or ``"l2"``); AlreadyExists if the name is taken.

        ``index`` says how sealed segments are searched: ``{"type": "hnsw", "m": 16,
        "ef_construction": 200, "ef": 64}`` (the default) or ``{"type": "flat"}``.
        ``quantization`` keeps compact codes in memory and reranks their candidates
        with full-precision vectors: ``{"type": "binary", "bits": 1, "oversample": 4}``
        or ``{"type": "pq", "m": 64}``; None keeps full precision. ``segment_rows``
        rows are collected (and searched exactly) before they are sealed and indexed.
        ``payload_index`` maps payload fields to index types (``keyword``, ``int``,
        ``float``, ``bool``, ``datetime``, ``text``) so that filters on them are answered
        from the index and ``text`` fields can be searched with BM25.
        ``multi_tenant=True``: every point belongs to a tenant and every read and write
        names one (``tenant=``); tenants never see each other's points, small tenants are
        searched exactly and those with ``tenant_index_rows`` points or more get an HNSW
        index of their own.
        """
        check_collection_name(name)
        config = CollectionConfig(
            dim=dim,
            metric=metric,
            index=index if isinstance(index, IndexConfig) else IndexConfig.from_dict(index or {}),
            quantization=quantization
            if isinstance(quantization, QuantizationConfig) or quantization is None
            else QuantizationConfig.from_dict(quantization),
            segment_rows=segment_rows,
            payload_index=dict(payload_index or {}),
            multi_tenant=multi_tenant,
            tenant_index_rows=tenant_index_rows,
        )
        info = self._transport.create_collection(name, config)
        return Collection(self._transport, info, self._limits)

    def get_collection(self, name: str) -> Collection:
        """An existing collection; NotFound if there is none of that name."""
        check_collection_name(name)
        return Collection(self._transport, self._transport.get_collection(name), self._limits)

    def get_or_create_collection(self, name: str, dim: int, metric: Metric = "cosine") -> Collection:
        """The collection called ``name``, created with these settings if missing."""
        try:
            return self.get_collection(name)
        except NotFound:
            return self.create_collection(name, dim, metric)

    def list_collections(self) -> list[str]:
        """Names of all collections, sorted."""
        return [info.name for info in self._transport.list_collections()]

    def collections_info(self) -> list[CollectionInfo]:
        """Name, settings and point count of every collection."""
        return self._transport.list_collections()

    def delete_collection(self, name: str) -> None:
        """Drop a collection and all its points; NotFound if there is none."""
        check_collection_name(name)
        self._transport.delete_collection(name)

    def list_snapshots(self, collection: str | None = None) -> list[SnapshotInfo]:
        """Snapshots of one collection (or of all), oldest first; paths are on the server."""
        if collection is not None:
            check_collection_name(collection)
        return self._transport.list_snapshots(collection)

    def delete_snapshot(self, collection: str, snapshot: str) -> None:
        """Remove one snapshot; NotFound if there is none."""
        check_collection_name(collection)
        self._transport.delete_snapshot(collection, snapshot)

    def is_serving(self) -> bool:
        """Whether the server answers the gRPC health check with SERVING (embedded: always).
        Needs no API key: it is what container and load-balancer probes call."""
        return self._transport.is_serving()

    def server_info(self) -> dict[str, Any]:
        """Version and mode of the Lamina this client talks to."""
        return self._transport.server_info()

    def close(self) -> None:
        """Close the connection (embedded: flush and release the data directory)."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Collection:
    """A handle on one collection. Methods talk to the transport on every call."""

    def __init__(self, transport: Transport, info: CollectionInfo, limits: Limits = DEFAULT_LIMITS) -> None:
        self._transport = transport
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
        return f"Collection(name={self.name!r}, dim={self.dim}, metric={self.metric!r})"

    def info(self) -> CollectionInfo:
        """Settings and current point count."""
        return self._transport.get_collection(self.name)

    def upsert(
        self,
        ids: Sequence[PointId],
        vectors: Any,
        payloads: Sequence[Payload | None] | None = None,
        *,
        tenant: str | None = None,
    ) -> int:
        """Insert or replace points. ``vectors`` is an (n, dim) array (one row per id);
        ``payloads`` a list of JSON objects or None. The batch is applied whole or not
        at all and is durable when this returns. Returns the number of points written.
        In a multi-tenant collection the points belong to ``tenant`` (required there), whose
        ids are its own.

        >>> col.upsert(ids=[1, "doc-2"], vectors=np.random.rand(2, col.dim), payloads=[{"lang": "en"}, None])  # doctest: +SKIP
        2
        """
        id_list = check_ids(ids, self._limits, unique=False)
        return self._transport.upsert(self.name, id_list, as_rows(vectors), payloads, _tenant(tenant))

    def search(
        self,
        vector: Any,
        k: int = 10,
        filter: Filter | None = None,
        *,
        with_payload: bool = True,
        with_vector: bool = False,
        ef: int | None = None,
        oversample: float | None = None,
        exact: bool = False,
        plan: str = "auto",
        tenant: str | None = None,
    ) -> list[Hit]:
        """The ``k`` points nearest to ``vector`` that match ``filter``, best first.

        ``ef`` widens the HNSW beam and ``oversample`` the candidates per hit of a
        quantized tier for this query; ``exact=True`` scans every full-precision
        vector instead (the ground truth, slower). ``plan`` forces how a filtered
        query runs (``exact``, ``allow_list``, ``post_filter``); ``auto`` lets the
        planner choose per segment (see ``explain``). ``tenant``: search only that
        tenant's points (required in a multi-tenant collection).
        """
        return self._transport.search(
            self.name,
            as_vector(vector),
            check_int("k", k),
            filter,
            with_payload,
            with_vector,
            _params(ef, oversample, exact, plan),
            _tenant(tenant),
        )

    def explain(
        self,
        vector: Any,
        k: int = 10,
        filter: Filter | None = None,
        *,
        ef: int | None = None,
        oversample: float | None = None,
        exact: bool = False,
        plan: str = "auto",
        tenant: str | None = None,
    ) -> QueryPlan:
        """Run ``search`` and report how each segment answered it: the method (exact over
        the matching rows, the index with an allow-list, a widened walk, ...), how many
        rows matched the filter, why, and which filter fields used payload indexes."""
        return self._transport.explain(
            self.name,
            as_vector(vector),
            check_int("k", k),
            filter,
            _params(ef, oversample, exact, plan),
            _tenant(tenant),
        )

    def query(
        self,
        vector: Any = None,
        text: str | None = None,
        k: int = 10,
        filter: Filter | None = None,
        *,
        fusion: str = "rrf",
        weights: Sequence[float] | None = None,
        text_field: str | None = None,
        with_payload: bool = True,
        with_vector: bool = False,
        ef: int | None = None,
        oversample: float | None = None,
        exact: bool = False,
        tenant: str | None = None,
    ) -> list[Hit]:
        """Hybrid search: the dense ranking of ``vector`` and the BM25 ranking of ``text``
        (over the collection's ``text`` payload index, or ``text_field``) fused by
        reciprocal rank (``fusion="rrf"``) or by normalised scores (``"weighted"``),
        ``weights`` = (dense, text). ``filter`` applies to both sides. With only one of
        ``vector`` and ``text``, that ranking alone.

        >>> col.query(vector=q, text="binary quantization", k=10, filter={"in_stock": True})  # doctest: +SKIP
        """
        return self._transport.query(
            self.name,
            as_vector(vector) if vector is not None else None,
            text,
            check_int("k", k),
            filter,
            fusion,
            list(weights) if weights is not None else None,
            text_field,
            with_payload,
            with_vector,
            _params(ef, oversample, exact),
            _tenant(tenant),
        )

    def create_payload_index(self, field: str, type: str) -> bool:
        """Index payload ``field`` (dots reach nested keys) as ``keyword``, ``int``,
        ``float``, ``bool``, ``datetime`` or ``text``. Points already sealed are indexed
        in the background (``optimize()`` waits for it); filters stay exact meanwhile.
        Returns False if the field already had this index."""
        check_payload_field(field, type)
        return self._transport.create_payload_index(self.name, field, type)

    def drop_payload_index(self, field: str) -> bool:
        """Remove ``field``'s payload index; False if it had none."""
        return self._transport.drop_payload_index(self.name, field)

    def search_batch(
        self,
        vectors: Any,
        k: int = 10,
        filter: Filter | None = None,
        *,
        with_payload: bool = True,
        with_vector: bool = False,
        ef: int | None = None,
        oversample: float | None = None,
        exact: bool = False,
        plan: str = "auto",
        tenant: str | None = None,
    ) -> list[list[Hit]]:
        """One hit list per row of ``vectors`` (an (n, dim) array), each best first;
        ``ef``, ``oversample``, ``exact`` and ``plan`` as for ``search``."""
        return self._transport.search_batch(
            self.name,
            as_rows(vectors, "query vectors"),
            check_int("k", k),
            filter,
            with_payload,
            with_vector,
            _params(ef, oversample, exact, plan),
            _tenant(tenant),
        )

    def optimize(self, timeout: float | None = None) -> CollectionInfo:
        """Seal the points written so far into indexed segments and compact, waiting
        until done (or ``timeout`` seconds); returns the collection's info. The
        optimizer also does this by itself in the background."""
        return self._transport.optimize(self.name, timeout)

    def snapshot(self) -> SnapshotInfo:
        """Snapshot this collection while it keeps serving reads and writes. The snapshot
        holds every write acknowledged before the call; restore it with ``lamina restore``
        (or ``lamina.restore_snapshot``) into any data directory."""
        return self._transport.create_snapshot(self.name)

    def get(
        self,
        ids: Sequence[PointId],
        *,
        with_payload: bool = True,
        with_vector: bool = True,
        tenant: str | None = None,
    ) -> list[Point]:
        """Points for ``ids`` (of ``tenant``), in the order asked; ids that do not exist are left out."""
        return self._transport.get(
            self.name, check_ids(ids, self._limits, unique=False), with_payload, with_vector, _tenant(tenant)
        )

    def count(self, filter: Filter | None = None, *, tenant: str | None = None) -> int:
        """Number of points (of ``tenant``), or of those matching ``filter``."""
        return self._transport.count(self.name, filter, _tenant(tenant))

    def delete(
        self, ids: Sequence[PointId] | None = None, filter: Filter | None = None, *, tenant: str | None = None
    ) -> int:
        """Delete the points with these ``ids``, or those matching ``filter`` (among the
        points of ``tenant``); returns how many."""
        if (ids is None) == (filter is None):
            raise InvalidArgument("delete takes either ids or a filter (exactly one of them)")
        id_list = check_ids(ids, self._limits, unique=False) if ids is not None else None
        return self._transport.delete(self.name, id_list, filter, _tenant(tenant))

    def list_tenants(self) -> list[TenantInfo]:
        """The tenants of a multi-tenant collection with their point counts, by name (a
        tenant-scoped API key sees only its own)."""
        return self._transport.list_tenants(self.name)

    def delete_tenant(self, tenant: str) -> int:
        """Delete ``tenant`` and all its points at once, durably; returns how many it held.
        NotFound if the collection has no such tenant."""
        return self._transport.delete_tenant(self.name, check_tenant(tenant))

    def scroll(
        self,
        limit: int = 100,
        offset: PointId | None = None,
        filter: Filter | None = None,
        *,
        with_payload: bool = True,
        with_vector: bool = False,
        tenant: str | None = None,
    ) -> tuple[list[Point], PointId | None]:
        """A page of up to ``limit`` points (of ``tenant``) in id order starting at
        ``offset``; returns (points, offset of the next page or None at the end)."""
        if offset is not None:
            check_ids([offset], self._limits)
        return self._transport.scroll(
            self.name, check_int("limit", limit), offset, filter, with_payload, with_vector, _tenant(tenant)
        )


def _params(ef: int | None, oversample: float | None, exact: bool, plan: str = "auto") -> SearchParams | None:
    if ef is None and oversample is None and not exact and plan == "auto":
        return None
    return SearchParams(ef=ef, oversample=oversample, exact=exact, plan=plan)


def _tenant(tenant: str | None) -> str | None:
    """A tenant checked here, so that both transports reject a bad one with the same words."""
    return None if tenant is None else check_tenant(tenant)
