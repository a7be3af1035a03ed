"""The two transports behind the one client API.

``EmbeddedTransport`` (client/embedded.py) calls the engine in-process; ``GrpcTransport``
sends the same calls to a server. Both take and return Lamina's Python types, and both
raise the same ``LaminaError`` subclasses with the same messages.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamina.config import DEFAULT_LIMITS, Limits
from lamina.errors import ERROR_BY_CODE, Internal, LaminaError
from lamina.proto import convert
from lamina.proto.lamina.v1 import collections_pb2 as cpb
from lamina.proto.lamina.v1 import collections_pb2_grpc as cgrpc
from lamina.proto.lamina.v1 import info_pb2 as ipb
from lamina.proto.lamina.v1 import info_pb2_grpc as igrpc
from lamina.proto.lamina.v1 import points_pb2 as ppb
from lamina.proto.lamina.v1 import points_pb2_grpc as pgrpc
from lamina.proto.lamina.v1 import search_pb2 as spb
from lamina.proto.lamina.v1 import search_pb2_grpc as sgrpc
from lamina.types import (
    CollectionConfig,
    CollectionInfo,
    Filter,
    FloatMatrix,
    Hit,
    Payload,
    Point,
    PointId,
    QueryPlan,
    SearchParams,
    SnapshotInfo,
    TenantInfo,
)
from lamina.validation import encode_payloads

T = TypeVar("T")


@dataclass(frozen=True)
class Op(Generic[T]):
    """One client call, its arguments checked and shaped by the client API, not yet sent.

    ``name`` is the operation: a method of ``EmbeddedTransport`` (which runs it on the
    engine) and of ``GrpcRequests`` (which turns it into a gRPC request), taking ``args``.
    ``after`` shapes the transport's answer into the call's result (default: as is).
    Every transport, sync or async, embedded or remote, runs the same ``Op``s.
    """

    name: str
    args: tuple[Any, ...] = ()
    after: Callable[[Any], T] | None = None

    def finish(self, result: Any) -> T:
        return self.after(result) if self.after is not None else cast(T, result)


class Transport(Protocol):
    """Runs ``Op``s and returns their results; raises ``LaminaError`` subclasses."""

    def run(self, op: Op[T]) -> T: ...
    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """``Transport`` for asyncio: the same ``Op``s, awaited."""

    async def run(self, op: Op[T]) -> T: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class Call(Generic[T]):
    """One gRPC request: the stub (``service``) and ``method`` to call, the message, and how
    to read the answer. ``repeatable``: sending it twice leaves the same state as once (it may
    be retried when the server was unreachable); ``no_deadline``: it waits as long as it takes
    (optimize, snapshots); ``probe``: a health check, any failure answers False."""

    service: str
    method: str
    request: Any
    decode: Callable[[Any], T]
    repeatable: bool = True
    no_deadline: bool = False
    probe: bool = False


class GrpcRequests:
    """The one translation between Lamina's operations and gRPC messages, for the sync and
    the async transport alike: each method builds the ``Call`` for the operation of its name
    (same arguments as ``EmbeddedTransport``'s) and says how to decode the response."""

    def __init__(self, address: str, limits: Limits) -> None:
        self.address = address
        self.limits = limits

    def build(self, op: Op[Any]) -> Call[Any]:
        return cast(Call[Any], getattr(self, op.name)(*op.args))

    def create_collection(self, name: str, config: CollectionConfig) -> Call[CollectionInfo]:
        request = cpb.CreateCollectionRequest(name=name, config=convert.config_to_proto(config))
        return Call("collections", "Create", request, convert.info_from_proto, repeatable=False)

    def get_collection(self, name: str) -> Call[CollectionInfo]:
        return Call("collections", "Get", cpb.GetCollectionRequest(name=name), convert.info_from_proto)

    def list_collections(self) -> Call[list[CollectionInfo]]:
        return Call(
            "collections",
            "List",
            cpb.ListCollectionsRequest(),
            lambda r: [convert.info_from_proto(info) for info in r.collections],
        )

    def delete_collection(self, name: str) -> Call[None]:
        request = cpb.DeleteCollectionRequest(name=name)
        return Call("collections", "Delete", request, lambda r: None, repeatable=False)

    def upsert(
        self,
        name: str,
        ids: list[PointId],
        vectors: FloatMatrix,
        payloads: Sequence[Payload | None] | None,
        tenant: str | None,
    ) -> Call[int]:
        request = ppb.UpsertRequest(
            collection=name,
            tenant=tenant or "",
            ids=[convert.id_to_proto(i) for i in ids],
            vectors=convert.matrix_to_proto(vectors),
            payloads_json=[b.decode() for b in encode_payloads(payloads, len(ids), self.limits)]
            if payloads is not None
            else [],
        )
        return Call("points", "Upsert", request, lambda r: int(r.upserted))

    def add_documents(
        self,
        name: str,
        ids: list[PointId],
        documents: list[str],
        payloads: Sequence[Payload | None] | None,
        tenant: str | None,
    ) -> Call[int]:
        request = ppb.UpsertRequest(
            collection=name,
            tenant=tenant or "",
            ids=[convert.id_to_proto(i) for i in ids],
            documents=documents,
            payloads_json=[b.decode() for b in encode_payloads(payloads, len(ids), self.limits)]
            if payloads is not None
            else [],
        )
        return Call("points", "Upsert", request, lambda r: int(r.upserted))

    def get(
        self, name: str, ids: list[PointId], with_payload: bool, with_vector: bool, tenant: str | None
    ) -> Call[list[Point]]:
        request = ppb.GetRequest(
            collection=name,
            tenant=tenant or "",
            ids=[convert.id_to_proto(i) for i in ids],
            with_payload=with_payload,
            with_vector=with_vector,
        )
        return Call(
            "points",
            "Get",
            request,
            lambda r: [convert.point_from_proto(p, with_vector, with_payload) for p in r.points],
        )

    def delete(
        self, name: str, ids: list[PointId] | None, filter: Filter | None, tenant: str | None
    ) -> Call[int]:
        request = ppb.DeleteRequest(
            collection=name,
            tenant=tenant or "",
            ids=[convert.id_to_proto(i) for i in ids or []],
            filter_json=convert.filter_to_json(filter),
        )
        return Call("points", "Delete", request, lambda r: int(r.deleted))

    def count(self, name: str, filter: Filter | None, tenant: str | None) -> Call[int]:
        request = ppb.CountRequest(
            collection=name, filter_json=convert.filter_to_json(filter), tenant=tenant or ""
        )
        return Call("points", "Count", request, lambda r: int(r.count))

    def scroll(
        self,
        name: str,
        limit: int,
        offset: PointId | None,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        tenant: str | None,
    ) -> Call[tuple[list[Point], PointId | None]]:
        request = ppb.ScrollRequest(
            collection=name,
            tenant=tenant or "",
            limit=limit,
            filter_json=convert.filter_to_json(filter),
            with_payload=with_payload,
            with_vector=with_vector,
        )
        if offset is not None:
            request.offset.CopyFrom(convert.id_to_proto(offset))

        def decode(response: Any) -> tuple[list[Point], PointId | None]:
            points = [convert.point_from_proto(p, with_vector, with_payload) for p in response.points]
            has_next = response.HasField("next_offset")
            return points, convert.id_from_proto(response.next_offset) if has_next else None

        return Call("points", "Scroll", request, decode)

    def search(
        self,
        name: str,
        query: FloatMatrix | str,
        k: int,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        tenant: str | None,
    ) -> Call[list[Hit]]:
        request = spb.SearchRequest(
            collection=name,
            tenant=tenant or "",
            k=k,
            filter_json=convert.filter_to_json(filter),
            with_payload=with_payload,
            with_vector=with_vector,
            params=convert.params_to_proto(params),
            packed_hits=True,
        )
        _set_query(request, query)
        return Call("search", "Search", request, _response_decoder(with_vector, with_payload))

    def search_batch(
        self,
        name: str,
        queries: FloatMatrix | list[str],
        k: int,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        tenant: str | None,
    ) -> Call[list[list[Hit]]]:
        request = spb.SearchBatchRequest(
            collection=name,
            tenant=tenant or "",
            k=k,
            filter_json=convert.filter_to_json(filter),
            with_payload=with_payload,
            with_vector=with_vector,
            params=convert.params_to_proto(params),
        )
        if isinstance(queries, list):
            request.texts.extend(queries)
        else:
            request.vectors.CopyFrom(convert.matrix_to_proto(queries))
        hits = _hits_decoder(with_vector, with_payload)
        return Call("search", "SearchBatch", request, lambda r: [hits(hl) for hl in r.results])

    def explain(
        self,
        name: str,
        query: FloatMatrix | str,
        k: int,
        filter: Filter | None,
        params: SearchParams | None,
        tenant: str | None,
    ) -> Call[QueryPlan]:
        request = spb.SearchRequest(
            collection=name,
            tenant=tenant or "",
            k=k,
            filter_json=convert.filter_to_json(filter),
            params=convert.params_to_proto(params),
            explain=True,
        )
        _set_query(request, query)
        return Call("search", "Search", request, lambda r: convert.plan_from_proto(r.plan))

    def query(
        self,
        name: str,
        vector: FloatMatrix | None,
        text: str | None,
        k: int,
        filter: Filter | None,
        fusion: str,
        weights: list[float] | None,
        text_field: str | None,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        tenant: str | None,
    ) -> Call[list[Hit]]:
        request = spb.QueryRequest(
            collection=name,
            tenant=tenant or "",
            vector=vector.astype("<f4", copy=False).tobytes() if vector is not None else b"",
            k=k,
            filter_json=convert.filter_to_json(filter),
            fusion=fusion,
            weights=weights or [],
            text_field=text_field or "",
            with_payload=with_payload,
            with_vector=with_vector,
            params=convert.params_to_proto(params),
            packed_hits=True,
        )
        if text is not None:
            request.text = text
        return Call("search", "Query", request, _response_decoder(with_vector, with_payload))

    def embed(self, name: str, texts: list[str]) -> Call[FloatMatrix]:
        request = spb.EmbedRequest(collection=name, texts=texts)
        return Call("search", "Embed", request, lambda r: convert.matrix_from_proto(r.vectors))

    def list_tenants(self, name: str) -> Call[list[TenantInfo]]:
        return Call(
            "points",
            "ListTenants",
            ppb.ListTenantsRequest(collection=name),
            lambda r: [convert.tenant_from_info_proto(t) for t in r.tenants],
        )

    def delete_tenant(self, name: str, tenant: str) -> Call[int]:
        request = ppb.DeleteTenantRequest(collection=name, tenant=tenant)
        return Call("points", "DeleteTenant", request, lambda r: int(r.deleted))

    def create_payload_index(self, name: str, field: str, kind: str) -> Call[bool]:
        request = cpb.CreatePayloadIndexRequest(collection=name, field=field, type=kind)
        return Call("collections", "CreatePayloadIndex", request, lambda r: bool(r.changed))

    def drop_payload_index(self, name: str, field: str) -> Call[bool]:
        request = cpb.DropPayloadIndexRequest(collection=name, field=field)
        return Call("collections", "DropPayloadIndex", request, lambda r: bool(r.changed))

    def optimize(self, name: str, timeout: float | None) -> Call[CollectionInfo]:
        request = cpb.OptimizeRequest(name=name, timeout_seconds=timeout or 0.0)
        return Call("collections", "Optimize", request, convert.info_from_proto, no_deadline=True)

    def create_snapshot(self, name: str) -> Call[SnapshotInfo]:
        request = cpb.CreateSnapshotRequest(collection=name)
        return Call(
            "collections",
            "CreateSnapshot",
            request,
            convert.snapshot_from_proto,
            no_deadline=True,
            repeatable=False,
        )

    def list_snapshots(self, name: str | None) -> Call[list[SnapshotInfo]]:
        return Call(
            "collections",
            "ListSnapshots",
            cpb.ListSnapshotsRequest(collection=name or ""),
            lambda r: [convert.snapshot_from_proto(s) for s in r.snapshots],
        )

    def delete_snapshot(self, name: str, snapshot: str) -> Call[None]:
        request = cpb.DeleteSnapshotRequest(collection=name, snapshot=snapshot)
        return Call("collections", "DeleteSnapshot", request, lambda r: None, repeatable=False)

    def server_info(self) -> Call[dict[str, Any]]:
        def decode(response: Any) -> dict[str, Any]:
            return {
                "version": response.version,
                "mode": "server",
                "address": self.address,
                "uptime_seconds": response.uptime_seconds,
                "collections": response.collections,
                "requests_served": response.requests_served,
                "requests_rejected": response.requests_rejected,
                "requests_abandoned": response.requests_abandoned,
                "requests_in_flight": response.requests_in_flight,
                "read_only": response.read_only,
            }

        return Call("info", "GetInfo", ipb.GetInfoRequest(), decode)

    def is_serving(self) -> Call[bool]:
        serving = health_pb2.HealthCheckResponse.SERVING
        request = health_pb2.HealthCheckRequest()
        return Call("health", "Check", request, lambda r: bool(r.status == serving), probe=True)


def _set_query(request: spb.SearchRequest, query: FloatMatrix | str) -> None:
    """A search request's query: a text (the server embeds it) or a float32 vector."""
    if isinstance(query, str):
        request.text = query
    else:
        request.vector = query.astype("<f4", copy=False).tobytes()


def _hits_decoder(with_vector: bool, with_payload: bool) -> Callable[[Any], list[Hit]]:
    return lambda response: convert.hits_from_proto(response.hits, with_vector, with_payload)


def _response_decoder(with_vector: bool, with_payload: bool) -> Callable[[Any], list[Hit]]:
    """The hits of a SearchResponse, packed (``packed_hits``) or a message per hit."""
    return lambda response: convert.hits_from_response(response, with_vector, with_payload)


def _raise_lamina(err: grpc.RpcError) -> LaminaError:
    code = err.code().name if err.code() is not None else "INTERNAL"
    cls = ERROR_BY_CODE.get(code, Internal)
    return cls(err.details() or code)


class _GrpcChannel:
    """What the sync and the async gRPC transport share: the channel's settings, its stubs,
    the request builder and the retry policy. Plaintext, or TLS when ``tls`` is set or a
    ``ca_cert`` is given; ``api_key`` travels as ``authorization: Bearer`` metadata."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = 60.0,
        limits: Limits = DEFAULT_LIMITS,
        api_key: str | None = None,
        tls: bool = False,
        ca_cert: bytes | None = None,
        retries: int = 3,
        aio: bool = False,
    ) -> None:
        self.address = address
        self.limits = limits
        self.timeout = timeout
        self.retries = retries
        self.requests = GrpcRequests(address, limits)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        max_bytes = limits.max_message_bytes
        options = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # reconnect soon after a server restart, so that retries find it
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5000),
            # a connection of its own: a server without keys tells callers apart by connection
            # (fair admission), and one client's connection trouble is not another's
            ("grpc.use_local_subchannel_pool", 1),
        ]
        channels: Any = grpc.aio if aio else grpc
        if tls or ca_cert is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca_cert)
            self._channel = channels.secure_channel(address, credentials, options=options)
        else:
            self._channel = channels.insecure_channel(address, options=options)
        self._stubs: dict[str, Any] = {
            "collections": cgrpc.CollectionsStub(self._channel),
            "points": pgrpc.PointsStub(self._channel),
            "search": sgrpc.SearchStub(self._channel),
            "info": igrpc.InfoStub(self._channel),
            "health": health_pb2_grpc.HealthStub(self._channel),
        }

    def _prepare(self, op: Op[Any]) -> tuple[Call[Any], Callable[..., Any], dict[str, Any]]:
        """The call for ``op``, its stub method and the keyword arguments to send it with."""
        call = self.requests.build(op)
        send = getattr(self._stubs[call.service], call.method)
        kwargs = {
            "timeout": None if call.no_deadline else self.timeout,
            "metadata": None if call.probe else self._metadata,
        }
        return call, send, kwargs

    def _backoff(self, err: grpc.RpcError, call: Call[Any], attempt: int) -> float:
        """Seconds to wait before sending ``call`` again after ``err``, or raise its error.
        Up to ``retries`` more times, with exponential back-off (50 ms doubling to 2 s,
        jittered): when the server was too busy to take it (it did nothing), and, for a
        repeatable request, when the server was unreachable."""
        busy = err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and any(
            key == "lamina-retry" for key, _ in (err.trailing_metadata() or ())
        )
        unreachable = err.code() == grpc.StatusCode.UNAVAILABLE and call.repeatable
        if attempt >= self.retries or not (busy or unreachable):
            raise _raise_lamina(err) from None
        return min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)


class GrpcTransport(_GrpcChannel):
    """Talks to a Lamina server over a blocking gRPC channel."""

    def run(self, op: Op[T]) -> T:
        call, send, kwargs = self._prepare(op)
        attempt = 0
        while True:
            try:
                response = send(call.request, **kwargs)
            except grpc.RpcError as err:
                if call.probe:
                    return op.finish(False)
                time.sleep(self._backoff(err, call, attempt))
                attempt += 1
            else:
                return op.finish(call.decode(response))

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcTransport(_GrpcChannel):
    """Talks to a Lamina server over an asyncio gRPC channel (make it inside a running loop)."""

    def __init__(self, address: str, **options: Any) -> None:
        super().__init__(address, aio=True, **options)

    async def run(self, op: Op[T]) -> T:
        call, send, kwargs = self._prepare(op)
        attempt = 0
        while True:
            try:
                response = await send(call.request, **kwargs)
            except grpc.RpcError as err:
                if call.probe:
                    return op.finish(False)
                await asyncio.sleep(self._backoff(err, call, attempt))
                attempt += 1
            else:
                return op.finish(call.decode(response))

    async def close(self) -> None:
        await self._channel.close()
