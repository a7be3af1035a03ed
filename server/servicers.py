"""The gRPC servicers: one class per service of lamina/v1/*.proto, each method converting
its request with ``lamina.proto.convert``, calling the engine (through ``DatabaseProtocol``)
and converting the answer back. ``server/app.py`` runs them behind its request pipeline
(``Api``), which sets the caller's key and admission identity these handlers read.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from lamina import __version__
from lamina.engine import bounds, embedding
from lamina.engine.bounds import Deadline
from lamina.engine.protocol import CollectionProtocol, DatabaseProtocol
from lamina.errors import InvalidArgument, LaminaError
from lamina.proto import convert
from lamina.proto.lamina.v1 import collections_pb2 as cpb
from lamina.proto.lamina.v1 import collections_pb2_grpc as cgrpc
from lamina.proto.lamina.v1 import info_pb2 as ipb
from lamina.proto.lamina.v1 import info_pb2_grpc as igrpc
from lamina.proto.lamina.v1 import points_pb2 as ppb
from lamina.proto.lamina.v1 import points_pb2_grpc as pgrpc
from lamina.proto.lamina.v1 import search_pb2 as spb
from lamina.proto.lamina.v1 import search_pb2_grpc as sgrpc
from lamina.server.admission import Gate
from lamina.server.auth import ApiKey
from lamina.storage.faults import classify
from lamina.types import Hit
from lamina.validation import check_collection_name

log = logging.getLogger("lamina.server")
#: searches of at most this many hits may run where they arrive (see SearchServicer._quick)
QUICK_MAX_K = 100
T = TypeVar("T")


#: the API key of the request a handler serves (None: the server has no keys), and its caller
#: for admission control (the key, or the connection when the server has no keys)
request_key: contextvars.ContextVar[ApiKey | None] = contextvars.ContextVar("lamina_key", default=None)
request_caller: contextvars.ContextVar[str] = contextvars.ContextVar("lamina_caller", default="-")


#: trailing metadata of a request turned away by admission control: nothing was done, so it
#: is safe to send again
BUSY = (("lamina-retry", "busy"),)


class CallAborted(Exception):
    """A call ended with a gRPC status other than OK: ``code`` (a ``grpc.StatusCode``),
    ``details`` and ``trailing`` metadata, as a gRPC client sees them. The pipeline's checks
    raise it; each transport turns it into its context's ``abort`` (or in-process callers,
    the web console, catch it)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = tuple(trailing)


class _Base:
    """Runs engine calls on a thread pool (numba kernels release the GIL) and maps
    Lamina errors to their gRPC status codes."""

    def __init__(self, db: DatabaseProtocol, gate: Gate) -> None:
        self.db = db
        self._gate = gate

    async def _run(
        self, context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: Any, inline: bool = False
    ) -> T:
        """Run ``fn(*args)`` on a worker when admission control lets it (see ``admission``),
        with a Deadline the engine checks: its work stops when the client has gone.
        ``inline``: a short job (a plain search of a ``quick`` collection) runs on the event
        loop's thread instead, which spares it two thread hops."""
        gate = self._gate
        caller = request_caller.get()
        try:
            deadline = self._admit(caller, context)
        except CallAborted as exc:
            await context.abort(exc.code, exc.details, trailing_metadata=exc.trailing)
        job = _job(deadline, fn, *args)
        started = time.perf_counter()
        try:
            if inline:
                result = gate.run_here(caller, job, deadline)
            else:
                # a request counts until its job is over, even when its client has gone
                result = await asyncio.shield(gate.submit(caller, job, deadline))
            self._served(caller, fn, started)
            return result
        except asyncio.CancelledError:
            deadline.cancel()  # the job stops at its next check (or before it starts)
            raise
        except Exception as exc:
            failed = self._failed(exc, fn, started)
            await context.abort(failed.code, failed.details)
        raise AssertionError("unreachable")  # context.abort always raises

    def _run_here(self, context: Any, caller: str, fn: Callable[..., T], *args: Any) -> T:
        """``_run`` of a short job on the calling thread (grpc's server's, for the hot path of
        server/app.py ``Api.serve``), under the same admission, deadline and error rules:
        a refusal or a failure raises ``CallAborted``."""
        deadline = self._admit(caller, context)
        started = time.perf_counter()
        try:
            result = self._gate.run_here(caller, _job(deadline, fn, *args), deadline)
        except Exception as exc:
            raise self._failed(exc, fn, started) from None
        self._served(caller, fn, started)
        return result

    def _admit(self, caller: str, context: Any) -> Deadline:
        """The deadline of a request admission control lets in (``CallAborted`` when not)."""
        refusal = self._gate.admit(caller)
        if refusal is not None:
            raise CallAborted(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal, BUSY)
        return Deadline(time_left(context))

    def _served(self, caller: str, fn: Callable[..., Any], started: float) -> None:
        self._gate.count_served(caller)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s ok in %.1f ms", fn.__name__, (time.perf_counter() - started) * 1000)

    def _failed(self, exc: Exception, fn: Callable[..., Any], started: float) -> CallAborted:
        """The status that answers a job which raised ``exc`` (call it in the ``except``)."""
        if isinstance(exc, LaminaError):
            log.debug(
                "%s rejected (%s) in %.1f ms", fn.__name__, exc.code, (time.perf_counter() - started) * 1000
            )
            return CallAborted(grpc.StatusCode[exc.code], str(exc))
        fault = classify(exc, self.db.path)  # a storage fault the engine let through
        if fault is not None:
            log.warning("%s refused: %s", fn.__name__, fault)
            return CallAborted(grpc.StatusCode[fault.code], str(fault))
        log.exception("internal error")
        return CallAborted(
            grpc.StatusCode.INTERNAL, "internal error in Lamina; the server log has the details"
        )

    def _collection(self, name: str) -> CollectionProtocol:
        if not name:
            raise InvalidArgument("collection name is empty: name the collection the request is for")
        return self.db.get_collection(check_collection_name(name))


