"""The interface of a database and of its collections, declared once.

Two engines implement it: the local one (engine/database.py, engine/collection.py) and
the Ray-sharded one (engine/sharded.py). Both subclass these protocols, so mypy checks
each against this one definition; the gRPC server and the SDK's EmbeddedTransport
depend on the protocol, not on either engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from lamina.config import Limits
from lamina.types import (
    CollectionConfig,
    CollectionInfo,
    Hit,
    Payload,
    Point,
    PointId,
    QueryPlan,
    SearchParams,
    SnapshotInfo,
    TenantInfo,
    make_hit,
)


class CollectionProtocol(Protocol):
    """One collection: points (vectors + JSON payloads), searched by vector, text or both."""

    name: str
    config: CollectionConfig

    def upsert(
        self,
        ids: Sequence[PointId],
        vectors: object,
        payloads: Sequence[Payload | None] | None = None,
        tenant: str | None = None,
    ) -> int:
        """Insert or replace points (of ``tenant`` in a multi-tenant collection); returns how
        many were written."""
        ...

    def delete(
        self, ids: Sequence[PointId] | None = None, filter: Any = None, tenant: str | None = None
    ) -> int:
        """Delete by ids or by filter (exactly one); returns how many points were deleted."""
        ...

    def delete_tenant(self, tenant: str) -> int:
        """Delete a tenant with all its points; returns how many points it held."""
        ...

    def list_tenants(self) -> list[TenantInfo]:
        """Every tenant of a multi-tenant collection, by name, with its live points."""
        ...

    def create_payload_index(self, field: str, kind: str) -> bool:
        """Index a payload field; False when the field already has this index."""
        ...

    def drop_payload_index(self, field: str) -> bool:
        """Remove a payload index; False when the field had none."""
        ...

    def count(self, filter: Any = None, tenant: str | None = None) -> int:
        """Number of live points (of ``tenant``), or of those matching ``filter``."""
        ...

    def get(
        self,
        ids: Sequence[PointId],
        with_payload: bool = True,
        with_vector: bool = True,
        tenant: str | None = None,
    ) -> list[Point]:
        """Points for ``ids`` in the order asked; ids that do not exist are left out."""
        ...

    def scroll(
        self,
        limit: int = 100,
        offset: PointId | None = None,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        tenant: str | None = None,
    ) -> tuple[list[Point], PointId | None]:
        """One page of points in id order from ``offset``; returns (points, next offset or None)."""
        ...

    def quick(self) -> bool:
        """Whether an unfiltered search of a few hits is short enough (an index walk, no big
        exact scan) for a server to answer it on its event loop rather than hand it to a
        worker thread. A hint, read without locks; the default is no."""
        return False

    def search(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> list[Hit]:
        """The ``k`` nearest points to one query vector, best first."""
        ...

    def search_json(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> tuple[list[Hit], list[bytes]]:
        """``search`` with payloads, as a server answers it: the hits (payloads left None) and
        each hit's payload as JSON bytes (empty: none). The local engine gives the bytes it stores, never
        decoded; this default encodes the payloads ``search`` gives."""
        hits = self.search(vector, k, filter, True, False, params, tenant)
        return [make_hit(h.id, h.score) for h in hits], [
            orjson.dumps(h.payload) if h.payload is not None else b"" for h in hits
        ]

    def search_batch(
        self,
        vectors: object,
        k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        alive: Callable[[], None] | None = None,
        tenant: str | None = None,
    ) -> list[list[Hit]]:
        """One hit list per query row, each best first; ``alive`` is called between blocks
        of queries and whatever it raises stops the search."""
        ...

    def search_explained(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> tuple[list[Hit], QueryPlan]:
        """``search`` that also returns how each segment answered it."""
        ...

    def explain(
        self,
        vector: object,
        k: int = 10,
        filter: Any = None,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> QueryPlan:
        """Run a search and say how each segment answered it."""
        ...

    def query(
        self,
        vector: object = None,
        text: str | None = None,
        k: int = 10,
        filter: Any = None,
        fusion: str = "rrf",
        weights: Sequence[float] | None = None,
        text_field: str | None = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> list[Hit]:
        """Hybrid search: the dense ranking of ``vector`` and the BM25 ranking of ``text``, fused."""
        ...

    def info(self) -> CollectionInfo:
        """Settings, live point count and the state of the index tier."""
        ...

    def optimize(self, timeout: float | None = None) -> bool:
        """Seal, compact and build now; False if ``timeout`` seconds passed first."""
        ...

    def close(self) -> None:
        """Stop background work and release the collection's files."""
        ...


class DatabaseProtocol(Protocol):
    """All collections of one data directory, and their snapshots."""

    path: Path
    limits: Limits

    def create_collection(self, name: str, config: CollectionConfig) -> CollectionProtocol:
        """Create a collection; AlreadyExists if the name is taken."""
        ...

    def get_collection(self, name: str) -> CollectionProtocol:
        """The collection called ``name``; NotFound if there is none."""
        ...

    def list_collections(self) -> list[str]:
        """The names of all collections, sorted."""
        ...

    def delete_collection(self, name: str) -> None:
        """Delete a collection and its data; NotFound if there is none."""
        ...

    def create_snapshot(self, name: str) -> SnapshotInfo:
        """A consistent copy of collection ``name`` under the snapshots folder."""
        ...

    def list_snapshots(self, name: str | None = None) -> list[SnapshotInfo]:
        """Snapshots of one collection, or of all."""
        ...

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        """Delete one snapshot of collection ``name``."""
        ...

    def restore_snapshot(self, path: str | os.PathLike[str], name: str | None = None) -> CollectionProtocol:
        """A new collection from a snapshot folder (named ``name`` or as it was)."""
        ...

    def close(self) -> None:
        """Close every collection and release the data directory."""
        ...
