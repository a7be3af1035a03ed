"""The LlamaIndex store through llama-index-core's VectorStoreIndex, with a local
deterministic embedding, embedded and against a server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import MetadataMode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

import lamina
from lamina.integrations.llama_index import LaminaVectorStore, lamina_filter
from tests.conftest import ServerThread

DIM = 64


class HashedWords(BaseEmbedding):
    """A deterministic bag-of-words embedding: texts sharing words are close."""

    def _embed(self, text: str) -> list[float]:
        v = np.zeros(DIM, np.float32)
        for word in text.lower().split():
            v[int(hashlib.sha1(word.strip(".,?!").encode()).hexdigest(), 16) % DIM] += 1.0
        v += 1e-3
        return (v / np.linalg.norm(v)).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)


DOCS = [
    Document(
        text="rocksdb keeps vectors on disk",
        metadata={"topic": "storage", "year": 2023, "tags": ["db"]},
        doc_id="d1",
    ),
    Document(
        text="binary codes make the index small",
        metadata={"topic": "index", "year": 2024, "tags": ["ann"]},
        doc_id="d2",
    ),
    Document(
        text="hnsw graphs serve large tenants",
        metadata={"topic": "index", "year": 2025, "tags": ["ann", "tenancy"]},
        doc_id="d3",
    ),
    Document(
        text="api keys guard every tenant",
        metadata={"topic": "security", "year": 2025, "tags": ["tenancy"]},
        doc_id="d4",
    ),
]


@pytest.fixture(params=["embedded", "remote"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[lamina.Client]:
    if request.param == "embedded":
        with lamina.connect(str(tmp_path / "data")) as c:
            yield c
        return
    srv = ServerThread(tmp_path / "data")
    try:
        with lamina.connect(srv.address) as c:
            yield c
    finally:
        srv.stop()


def _index(client: lamina.Client, **kw: object) -> tuple[VectorStoreIndex, LaminaVectorStore]:
    store = LaminaVectorStore(client, "kb", **kw)  # type: ignore[arg-type]
    index = VectorStoreIndex.from_documents(
        DOCS, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=HashedWords()
    )
    return index, store


def ids(nodes: list) -> list[str]:  # type: ignore[type-arg]
    return [n.node.ref_doc_id for n in nodes]


def test_index_retrieves_filters_and_deletes(client: lamina.Client) -> None:
    index, store = _index(client)
    assert client.get_collection("kb").count() == 4
    assert ids(index.as_retriever(similarity_top_k=1).retrieve("where are vectors kept on disk"))[0] == "d1"
    hits = index.as_retriever(similarity_top_k=1).retrieve("vectors on disk")
    assert hits[0].node.get_content() == "rocksdb keeps vectors on disk"
    embedded = hits[0].node.get_content(
        metadata_mode=MetadataMode.EMBED
    )  # what was embedded: text + metadata
    cosine = float(np.dot(HashedWords()._embed("vectors on disk"), HashedWords()._embed(embedded)))
    assert hits[0].score == pytest.approx(cosine, abs=1e-5)
    by_topic = MetadataFilters(filters=[MetadataFilter(key="topic", value="index")])
    assert sorted(ids(index.as_retriever(similarity_top_k=4, filters=by_topic).retrieve("tenants"))) == [
        "d2",
        "d3",
    ]
    either = MetadataFilters(
        filters=[
            MetadataFilter(key="year", value=2023, operator=FilterOperator.LTE),
            MetadataFilter(key="tags", value="ann", operator=FilterOperator.CONTAINS),
        ],
        condition=FilterCondition.OR,
    )
    # d1 by year alone, d2 and d3 by tag alone, d4 by neither: a dropped filter returns d4 too and
    # an OR read as AND returns nothing
    assert sorted(ids(index.as_retriever(similarity_top_k=4, filters=either).retrieve("x"))) == [
        "d1",
        "d2",
        "d3",
    ]
    both = MetadataFilters(
        filters=[
            MetadataFilter(key="year", value=2025, operator=FilterOperator.GTE),
            MetadataFilter(key="topic", value=["index", "storage"], operator=FilterOperator.IN),
        ]
    )
    assert ids(index.as_retriever(similarity_top_k=4, filters=both).retrieve("x")) == ["d3"]
    not_index = MetadataFilters(
        filters=[MetadataFilter(key="topic", value="index")], condition=FilterCondition.NOT
    )
    assert sorted(ids(index.as_retriever(similarity_top_k=4, filters=not_index).retrieve("x"))) == [
        "d1",
        "d4",
    ]
    index.delete_ref_doc("d2")
    assert client.get_collection("kb").count() == 3
    assert "d2" not in ids(index.as_retriever(similarity_top_k=4).retrieve("binary codes index small"))
    nodes = store.get_nodes(filters=by_topic)
    assert [n.ref_doc_id for n in nodes] == ["d3"]
    store.delete_nodes(node_ids=[nodes[0].node_id])
    assert store.get_nodes(node_ids=[nodes[0].node_id]) == []
    store.clear()
    assert client.get_collection("kb").count() == 0


def test_filters_translate_and_unsupported_ones_say_so() -> None:
    nested = MetadataFilters(
        filters=[
            MetadataFilter(key="a", value=1),
            MetadataFilters(filters=[MetadataFilter(key="b", value=[1, 2], operator=FilterOperator.ALL)]),
            MetadataFilter(key="c", value=None, operator=FilterOperator.IS_EMPTY),
        ]
    )
    assert lamina_filter(nested) == {
        "$and": [{"a": 1}, {"$and": [{"b": 1}, {"b": 2}]}, {"c": {"$exists": False}}]
    }
    either = MetadataFilters(
        filters=[
            MetadataFilter(key="a", value=1, operator=FilterOperator.GT),
            MetadataFilter(key="t", value="x", operator=FilterOperator.CONTAINS),
        ],
        condition=FilterCondition.OR,
    )
    assert lamina_filter(either) == {"$or": [{"a": {"$gt": 1}}, {"t": "x"}]}
    with pytest.raises(ValueError, match="text_match"):
        lamina_filter(
            MetadataFilters(filters=[MetadataFilter(key="a", value="x", operator=FilterOperator.TEXT_MATCH)])
        )


def test_tenants_keep_their_nodes(tmp_path: Path) -> None:
    with lamina.connect(str(tmp_path / "data")) as c:
        acme_index, _ = _index(c, tenant="acme")
        store = LaminaVectorStore(c, "kb", tenant="globex")
        globex = VectorStoreIndex.from_documents(
            DOCS[:1],
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=HashedWords(),
        )
        assert len(globex.as_retriever(similarity_top_k=10).retrieve("tenant")) == 1
        assert len(acme_index.as_retriever(similarity_top_k=10).retrieve("tenant")) == 4


def test_nodes_without_embeddings_use_the_collection_model(tmp_path: Path) -> None:
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery

    with lamina.connect(str(tmp_path / "data")) as client:
        store = LaminaVectorStore(client, "kb")
        store.add(
            [
                TextNode(text="Prune roses in late winter.", id_="r"),
                TextNode(text="Tides follow the moon.", id_="t"),
            ]
        )
        assert client.get_collection("kb").config.embedding is not None
        result = store.query(VectorStoreQuery(query_str="moon and the sea", similarity_top_k=1))
        assert (
            result.ids == ["t"]
            and result.nodes is not None
            and result.nodes[0].get_content() == "Tides follow the moon."
        )