class CollectionsServicer(_Base, cgrpc.CollectionsServicer):
    async def Create(
        self, request: cpb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> cpb.CollectionInfo:
        def create() -> cpb.CollectionInfo:
            config = convert.config_from_proto(request.config)
            return convert.info_to_proto(self.db.create_collection(request.name, config).info())

        return await self._run(context, create)

    async def Get(
        self, request: cpb.GetCollectionRequest, context: grpc.aio.ServicerContext
    ) -> cpb.CollectionInfo:
        return await self._run(context, lambda: convert.info_to_proto(self._collection(request.name).info()))

    async def Optimize(
        self, request: cpb.OptimizeRequest, context: grpc.aio.ServicerContext
    ) -> cpb.CollectionInfo:
        def optimize() -> cpb.CollectionInfo:
            col = self._collection(request.name)
            timeout = request.timeout_seconds
            if not math.isfinite(timeout) or timeout < 0:
                raise InvalidArgument(f"timeout_seconds must be a finite number >= 0, got {timeout}")
            col.optimize(timeout or None)
            return convert.info_to_proto(col.info())

        return await self._run(context, optimize)

    async def CreatePayloadIndex(
        self, request: cpb.CreatePayloadIndexRequest, context: grpc.aio.ServicerContext
    ) -> cpb.PayloadIndexResponse:
        def create() -> cpb.PayloadIndexResponse:
            col = self._collection(request.collection)
            return cpb.PayloadIndexResponse(changed=col.create_payload_index(request.field, request.type))

        return await self._run(context, create)

    async def DropPayloadIndex(
        self, request: cpb.DropPayloadIndexRequest, context: grpc.aio.ServicerContext
    ) -> cpb.PayloadIndexResponse:
        def drop() -> cpb.PayloadIndexResponse:
            col = self._collection(request.collection)
            return cpb.PayloadIndexResponse(changed=col.drop_payload_index(request.field))

        return await self._run(context, drop)

    async def CreateSnapshot(
        self, request: cpb.CreateSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> cpb.SnapshotInfo:
        def create() -> cpb.SnapshotInfo:
            self._collection(request.collection)
            return convert.snapshot_to_proto(self.db.create_snapshot(request.collection))

        return await self._run(context, create)

    async def ListSnapshots(
        self, request: cpb.ListSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListSnapshotsResponse:
        def list_all() -> cpb.ListSnapshotsResponse:
            snaps = self.db.list_snapshots(request.collection or None)
            return cpb.ListSnapshotsResponse(snapshots=[convert.snapshot_to_proto(s) for s in snaps])

        return await self._run(context, list_all)

    async def DeleteSnapshot(
        self, request: cpb.DeleteSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> cpb.DeleteSnapshotResponse:
        def drop() -> cpb.DeleteSnapshotResponse:
            self.db.delete_snapshot(request.collection, request.snapshot)
            return cpb.DeleteSnapshotResponse()

        return await self._run(context, drop)

    async def List(
        self, request: cpb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListCollectionsResponse:
        def list_all() -> cpb.ListCollectionsResponse:
            infos = []
            for name in self.db.list_collections():
                try:
                    infos.append(convert.info_to_proto(self.db.get_collection(name).info()))
                except LaminaError:
                    continue  # dropped meanwhile
            return cpb.ListCollectionsResponse(collections=infos)

        return await self._run(context, list_all)

    async def Delete(
        self, request: cpb.DeleteCollectionRequest, context: grpc.aio.ServicerContext
    ) -> cpb.DeleteCollectionResponse:
        def drop() -> cpb.DeleteCollectionResponse:
            self.db.delete_collection(request.name)
            return cpb.DeleteCollectionResponse()

        return await self._run(context, drop)


class PointsServicer(_Base, pgrpc.PointsServicer):
    async def Upsert(
        self, request: ppb.UpsertRequest, context: grpc.aio.ServicerContext
    ) -> ppb.UpsertResponse:
        def upsert() -> ppb.UpsertResponse:
            col = self._collection(request.collection)
            ids = [convert.id_from_proto(i) for i in request.ids]
            payloads = (
                [convert.payload_from_json(p) for p in request.payloads_json]
                if request.payloads_json
                else None
            )
            tenant = convert.tenant_from_proto(request.tenant)
            if request.documents:
                if request.HasField("vectors"):
                    raise InvalidArgument("send documents or vectors, not both: documents are embedded")
                documents = list(request.documents)
                added = embedding.add_documents(col, ids, documents, payloads, tenant, self.db.limits)
                return ppb.UpsertResponse(upserted=added)
            vectors = convert.matrix_from_proto(request.vectors)
            return ppb.UpsertResponse(upserted=col.upsert(ids, vectors, payloads, tenant=tenant))

        return await self._run(context, upsert)

    async def Get(self, request: ppb.GetRequest, context: grpc.aio.ServicerContext) -> ppb.GetResponse:
        def get() -> ppb.GetResponse:
            col = self._collection(request.collection)
            ids = [convert.id_from_proto(i) for i in request.ids]
            points = col.get(
                ids,
                with_payload=request.with_payload,
                with_vector=request.with_vector,
                tenant=convert.tenant_from_proto(request.tenant),
            )
            return ppb.GetResponse(points=[convert.point_to_proto(p) for p in points])

        return await self._run(context, get)

    async def Delete(
        self, request: ppb.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> ppb.DeleteResponse:
        def delete() -> ppb.DeleteResponse:
            col = self._collection(request.collection)
            flt = convert.filter_from_json(request.filter_json)
            ids = [convert.id_from_proto(i) for i in request.ids] if request.ids or flt is None else None
            tenant = convert.tenant_from_proto(request.tenant)
            return ppb.DeleteResponse(deleted=col.delete(ids=ids, filter=flt, tenant=tenant))

        return await self._run(context, delete)

    async def Count(self, request: ppb.CountRequest, context: grpc.aio.ServicerContext) -> ppb.CountResponse:
        def count() -> ppb.CountResponse:
            col = self._collection(request.collection)
            flt = convert.filter_from_json(request.filter_json)
            return ppb.CountResponse(count=col.count(flt, tenant=convert.tenant_from_proto(request.tenant)))

        return await self._run(context, count)

    async def ListTenants(
        self, request: ppb.ListTenantsRequest, context: grpc.aio.ServicerContext
    ) -> ppb.ListTenantsResponse:
        def list_tenants() -> ppb.ListTenantsResponse:
            tenants = self._collection(request.collection).list_tenants()
            return ppb.ListTenantsResponse(tenants=[convert.tenant_to_proto(t) for t in tenants])

        return await self._run(context, list_tenants)

    async def DeleteTenant(
        self, request: ppb.DeleteTenantRequest, context: grpc.aio.ServicerContext
    ) -> ppb.DeleteTenantResponse:
        def delete_tenant() -> ppb.DeleteTenantResponse:
            col = self._collection(request.collection)
            return ppb.DeleteTenantResponse(deleted=col.delete_tenant(request.tenant))

        return await self._run(context, delete_tenant)

    async def Scroll(
        self, request: ppb.ScrollRequest, context: grpc.aio.ServicerContext
    ) -> ppb.ScrollResponse:
        def scroll() -> ppb.ScrollResponse:
            col = self._collection(request.collection)
            offset = convert.id_from_proto(request.offset) if request.HasField("offset") else None
            points, next_offset = col.scroll(
                limit=request.limit,
                offset=offset,
                filter=convert.filter_from_json(request.filter_json),
                with_payload=request.with_payload,
                with_vector=request.with_vector,
                tenant=convert.tenant_from_proto(request.tenant),
            )
            response = ppb.ScrollResponse(points=[convert.point_to_proto(p) for p in points])
            if next_offset is not None:
                response.next_offset.CopyFrom(convert.id_to_proto(next_offset))
            return response

        return await self._run(context, scroll)


class SearchServicer(_Base, sgrpc.SearchServicer):
    async def Search(
        self, request: spb.SearchRequest, context: grpc.aio.ServicerContext
    ) -> spb.SearchResponse:
        quick = self._quick(request)
        return await self._run(context, self._search, request, quick, inline=quick is not None)

    def search_here(self, request: spb.SearchRequest, context: Any, caller: str) -> spb.SearchResponse | None:
        """Search's hot path (server/app.py ``Api.serve``): a search short enough to answer
        on the calling thread (``_quick``) is answered there, under the same rules as
        ``Search``; None for any other, which ``Search`` then serves."""
        quick = self._quick(request)
        if quick is None:
            return None
        return self._run_here(context, caller, self._search, request, quick)

    def _search(self, request: spb.SearchRequest, quick: CollectionProtocol | None) -> spb.SearchResponse:
        col = quick or self._collection(request.collection)
        if request.HasField("text"):
            if request.vector:
                raise InvalidArgument("send a query vector or a text, not both")
            query = embedding.as_query_rows(col.name, col.config, request.text, self.db.limits)
        else:
            query = convert.vector_from_bytes(request.vector)
        flt = convert.filter_from_json(request.filter_json)
        params = convert.params_from_proto(request.params)
        tenant = convert.tenant_from_proto(request.tenant)
        response = spb.SearchResponse()
        if not request.explain:
            packed = request.packed_hits
            if request.with_payload and not request.with_vector:  # payloads as the bytes stored
                hits, payloads = col.search_json(query, request.k, flt, params, tenant)
                convert.hits_to_response(hits, response, payloads, packed=packed)
                return response
            hits = col.search(
                query, request.k, flt, request.with_payload, request.with_vector, params, tenant
            )
            convert.hits_to_response(hits, response, packed=packed, with_payload=request.with_payload)
            return response
        args = (query, request.k, flt, request.with_payload, request.with_vector, params, tenant)
        hits, plan = col.search_explained(*args)
        convert.hits_to_proto(hits, response.hits)
        response.plan.CopyFrom(convert.plan_to_proto(plan))
        return response

    def _quick(self, request: spb.SearchRequest) -> CollectionProtocol | None:
        """The collection of a search short enough to answer where it arrived (a vector, no
        filter, no plan, a few hits without their vectors, a ``quick`` collection), or None."""
        if (
            request.filter_json
            or request.explain
            or request.with_vector
            or request.HasField("text")
            or not 0 < request.k <= QUICK_MAX_K
        ):
            return None
        try:
            col = self._collection(request.collection)
        except LaminaError:
            return None  # the job says what is wrong
        return col if col.quick() else None

    async def SearchBatch(
        self, request: spb.SearchBatchRequest, context: grpc.aio.ServicerContext
    ) -> spb.SearchBatchResponse:
        def search_batch() -> spb.SearchBatchResponse:
            col = self._collection(request.collection)
            if request.texts:
                if request.HasField("vectors"):
                    raise InvalidArgument("send query vectors or texts, not both")
                texts = list(request.texts)
                queries = embedding.query_vectors(col.name, col.config, texts, self.db.limits)
            else:
                queries = convert.matrix_from_proto(request.vectors)
            results = col.search_batch(
                queries,
                k=request.k,
                filter=convert.filter_from_json(request.filter_json),
                with_payload=request.with_payload,
                with_vector=request.with_vector,
                params=convert.params_from_proto(request.params),
                alive=bounds.check,
                tenant=convert.tenant_from_proto(request.tenant),
            )
            return spb.SearchBatchResponse(results=[_hit_list(hits) for hits in results])

        return await self._run(context, search_batch)

    async def Query(self, request: spb.QueryRequest, context: grpc.aio.ServicerContext) -> spb.SearchResponse:
        def query() -> spb.SearchResponse:
            col = self._collection(request.collection)
            text = request.text if request.HasField("text") else None
            vector, text_field = embedding.hybrid_text(
                col.name,
                col.config,
                convert.vector_from_bytes(request.vector) if request.vector else None,
                text,
                request.text_field or None,
                self.db.limits,
            )
            hits = col.query(
                vector=vector,
                text=text,
                k=request.k,
                filter=convert.filter_from_json(request.filter_json),
                fusion=request.fusion or "rrf",
                weights=list(request.weights) or None,
                text_field=text_field,
                with_payload=request.with_payload,
                with_vector=request.with_vector,
                params=convert.params_from_proto(request.params),
                tenant=convert.tenant_from_proto(request.tenant),
            )
            response = spb.SearchResponse()
            convert.hits_to_response(
                hits, response, packed=request.packed_hits, with_payload=request.with_payload
            )
            return response

        return await self._run(context, query)

    async def Embed(self, request: spb.EmbedRequest, context: grpc.aio.ServicerContext) -> spb.EmbedResponse:
        def embed() -> spb.EmbedResponse:
            col = self._collection(request.collection)
            vectors = embedding.query_vectors(col.name, col.config, list(request.texts), self.db.limits)
            return spb.EmbedResponse(vectors=convert.matrix_to_proto(vectors))

        return await self._run(context, embed)


class InfoServicer(_Base, igrpc.InfoServicer):
    started = time.monotonic()

    async def GetInfo(
        self, request: ipb.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> ipb.GetInfoResponse:
        gate = self._gate
        key = request_key.get()
        uptime = time.monotonic() - self.started
        if key is not None and (key.collections is not None or key.tenants is not None):
            # a scoped key is shown what its scope covers: its collections and its own requests
            mine = gate.tally_of(request_caller.get())
            return ipb.GetInfoResponse(
                version=__version__,
                uptime_seconds=uptime,
                collections=sum(1 for name in self.db.list_collections() if key.sees(name)),
                requests_served=mine["served"],
                requests_rejected=mine["rejected"],
                requests_abandoned=mine["abandoned"],
                requests_in_flight=mine["in_flight"],
            )
        return ipb.GetInfoResponse(
            version=__version__,
            uptime_seconds=uptime,
            collections=len(self.db.list_collections()),
            requests_served=gate.served,
            requests_rejected=gate.rejected,
            requests_abandoned=gate.abandoned,
            requests_in_flight=gate.in_flight,
            read_only=getattr(self.db, "read_only", ""),
        )


#: grpc's sync server gives a call without a deadline one in the year 292 billion: longer than
#: this (about 30 years) is none
_NO_DEADLINE = 1e9


def time_left(context: Any) -> float | None:
    """Seconds until the call's deadline, None when it has none (grpc.aio says None; grpc's
    sync server a number of seconds past any forwarded deadline a channel accepts)."""
    remaining: float | None = context.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE else remaining


def _job(deadline: Deadline, fn: Callable[..., T], *args: Any) -> Callable[[], T]:
    """``fn(*args)`` under ``deadline`` (the engine's checks see it), unless it already passed."""

    def job() -> T:
        with bounds.running(deadline):
            deadline.check()  # the client may have gone while this waited for a worker
            return fn(*args)

    return job


def _hit_list(hits: Sequence[Hit]) -> spb.HitList:
    out = spb.HitList()
    convert.hits_to_proto(hits, out.hits)
    return out


def collection_of(request: Any) -> str | None:
    """The collection a request names (``collection``, or ``name`` in the Collections service)."""
    fields = request.DESCRIPTOR.fields_by_name
    name = request.collection if "collection" in fields else request.name if "name" in fields else None
    return name or None


def tenant_of(request: Any) -> str | None:
    """The tenant a request names, None when it has no tenant field, "" when left empty."""
    return request.tenant if "tenant" in request.DESCRIPTOR.fields_by_name else None
