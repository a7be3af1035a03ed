"""LangChain vector store over Lamina (``pip install "laminadb[langchain]"``).

>>> from lamina.integrations.langchain import LaminaVectorStore  # doctest: +SKIP
>>> store = LaminaVectorStore(lamina.connect("./lamina-data"), "docs", embeddings)  # doctest: +SKIP
>>> store.add_texts(["Lamina keeps vectors on disk"], metadatas=[{"lang": "en"}])  # doctest: +SKIP
>>> store.similarity_search("where are vectors kept?", k=4, filter={"lang": "en"})  # doctest: +SKIP

Each document is one Lamina point: its id (a string; a random UUID when none is given),
its embedding, and the payload ``{"page_content": text, "metadata": {...}}``. Filters are
Lamina filters on the metadata (``{"lang": "en"}``, ``{"year": {"$gte": 2020}}``,
``{"$or": [...]}``); their keys are looked up under ``metadata``. The collection is
created on the first write, with the embedding's dimension, so an empty store needs no
knowledge of the model. Works with an embedded Lamina and a server alike (it takes a
``lamina.Client``); ``tenant=`` keeps one tenant's documents in a multi-tenant
collection. Async methods are LangChain's defaults (the sync ones in a thread).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from lamina.client.api import Client, connect
from lamina.integrations import LazyCollection
from lamina.types import Filter, Hit, Metric

TEXT = "page_content"
METADATA = "metadata"


def metadata_filter(flt: Filter | None) -> Filter | None:
    """A filter on document metadata as a Lamina filter on the payload: every field name
    is looked up under ``metadata`` (operators, ``$and`` / ``$or`` / ``$not``, stay)."""
    if flt is None:
        return None

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        return {
            (k if k.startswith("$") else f"{METADATA}.{k}"): (
                walk(v) if k in ("$and", "$or", "$nor", "$not") else v
            )
            for k, v in node.items()
        }

    out: Filter = walk(flt)
    return out


class CollectionEmbeddings(Embeddings):
    """LangChain ``Embeddings`` answered by a Lamina collection's own model (``Collection.embed``:
    in this process when embedded, by the server when remote)."""

    def __init__(self, target: LazyCollection) -> None:
        self.target = target

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors: list[list[float]] = self.target.for_text().embed(texts).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class LaminaVectorStore(VectorStore):
    """A LangChain ``VectorStore`` keeping documents in a Lamina collection."""

    def __init__(
        self,
        client: Client | str,
        collection_name: str,
        embedding: Embeddings | None = None,
        *,
        metric: Metric = "cosine",
        tenant: str | None = None,
        collection_options: dict[str, Any] | None = None,
    ) -> None:
        """``client``: a ``lamina.Client`` or what ``lamina.connect`` takes (a data
        directory or ``host:port``). ``collection_options`` are passed to
        ``create_collection`` when the collection is made (index, quantization, ...).
        Without ``embedding`` the collection's own model embeds (a new collection is created
        with ``collection_options["embedding"]``, default ``minilm``)."""
        self.client = connect(client) if isinstance(client, str) else client
        self.collection_name = collection_name
        self.metric: Metric = metric
        self.tenant = tenant
        self._target = LazyCollection(self.client, collection_name, metric, tenant, collection_options)
        self.embedding: Embeddings = (
            embedding if embedding is not None else CollectionEmbeddings(self._target)
        )

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    # ------------------------------------------------------------ writes
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store ``texts``; returns their ids (new UUIDs where none were given).
        A text whose id exists replaces it."""
        texts = list(texts)
        if not texts:
            return []
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"got {len(metadatas)} metadatas for {len(texts)} texts: give one per text")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"got {len(ids)} ids for {len(texts)} texts: give one per text")
        out = [i if i else str(uuid.uuid4()) for i in (ids or [None] * len(texts))]  # type: ignore[list-item]
        vectors = np.asarray(self.embedding.embed_documents(texts), dtype=np.float32)
        payloads = [
            {TEXT: t, METADATA: dict(m or {})}
            for t, m in zip(texts, metadatas or [{}] * len(texts), strict=True)
        ]
        col = self._target.for_writing(vectors.shape[1])
        col.upsert(list(out), vectors, payloads, tenant=self.tenant)
        return out

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Store documents, keeping their ``id`` when they have one (``ids=`` overrides)."""
        ids = kwargs.pop("ids", None)
        if ids is None and any(d.id for d in documents):
            ids = [d.id or str(uuid.uuid4()) for d in documents]
        return self.add_texts(
            [d.page_content for d in documents], [d.metadata for d in documents], ids=ids, **kwargs
        )

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (ids that do not exist are ignored)."""
        if ids is None:
            raise ValueError("delete needs the ids of the documents to delete")
        col = self._target.existing()
        if col is not None and ids:
            col.delete(ids=list(ids), tenant=self.tenant)
        return True

    # ------------------------------------------------------------ reads
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents with these ids (missing ones are left out)."""
        col = self._target.existing()
        if col is None or not ids:
            return []
        points = col.get(list(ids), with_vector=False, tenant=self.tenant)
        return [self._document(str(p.id), p.payload) for p in points]

    @staticmethod
    def _document(point_id: str, payload: dict[str, Any] | None) -> Document:
        payload = payload or {}
        return Document(page_content=payload.get(TEXT, ""), metadata=payload.get(METADATA) or {}, id=point_id)

    def _hits(
        self, vector: list[float], k: int, filter: Filter | None, with_vector: bool = False
    ) -> list[Hit]:
        col = self._target.existing()
        if col is None:
            return []
        return col.search(
            np.asarray(vector, dtype=np.float32),
            k=k,
            filter=metadata_filter(filter),
            with_vector=with_vector,
            tenant=self.tenant,
        )

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest to ``query`` with Lamina's scores (cosine / dot
        similarity, higher is better; euclidean distance for l2, lower is better)."""
        return self.similarity_search_by_vector_with_score(self.embedding.embed_query(query), k, filter)

    def similarity_search_by_vector_with_score(
        self, embedding: list[float], k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return [(self._document(str(h.id), h.payload), h.score) for h in self._hits(embedding, k, filter)]

    def similarity_search(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_by_vector_with_score(embedding, k, filter)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents chosen from the ``fetch_k`` nearest for relevance and diversity
        (``lambda_mult`` 1: relevance only, 0: diversity only)."""
        hits = self._hits(embedding, max(k, fetch_k), filter, with_vector=True)
        if not hits:
            return []
        vectors = [np.asarray(h.vector, dtype=np.float32).tolist() for h in hits]
        chosen = maximal_marginal_relevance(np.asarray(embedding, dtype=np.float32), vectors, lambda_mult, k)
        return [self._document(str(hits[i].id), hits[i].payload) for i in chosen]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self.embedding.embed_query(query), k, fetch_k, lambda_mult, filter
        )

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Scores to relevance in [0, 1]: cosine similarity s → (1 + s) / 2; dot products
        and euclidean distances through LangChain's own conversions."""
        if self.metric == "cosine":
            return lambda score: (1.0 + score) / 2.0
        if self.metric == "dot":
            return self._max_inner_product_relevance_score_fn
        return self._euclidean_relevance_score_fn

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        client: Client | str = "./lamina-data",
        collection_name: str = "langchain",
        **kwargs: Any,
    ) -> LaminaVectorStore:
        """A store over ``collection_name`` (created when missing) holding ``texts``."""
        store = cls(client, collection_name, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store
