"""LlamaIndex vector store over Lamina (``pip install "laminadb[llama-index]"``).

>>> from llama_index.core import StorageContext, VectorStoreIndex  # doctest: +SKIP
>>> store = LaminaVectorStore(lamina.connect("./lamina-data"), "docs")  # doctest: +SKIP
>>> index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=store))  # doctest: +SKIP

Each node is one Lamina point: its node id, its embedding, and as payload the node's
metadata plus LlamaIndex's serialised node (``node_to_metadata_dict``), so queries give
back whole nodes with their text and relationships. ``MetadataFilters`` become Lamina
filters over the metadata (==, !=, >, >=, <, <=, in, nin, contains, any, all, is_empty;
AND / OR / NOT, nested). The collection is created on the first ``add`` with the
embedding's dimension. Nodes without an embedding, and queries without one (only
``query_str``), are embedded with the collection's own model (a new collection is then
created with the built-in ``minilm``). ``tenant=`` keeps one tenant's nodes in a multi-tenant collection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from lamina.client.api import Client, connect
from lamina.integrations import LazyCollection
from lamina.types import Filter, Metric

NODE_ID = "_node_id"  # payload key holding the node id, for node_ids filters

_OPS = {
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.NE: "$ne",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
    FilterOperator.ANY: "$in",  # an array field matches when any of its elements is listed
}


def _condition(f: MetadataFilter) -> Filter:
    op = f.operator
    if op in (FilterOperator.EQ, FilterOperator.CONTAINS):  # against an array field: "contains"
        return {f.key: f.value}
    if op in _OPS:
        return {f.key: {_OPS[op]: f.value}}
    if op == FilterOperator.ALL:
        values = f.value if isinstance(f.value, list) else [f.value]
        return {"$and": [{f.key: v} for v in values]}
    if op == FilterOperator.IS_EMPTY:
        return {f.key: {"$exists": False}}
    raise ValueError(
        f"Lamina cannot filter with {op.value!r}: use ==, !=, >, >=, <, <=, in, nin, contains, any, all or is_empty"
    )


def lamina_filter(filters: MetadataFilters | None) -> Filter | None:
    """``MetadataFilters`` (nested, AND / OR / NOT) as a Lamina filter."""
    if filters is None or not filters.filters:
        return None
    parts = [lamina_filter(f) if isinstance(f, MetadataFilters) else _condition(f) for f in filters.filters]
    parts = [p for p in parts if p is not None]
    if filters.condition == FilterCondition.NOT:
        return {"$nor": parts}
    if len(parts) == 1:
        return parts[0]
    return {"$or" if filters.condition == FilterCondition.OR else "$and": parts}


class LaminaVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store keeping nodes in a Lamina collection."""

    stores_text: bool = True
    flat_metadata: bool = False
    collection_name: str
    metric: str = "cosine"
    tenant: str | None = None

    _client: Client = PrivateAttr()
    _target: LazyCollection = PrivateAttr()

    def __init__(
        self,
        client: Client | str,
        collection_name: str,
        *,
        metric: Metric = "cosine",
        tenant: str | None = None,
    ) -> None:
        """``client``: a ``lamina.Client`` or what ``lamina.connect`` takes."""
        super().__init__(collection_name=collection_name, metric=metric, tenant=tenant)  # type: ignore[call-arg]
        self._client = connect(client) if isinstance(client, str) else client
        self._target = LazyCollection(self._client, collection_name, metric, tenant)

    @property
    def client(self) -> Client:
        return self._client

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Store nodes with their embeddings (a node id that exists is replaced)."""
        if not nodes:
            return []
        if any(n.embedding is None for n in nodes):  # no embed model: the collection's own embeds
            col = self._target.for_text()
            missing = [n for n in nodes if n.embedding is None]
            texts = [n.get_content(metadata_mode=MetadataMode.EMBED) or " " for n in missing]
            for node, vector in zip(missing, col.embed(texts).tolist(), strict=True):
                node.embedding = vector
        vectors = np.asarray([n.get_embedding() for n in nodes], dtype=np.float32)
        col = self._target.for_writing(vectors.shape[1])
        payloads = [
            {
                **node_to_metadata_dict(n, remove_text=False, flat_metadata=self.flat_metadata),
                NODE_ID: n.node_id,
            }
            for n in nodes
        ]
        ids = [n.node_id for n in nodes]
        col.upsert(ids, vectors, payloads, tenant=self.tenant)
        return ids

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document ``ref_doc_id``."""
        col = self._target.existing()
        if col is not None:
            col.delete(filter={"ref_doc_id": ref_doc_id}, tenant=self.tenant)

    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        """Delete nodes by id and / or by filter (both given: the listed nodes that match)."""
        col = self._target.existing()
        flt = _where(filters, node_ids)
        if col is not None and flt is not None:
            col.delete(filter=flt, tenant=self.tenant)

    def clear(self) -> None:
        """Delete every node (of the tenant, in a multi-tenant collection)."""
        col = self._target.existing()
        if col is not None:
            col.delete(filter={}, tenant=self.tenant)

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """Nodes by id and / or filter (neither: every node)."""
        col = self._target.existing()
        if col is None:
            return []
        flt = _where(filters, node_ids)
        out: list[BaseNode] = []
        offset = None
        while True:
            page, offset = col.scroll(limit=1_000, offset=offset, filter=flt, tenant=self.tenant)
            out += [metadata_dict_to_node(p.payload or {}) for p in page]
            if offset is None:
                return out

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` nodes nearest to the query embedding that match its
        filters (and, when given, its ``doc_ids`` / ``node_ids``)."""
        col = self._target.existing()
        if col is None or (query.query_embedding is None and not query.query_str):
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        vector = (
            np.asarray(query.query_embedding, dtype=np.float32)
            if query.query_embedding is not None
            else self._target.for_text().embed([query.query_str or ""])[0]  # the collection's model
        )
        hits = col.search(
            vector,
            k=query.similarity_top_k,
            filter=_where(query.filters, query.node_ids, query.doc_ids),
            tenant=self.tenant,
        )
        nodes = [metadata_dict_to_node(h.payload or {}) for h in hits]
        return VectorStoreQueryResult(
            nodes=nodes, similarities=[h.score for h in hits], ids=[str(h.id) for h in hits]
        )


def _where(
    filters: MetadataFilters | None, node_ids: list[str] | None = None, doc_ids: list[str] | None = None
) -> Filter | None:
    """Metadata filters, node ids and source document ids as one Lamina filter (None: all;
    LlamaIndex passes empty id lists for "no restriction")."""
    parts = [f for f in [lamina_filter(filters)] if f is not None]
    if node_ids:
        parts.append({NODE_ID: {"$in": list(node_ids)}})
    if doc_ids:
        parts.append({"ref_doc_id": {"$in": list(doc_ids)}})
    return None if not parts else parts[0] if len(parts) == 1 else {"$and": parts}
