"""The embedded transport: the client API's calls run by the engine in this process, over a
data directory (``lamina.connect(path)``), with the same types and errors as a server."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeVar

from lamina.client.transport import Op
from lamina.config import DEFAULT_LIMITS, Limits
from lamina.engine import embedding
from lamina.engine.database import Database, open_shared, release_shared
from lamina.engine.protocol import DatabaseProtocol
from lamina.errors import FailedPrecondition
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

T = TypeVar("T")


class EmbeddedTransport:
    """Runs the engine in this process over a data directory: each method is one operation."""

    def __init__(
        self,
        path: str,
        *,
        sync_writes: bool = True,
        limits: Limits = DEFAULT_LIMITS,
        db: DatabaseProtocol | None = None,
    ) -> None:
        """The Database over ``path`` (shared with the other clients of this process that
        opened the same directory), or ``db`` when given (a sharded one, already open)."""
        self._shared = db is None
        self.db: DatabaseProtocol = (
            db if db is not None else open_shared(path, sync_writes=sync_writes, limits=limits)
        )
        self._closed = False

    def run(self, op: Op[T]) -> T:
        if self._closed:
            raise FailedPrecondition("the database is closed")
        result = getattr(self, op.name)(*op.args)
        return result if op.after is None else op.after(result)  # Op.finish, inline

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

    def add_documents(
        self,
        name: str,
        ids: list[PointId],
        documents: list[str],
        payloads: Sequence[Payload | None] | None,
        tenant: str | None,
    ) -> int:
        col = self.db.get_collection(name)
        return embedding.add_documents(col, ids, documents, payloads, tenant, self.db.limits)

    def _queries(self, name: str, query: Any) -> tuple[Any, Any]:
        """The collection and ``query`` with any text embedded by its model."""
        col = self.db.get_collection(name)
        return col, embedding.as_query_rows(name, col.config, query, self.db.limits)

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
        query: FloatMatrix | str,
        k: int,
        filter: Filter | None,
        with_payload: bool,
        with_vector: bool,
        params: SearchParams | None,
        tenant: str | None,
    ) -> list[Hit]:
        col, query = self._queries(name, query)
        return col.search(query, k, filter, with_payload, with_vector, params, tenant=tenant)

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
        col, queries = self._queries(name, queries)
        return col.search_batch(queries, k, filter, with_payload, with_vector, params, tenant=tenant)

    def explain(
        self,
        name: str,
        query: FloatMatrix,
        k: int,
        filter: Filter | None,
        params: SearchParams | None,
        tenant: str | None,
    ) -> QueryPlan:
        col, query = self._queries(name, query)
        return col.explain(query, k, filter, params, tenant=tenant)

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
        col = self.db.get_collection(name)
        vector, text_field = embedding.hybrid_text(name, col.config, vector, text, text_field, self.db.limits)
        return col.query(
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

    def embed(self, name: str, texts: list[str]) -> FloatMatrix:
        col = self.db.get_collection(name)
        return embedding.query_vectors(name, col.config, texts, self.db.limits)

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

        return {
            "version": __version__,
            "mode": "embedded",
            "collections": len(self.db.list_collections()),
            "read_only": getattr(self.db, "read_only", ""),
        }

    def is_serving(self) -> bool:
        self.db.list_collections()  # FailedPrecondition once closed
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._shared and isinstance(self.db, Database):
            release_shared(self.db)
        else:
            self.db.close()


class AsyncEmbeddedTransport:
    """``EmbeddedTransport`` for asyncio: each operation runs in a worker thread (the engine
    releases the GIL in its kernels and RocksDB calls), so the event loop keeps going."""

    def __init__(self, inner: EmbeddedTransport) -> None:
        self.inner = inner

    async def run(self, op: Op[T]) -> T:
        return await asyncio.to_thread(self.inner.run, op)

    async def close(self) -> None:
        await asyncio.to_thread(self.inner.close)
