"""LangChain's standard vector-store suite (langchain-tests) against an embedded Lamina
and a Lamina server, plus filters, MMR, retrievers and tenants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests import VectorStoreIntegrationTests

import lamina
from lamina.integrations.langchain import LaminaVectorStore, metadata_filter
from tests.conftest import ServerThread


class TestEmbeddedStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path: Path) -> Iterator[LaminaVectorStore]:  # type: ignore[override]
        with lamina.connect(str(tmp_path / "data")) as client:
            yield LaminaVectorStore(client, "docs", self.get_embeddings())


class TestServerStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path: Path) -> Iterator[LaminaVectorStore]:  # type: ignore[override]
        srv = ServerThread(tmp_path / "data")
        try:
            with lamina.connect(srv.address) as client:
                yield LaminaVectorStore(client, "docs", self.get_embeddings())
        finally:
            srv.stop()


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[LaminaVectorStore]:
    with lamina.connect(str(tmp_path / "data")) as client:
        yield LaminaVectorStore(client, "docs", DeterministicFakeEmbedding(size=16))


DOCS = [
    Document(page_content="binary codes cut memory", metadata={"topic": "index", "year": 2024}, id="a"),
    Document(page_content="binary codes cut memory!", metadata={"topic": "index", "year": 2025}, id="b"),
    Document(page_content="rocksdb keeps the vectors", metadata={"topic": "storage", "year": 2023}, id="c"),
    Document(page_content="tenants never meet", metadata={"topic": "tenancy", "year": 2025}, id="d"),
]


def test_metadata_filters_reach_the_metadata(store: LaminaVectorStore) -> None:
    store.add_documents(DOCS)
    assert metadata_filter({"$or": [{"topic": "index"}, {"year": {"$gte": 2025}}]}) == {
        "$or": [{"metadata.topic": "index"}, {"metadata.year": {"$gte": 2025}}]
    }
    found = store.similarity_search("memory", k=4, filter={"topic": "index"})
    assert {d.id for d in found} == {"a", "b"}
    found = store.similarity_search(
        "memory", k=4, filter={"$or": [{"topic": "storage"}, {"year": {"$gte": 2025}}]}
    )
    assert {d.id for d in found} == {"b", "c", "d"}
    assert store.similarity_search("x", k=4, filter={"topic": "none"}) == []


def test_scores_mmr_retriever_and_from_texts(tmp_path: Path) -> None:
    emb = DeterministicFakeEmbedding(size=16)
    with lamina.connect(str(tmp_path / "data")) as client:
        store = LaminaVectorStore.from_texts(
            [d.page_content for d in DOCS],
            emb,
            [d.metadata for d in DOCS],
            ids=["a", "b", "c", "d"],
            client=client,
        )
        (doc, score), *_ = store.similarity_search_with_score(DOCS[2].page_content, k=2)
        assert doc.id == "c" and score == pytest.approx(1.0, abs=1e-5)  # the text itself: cosine 1
        relevance = store.similarity_search_with_relevance_scores(DOCS[2].page_content, k=4)
        assert all(0.0 <= r <= 1.0 for _, r in relevance) and relevance[0][1] == pytest.approx(1.0, abs=1e-5)
        # MMR with lambda 0 prefers diversity: of the two near-duplicates it keeps one
        picked = store.max_marginal_relevance_search(DOCS[0].page_content, k=2, fetch_k=4, lambda_mult=0.0)
        assert len(picked) == 2 and picked[0].id == "a" and picked[1].id != "a"
        retriever = store.as_retriever(search_kwargs={"k": 1, "filter": {"topic": "tenancy"}})
        assert [d.id for d in retriever.invoke("anything")] == ["d"]
        assert [d.id for d in store.get_by_ids(["d", "zz", "a"])] == ["d", "a"]


def test_tenants_keep_their_documents(tmp_path: Path) -> None:
    emb = DeterministicFakeEmbedding(size=8)
    with lamina.connect(str(tmp_path / "data")) as client:
        acme = LaminaVectorStore(client, "kb", emb, tenant="acme")
        globex = LaminaVectorStore(client, "kb", emb, tenant="globex")
        acme.add_texts(["acme plans"], ids=["1"])
        globex.add_texts(["globex plans"], ids=["1"])  # the same id, another tenant's document
        assert [d.page_content for d in acme.similarity_search("plans", k=5)] == ["acme plans"]
        assert [d.page_content for d in globex.get_by_ids(["1"])] == ["globex plans"]
        assert client.get_collection("kb").config.multi_tenant


def test_without_an_embedding_the_collection_model_embeds(tmp_path: Path) -> None:
    srv = ServerThread(tmp_path / "server")
    try:
        with lamina.connect(srv.address) as client:
            store = LaminaVectorStore(client, "kb")  # no embedding object: the server's model embeds
            store.add_texts(
                ["Prune roses in late winter.", "Tides follow the moon."],
                metadatas=[{"t": "garden"}, {"t": "sea"}],
            )
            col = client.get_collection("kb")
            assert col.config.embedding is not None and col.config.embedding.model == "minilm"
            found = store.similarity_search("when do I cut back roses?", k=1)
            assert found[0].page_content == "Prune roses in late winter." and found[0].metadata == {
                "t": "garden"
            }
            assert store.max_marginal_relevance_search("ocean", k=1, fetch_k=2)[0].metadata == {"t": "sea"}
    finally:
        srv.stop()
