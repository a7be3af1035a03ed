"""The two transports behind the one client API.

``EmbeddedTransport`` calls the engine in-process; ``GrpcTransport`` sends the
same calls to a server. Both take and return Lamina's Python types, and both
raise the same ``LaminaError`` subclasses with the same messages.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc

from lamina.config import DEFAULT_LIMITS, Limits
from lamina.engine.database import Database
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


class Transport(Protocol):
    """What a transport must do; arguments arrive already shaped by the client."""

    def create_collection(self, name: str, config: CollectionConfig) -> CollectionInfo: ...
    def get_collection(self, name: str) -> CollectionInfo: ...
    def list_collections(self) -> list[CollectionInfo]: ...
    def delete_collection(self, name: str) -> None: ...
    def upsert(
        self,
        name: str,
        ids: list[PointId],
        vectors: FloatMatrix,
        payloads: Sequence[Payload | None] | None,
        tenant: str | None,
    ) -> int: ...
    def get(
        self, name: str, ids: list[PointId], with_payload: bool, with_vector: bool, tenant: str | None
    ) -> list[Point]: ...
    def delete(
        self, name: str, ids: list[PointId] | None, filter: Filter | None, tenant: str | None
    ) -> int: ...
    def count(self, name: str, filter: Filter | None, tenant: str | None) -> int: ...
    def scroll(
        self,
        name: str,
        limit: int,
        offset: PointId | None,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        tenant: str | None,
    ) -> tuple[list[Point], PointId | None]: ...
    def search(
        self,
        name: str,
        query: FloatMatrix,
        k: int,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        tenant: str | None,
    ) -> list[Hit]: ...
    def search_batch(
        self,
        name: str,
        queries: FloatMatrix,
        k: int,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        tenant: str | None,
    ) -> list[list[Hit]]: ...
    def explain(
        self,
        name: str,
        query: FloatMatrix,
        k: int,
        filter: Filter | None,
        params: SearchParams | None,
        tenant: str | None,
    ) -> QueryPlan: ...
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
    ) -> list[Hit]: ...
    def list_tenants(self, name: str) -> list[TenantInfo]: ...
    def delete_tenant(self, name: str, tenant: str) -> int: ...
    def create_payload_index(self, name: str, field: str, kind: str) -> bool: ...
    def drop_payload_index(self, name: str, field: str) -> bool: ...
    def optimize(self, name: str, timeout: float | None) -> CollectionInfo: ...
    def create_snapshot(self, name: str) -> SnapshotInfo: ...
    def list_snapshots(self, name: str | None) -> list[SnapshotInfo]: ...
    def delete_snapshot(self, name: str, snapshot: str) -> None: ...
    def server_info(self) -> dict[str, Any]: ...
    def is_serving(self) -> bool: ...
    def close(self) -> None: ...


class EmbeddedTransport:
    """Runs the engine in this process over a data directory."""

    def __init__(self, path: str, *, sync_writes: bool = False, limits: Limits = DEFAULT_LIMITS) -> None:
        self.db = Database(path, sync_writes=sync_writes, limits=limits)

    def create_collection(self, name: str, config: CollectionConfig) -> CollectionInfo:
        return self.db.create_collection(name, config).info()

    def get_collection(self, name: str) -> CollectionInfo:
        return self.db.get_collection(name).info()

    def list_collections(self) -> list[CollectionInfo]:
        return [self.db.get_collection(n).info() for n in self.db.list_collections()]

    def delete_collection(self, name: str) -> None:
        self.db.delete_collection(name)

    def upsert(
        self,
        name: str,
        ids: list[PointId],
        vectors: FloatMatrix,
        payloads: Sequence[Payload | None] | None,
        tenant: str | None,
    ) -> int:
        return self.db.get_collection(name).upsert(ids, vectors, payloads, tenant=tenant)

    def get(
        self, name: str, ids: list[PointId], with_payload: bool, with_vector: bool, tenant: str | None
    ) -> list[Point]:
        return self.db.get_collection(name).get(
            ids, with_payload=with_payload, with_vector=with_vector, tenant=tenant
        )

    def delete(self, name: str, ids: list[PointId] | None, filter: Filter | None, tenant: str | None) -> int:
        return self.db.get_collection(name).delete(ids=ids, filter=filter, tenant=tenant)

    def count(self, name: str, filter: Filter | None, tenant: str | None) -> int:
        return self.db.get_collection(name).count(filter, tenant=tenant)

    def scroll(
        self,
        name: str,
        limit: int,
        offset: PointId | None,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        tenant: str | None,
    ) -> tuple[list[Point], PointId | None]:
        return self.db.get_collection(name).scroll(
            limit, offset, filter, with_payload, with_vector, tenant=tenant
        )

    def search(
        self,
        name: str,
        query: FloatMatrix,
        k: int,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        tenant: str | None,
    ) -> list[Hit]:
        return self.db.get_collection(name).search(
            query, k, filter, with_payload, with_vector, params, tenant=tenant
        )

    def search_batch(
        self,
        name: str,
        queries: FloatMatrix,
        k: int,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        tenant: str | None,
    ) -> list[list[Hit]]:
        return self.db.get_collection(name).search_batch(
            queries, k, filter, with_payload, with_vector, params, tenant=tenant
        )

    def explain(
        self,
        name: str,
        query: FloatMatrix,
        k: int,
        filter: Filter | None,
        params: SearchParams | None,
        tenant: str | None,
    ) -> QueryPlan:
        return self.db.get_collection(name).explain(query, k, filter, params, tenant=tenant)

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
    ) -> list[Hit]:
        return self.db.get_collection(name).query(
            vector,
            text,
            k,
            filter,
            fusion,
            weights,
            text_field,
            with_payload,
            with_vector,
            params,
            tenant=tenant,
        )

    def list_tenants(self, name: str) -> list[TenantInfo]:
        return self.db.get_collection(name).list_tenants()

    def delete_tenant(self, name: str, tenant: str) -> int:
        return self.db.get_collection(name).delete_tenant(tenant)

    def create_payload_index(self, name: str, field: str, kind: str) -> bool:
        return self.db.get_collection(name).create_payload_index(field, kind)

    def drop_payload_index(self, name: str, field: str) -> bool:
        return self.db.get_collection(name).drop_payload_index(field)

    def optimize(self, name: str, timeout: float | None) -> CollectionInfo:
        col = self.db.get_collection(name)
        col.optimize(timeout)
        return col.info()

    def create_snapshot(self, name: str) -> SnapshotInfo:
        return self.db.create_snapshot(name)

    def list_snapshots(self, name: str | None) -> list[SnapshotInfo]:
        return self.db.list_snapshots(name)

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        self.db.delete_snapshot(name, snapshot)

    def server_info(self) -> dict[str, Any]:
        from lamina import __version__

        return {"version": __version__, "mode": "embedded", "collections": len(self.db.list_collections())}

    def is_serving(self) -> bool:
        self.db.list_collections()  # FailedPrecondition once closed
        return True

    def close(self) -> None:
        self.db.close()


def _raise_lamina(err: grpc.RpcError) -> LaminaError:
    code = err.code().name if err.code() is not None else "INTERNAL"
    cls = ERROR_BY_CODE.get(code, Internal)
    return cls(err.details() or code)


class GrpcTransport:
    """Talks to a Lamina server over gRPC: plaintext, or TLS when ``tls`` is set or a
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
    ) -> None:
        self.address = address
        self.limits = limits
        self.timeout = timeout
        self.retries = retries
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        max_bytes = limits.max_message_bytes
        options = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # reconnect soon after a server restart, so that retries find it
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        if tls or ca_cert is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca_cert)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._collections = cgrpc.CollectionsStub(self._channel)
        self._points = pgrpc.PointsStub(self._channel)
        self._search = sgrpc.SearchStub(self._channel)
        self._info = igrpc.InfoStub(self._channel)

    def _call(
        self, method: Callable[..., T], request: Any, *, no_deadline: bool = False, repeatable: bool = True
    ) -> T:
        """Send one request. Up to ``retries`` more times, with exponential back-off (50 ms
        doubling to 2 s, jittered): when the server was too busy to take it (it did nothing),
        and, for a ``repeatable`` request (one whose repetition leaves the same state), when
        the server was unreachable."""
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=None if no_deadline else self.timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                busy = err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and any(
                    key == "lamina-retry" for key, _ in (err.trailing_metadata() or ())
                )
                unreachable = err.code() == grpc.StatusCode.UNAVAILABLE and repeatable
                if attempt == self.retries or not (busy or unreachable):
                    raise _raise_lamina(err) from None
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def create_collection(self, name: str, config: CollectionConfig) -> CollectionInfo:
        request = cpb.CreateCollectionRequest(name=name, config=convert.config_to_proto(config))
        return convert.info_from_proto(self._call(self._collections.Create, request, repeatable=False))

    def get_collection(self, name: str) -> CollectionInfo:
        return convert.info_from_proto(self._call(self._collections.Get, cpb.GetCollectionRequest(name=name)))

    def list_collections(self) -> list[CollectionInfo]:
        response = self._call(self._collections.List, cpb.ListCollectionsRequest())
        return [convert.info_from_proto(info) for info in response.collections]

    def delete_collection(self, name: str) -> None:
        self._call(self._collections.Delete, cpb.DeleteCollectionRequest(name=name), repeatable=False)

    def upsert(
        self,
        name: str,
        ids: list[PointId],
        vectors: FloatMatrix,
        payloads: Sequence[Payload | None] | None,
        tenant: str | None,
    ) -> int:
        request = ppb.UpsertRequest(
            collection=name,
            tenant=tenant or "",
            ids=[convert.id_to_proto(i) for i in ids],
            vectors=convert.matrix_to_proto(vectors),
            payloads_json=[b.decode() for b in encode_payloads(payloads, len(ids), self.limits)]
            if payloads is not None
            else [],
        )
        return int(self._call(self._points.Upsert, request).upserted)

    def get(
        self, name: str, ids: list[PointId], with_payload: bool, with_vector: bool, tenant: str | None
    ) -> list[Point]:
        request = ppb.GetRequest(
            collection=name,
            tenant=tenant or "",
            ids=[convert.id_to_proto(i) for i in ids],
            with_payload=with_payload,
            with_vector=with_vector,
        )
        response = self._call(self._points.Get, request)
        return [convert.point_from_proto(p, with_vector, with_payload) for p in response.points]

    def delete(self, name: str, ids: list[PointId] | None, filter: Filter | None, tenant: str | None) -> int:
        request = ppb.DeleteRequest(
            collection=name,
            tenant=tenant or "",
            ids=[convert.id_to_proto(i) for i in ids or []],
            filter_json=convert.filter_to_json(filter),
        )
        return int(self._call(self._points.Delete, request).deleted)

    def count(self, name: str, filter: Filter | None, tenant: str | None) -> int:
        request = ppb.CountRequest(
            collection=name, filter_json=convert.filter_to_json(filter), tenant=tenant or ""
        )
        return int(self._call(self._points.Count, request).count)

    def scroll(
        self,
        name: str,
        limit: int,
        offset: PointId | None,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        tenant: str | None,
    ) -> tuple[list[Point], PointId | None]:
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
        response = self._call(self._points.Scroll, request)
        points = [convert.point_from_proto(p, with_vector, with_payload) for p in response.points]
        next_offset = (
            convert.id_from_proto(response.next_offset) if response.HasField("next_offset") else None
        )
        return points, next_offset

    def search(
        self,
        name: str,
        query: FloatMatrix,
        k: int,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        tenant: str | None,
    ) -> list[Hit]:
        request = spb.SearchRequest(
            collection=name,
            tenant=tenant or "",
            vector=query.astype("<f4", copy=False).tobytes(),
            k=k,
            filter_json=convert.filter_to_json(filter),
            with_payload=with_payload,
            with_vector=with_vector,
            params=convert.params_to_proto(params),
        )
        response = self._call(self._search.Search, request)
        return [convert.hit_from_proto(h, with_vector, with_payload) for h in response.hits]

    def search_batch(
        self,
        name: str,
        queries: FloatMatrix,
        k: int,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        tenant: str | None,
    ) -> list[list[Hit]]:
        request = spb.SearchBatchRequest(
            collection=name,
            tenant=tenant or "",
            vectors=convert.matrix_to_proto(queries),
            k=k,
            filter_json=convert.filter_to_json(filter),
            with_payload=with_payload,
            with_vector=with_vector,
            params=convert.params_to_proto(params),
        )
        response = self._call(self._search.SearchBatch, request)
        return [
            [convert.hit_from_proto(h, with_vector, with_payload) for h in hl.hits] for hl in response.results
        ]

    def explain(
        self,
        name: str,
        query: FloatMatrix,
        k: int,
        filter: Filter | None,
        params: SearchParams | None,
        tenant: str | None,
    ) -> QueryPlan:
        request = spb.SearchRequest(
            collection=name,
            tenant=tenant or "",
            vector=query.astype("<f4", copy=False).tobytes(),
            k=k,
            filter_json=convert.filter_to_json(filter),
            params=convert.params_to_proto(params),
            explain=True,
        )
        return convert.plan_from_proto(self._call(self._search.Search, request).plan)

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
    ) -> list[Hit]:
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
        )
        if text is not None:
            request.text = text
        response = self._call(self._search.Query, request)
        return [convert.hit_from_proto(h, with_vector, with_payload) for h in response.hits]

    def list_tenants(self, name: str) -> list[TenantInfo]:
        response = self._call(self._points.ListTenants, ppb.ListTenantsRequest(collection=name))
        return [convert.tenant_from_info_proto(t) for t in response.tenants]

    def delete_tenant(self, name: str, tenant: str) -> int:
        request = ppb.DeleteTenantRequest(collection=name, tenant=tenant)
        return int(self._call(self._points.DeleteTenant, request).deleted)

    def create_payload_index(self, name: str, field: str, kind: str) -> bool:
        request = cpb.CreatePayloadIndexRequest(collection=name, field=field, type=kind)
        return bool(self._call(self._collections.CreatePayloadIndex, request).changed)

    def drop_payload_index(self, name: str, field: str) -> bool:
        request = cpb.DropPayloadIndexRequest(collection=name, field=field)
        return bool(self._call(self._collections.DropPayloadIndex, request).changed)

    def optimize(self, name: str, timeout: float | None) -> CollectionInfo:
        request = cpb.OptimizeRequest(name=name, timeout_seconds=timeout or 0.0)
        return convert.info_from_proto(self._call(self._collections.Optimize, request, no_deadline=True))

    def create_snapshot(self, name: str) -> SnapshotInfo:
        request = cpb.CreateSnapshotRequest(collection=name)
        return convert.snapshot_from_proto(
            self._call(self._collections.CreateSnapshot, request, no_deadline=True, repeatable=False)
        )

    def list_snapshots(self, name: str | None) -> list[SnapshotInfo]:
        response = self._call(
            self._collections.ListSnapshots, cpb.ListSnapshotsRequest(collection=name or "")
        )
        return [convert.snapshot_from_proto(s) for s in response.snapshots]

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        request = cpb.DeleteSnapshotRequest(collection=name, snapshot=snapshot)
        self._call(self._collections.DeleteSnapshot, request, repeatable=False)

    def server_info(self) -> dict[str, Any]:
        response = self._call(self._info.GetInfo, ipb.GetInfoRequest())
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
        }

    def is_serving(self) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            status = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(), timeout=self.timeout
            )
        except grpc.RpcError:
            return False
        return bool(status.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        self._channel.close()
