"""The one place where protobuf messages and Lamina's Python types meet.

The server converts requests with the ``*_from_proto`` functions and answers with
``*_to_proto``; the remote client does the reverse. Nothing else imports *_pb2.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from typing import Any, cast

import numpy as np
import orjson

from lamina.errors import InvalidArgument
from lamina.proto.lamina.v1 import collections_pb2 as cpb
from lamina.proto.lamina.v1 import common_pb2 as pb
from lamina.proto.lamina.v1 import points_pb2 as ppb
from lamina.proto.lamina.v1 import search_pb2 as spb
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
    IndexStatus,
    IndexType,
    Metric,
    Payload,
    Point,
    PointId,
    QuantizationConfig,
    QuantizationType,
    QueryPlan,
    SearchParams,
    SegmentPlan,
    SnapshotInfo,
    TenantInfo,
    make_hit,
)
from lamina.validation import check_json_value

_METRIC_TO_PROTO = {"cosine": cpb.COSINE, "dot": cpb.DOT, "l2": cpb.L2}
_METRIC_FROM_PROTO: dict[int, Metric] = {
    cpb.METRIC_UNSPECIFIED: "cosine",
    cpb.COSINE: "cosine",
    cpb.DOT: "dot",
    cpb.L2: "l2",
}


# ---------------------------------------------------------------- ids
def id_to_proto(point_id: PointId) -> pb.PointId:
    return pb.PointId(str=point_id) if isinstance(point_id, str) else pb.PointId(num=point_id)


def id_from_proto(msg: pb.PointId) -> PointId:
    kind = msg.WhichOneof("kind")
    if kind == "num":
        return int(msg.num)
    if kind == "str":
        return str(msg.str)
    raise InvalidArgument("a point id has neither num nor str set")


# ---------------------------------------------------------------- vectors
def matrix_to_proto(matrix: FloatMatrix) -> pb.Vectors:
    return pb.Vectors(dim=matrix.shape[1], data=matrix.astype("<f4", copy=False).tobytes())


def matrix_from_proto(msg: pb.Vectors) -> FloatMatrix:
    if msg.dim == 0:
        raise InvalidArgument("vectors.dim must be positive")
    if len(msg.data) % (4 * msg.dim):
        raise InvalidArgument(
            f"vectors.data holds {len(msg.data)} bytes, not a whole number of float32 rows of dim {msg.dim}"
        )
    return np.frombuffer(msg.data, dtype="<f4").reshape(-1, msg.dim)


def vector_from_bytes(data: bytes) -> FloatMatrix:
    if len(data) % 4:
        raise InvalidArgument(f"vector holds {len(data)} bytes, not a whole number of float32 values")
    return np.frombuffer(data, dtype="<f4")


# ---------------------------------------------------------------- JSON fields
def filter_to_json(flt: Any) -> str:
    """Encode a user's filter as JSON text ("" for None); NaN and non-JSON values are refused
    here, because orjson would quietly turn NaN into null."""
    if flt is None:
        return ""
    check_json_value(flt, "filter", max_depth=200)
    try:
        return orjson.dumps(flt).decode()
    except TypeError as exc:
        raise InvalidArgument(f"filter is not JSON-serialisable: {exc}") from None


def _stored_payload_json(payload: Payload | None) -> str:
    """A payload read back from storage: validated when it was written, so only encoded."""
    return "" if payload is None else orjson.dumps(payload).decode()


def filter_from_json(text: str) -> Filter | None:
    if not text:
        return None
    try:
        return cast(Filter, orjson.loads(text))
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"filter is not valid JSON: {exc}") from None


def payload_from_json(text: str | bytes) -> Payload | None:
    if not text:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"payload is not valid JSON: {exc}") from None
    return cast(Payload, value)


# ---------------------------------------------------------------- collections
def config_to_proto(config: CollectionConfig) -> cpb.CollectionConfig:
    idx = config.index
    msg = cpb.CollectionConfig(
        dim=config.dim,
        metric=_METRIC_TO_PROTO[config.metric],
        index=cpb.IndexConfig(type=idx.type, m=idx.m, ef_construction=idx.ef_construction, ef=idx.ef),
        segment_rows=config.segment_rows,
        max_segment_rows=config.max_segment_rows,
        payload_index=config.payload_index,
        multi_tenant=config.multi_tenant,
        tenant_index_rows=config.tenant_index_rows,
        shards=config.shards,
        replicas=config.replicas,
    )
    q = config.quantization
    if q is not None:
        msg.quantization.CopyFrom(
            cpb.QuantizationConfig(type=q.type, bits=q.bits, m=q.m, oversample=q.oversample)
        )
    e = config.embedding
    if e is not None:
        msg.embedding.CopyFrom(cpb.EmbeddingConfig(model=e.model, url=e.url, api_key_env=e.api_key_env))
    return msg


def config_from_proto(msg: cpb.CollectionConfig) -> CollectionConfig:
    """A config from its message; zero fields take their documented defaults."""
    if msg.metric not in _METRIC_FROM_PROTO:
        raise InvalidArgument(f"unknown metric enum value {msg.metric}: use COSINE, DOT or L2")
    index = IndexConfig()
    if msg.HasField("index"):
        i = msg.index
        index = IndexConfig(
            type=cast(IndexType, i.type or index.type),
            m=i.m or index.m,
            ef_construction=i.ef_construction or index.ef_construction,
            ef=i.ef or index.ef,
        )
    quant = None
    if msg.HasField("quantization"):
        q = msg.quantization
        quant = QuantizationConfig(
            type=cast(QuantizationType, q.type), bits=q.bits or 1, m=q.m, oversample=q.oversample
        )
    return CollectionConfig(
        dim=msg.dim,
        metric=_METRIC_FROM_PROTO[msg.metric],
        index=index,
        quantization=quant,
        segment_rows=msg.segment_rows or DEFAULT_SEGMENT_ROWS,
        max_segment_rows=msg.max_segment_rows or max(DEFAULT_MAX_SEGMENT_ROWS, msg.segment_rows),
        payload_index=dict(msg.payload_index),
        multi_tenant=msg.multi_tenant,
        tenant_index_rows=msg.tenant_index_rows or DEFAULT_TENANT_INDEX_ROWS,
        shards=msg.shards or 1,
        replicas=msg.replicas or 1,
        embedding=EmbeddingConfig(msg.embedding.model, msg.embedding.url, msg.embedding.api_key_env)
        if msg.HasField("embedding")
        else None,
    )


def info_to_proto(info: CollectionInfo) -> cpb.CollectionInfo:
    st = info.status
    return cpb.CollectionInfo(
        name=info.name,
        config=config_to_proto(info.config),
        count=info.count,
        status=cpb.IndexStatus(
            segments=st.segments,
            indexed_points=st.indexed_points,
            mutable_points=st.mutable_points,
            index_bytes=st.index_bytes,
            note=st.note,
            optimizing=st.optimizing,
            tenants=st.tenants,
            tenant_partitions=st.tenant_partitions,
            write_stall=st.write_stall,
        ),
    )


def info_from_proto(msg: cpb.CollectionInfo) -> CollectionInfo:
    st = msg.status
    status = IndexStatus(
        st.segments,
        st.indexed_points,
        st.mutable_points,
        st.index_bytes,
        st.note,
        st.optimizing,
        st.tenants,
        st.tenant_partitions,
        st.write_stall,
    )
    return CollectionInfo(name=msg.name, config=config_from_proto(msg.config), count=msg.count, status=status)


def params_to_proto(params: SearchParams | None) -> spb.SearchParams | None:
    if params is None:
        return None
    msg = spb.SearchParams(exact=params.exact, plan=params.plan)
    if params.ef is not None:
        msg.ef = params.ef
    if params.oversample is not None:
        msg.oversample = params.oversample
    return msg


def params_from_proto(msg: spb.SearchParams) -> SearchParams:
    return SearchParams(
        ef=msg.ef if msg.HasField("ef") else None,
        oversample=msg.oversample if msg.HasField("oversample") else None,
        exact=msg.exact,
        plan=msg.plan or "auto",
    )


def plan_to_proto(plan: QueryPlan) -> spb.QueryPlan:
    return spb.QueryPlan(
        segments=[
            spb.SegmentPlan(
                segment=s.segment,
                rows=s.rows,
                matches=s.matches,
                method=s.method,
                reason=s.reason,
                seconds=s.seconds,
            )
            for s in plan.segments
        ],
        indexed_fields=plan.indexed_fields,
        unindexed_fields=plan.unindexed_fields,
        hits=plan.hits,
        seconds=plan.seconds,
    )


def plan_from_proto(msg: spb.QueryPlan) -> QueryPlan:
    return QueryPlan(
        segments=[
            SegmentPlan(s.segment, s.rows, s.matches, s.method, s.reason, s.seconds) for s in msg.segments
        ],
        indexed_fields=list(msg.indexed_fields),
        unindexed_fields=list(msg.unindexed_fields),
        hits=msg.hits,
        seconds=msg.seconds,
    )


# ---------------------------------------------------------------- points and hits
def _vector_bytes(vector: FloatMatrix | None) -> bytes:
    return b"" if vector is None else vector.astype("<f4", copy=False).tobytes()


def point_to_proto(point: Point) -> pb.Point:
    return pb.Point(
        id=id_to_proto(point.id),
        vector=_vector_bytes(point.vector),
        payload_json=_stored_payload_json(point.payload),
    )


def point_from_proto(msg: pb.Point, with_vector: bool, with_payload: bool) -> Point:
    return Point(
        id=id_from_proto(msg.id),
        vector=np.frombuffer(msg.vector, dtype="<f4").copy() if with_vector else None,
        payload=(payload_from_json(msg.payload_json) or {}) if with_payload else None,
    )


def hits_to_proto(hits: Sequence[Hit], into: Any, payloads: Sequence[bytes] | None = None) -> None:
    """Append ``hits`` to ``into`` (a repeated ScoredPoint field), setting fields on messages
    the field adds: a third of the time of building each message from keyword arguments.
    ``payloads``: each hit's payload as stored JSON bytes (``search_json``), set as they are
    (the hits' own payloads are then None)."""
    add = into.add
    for at, hit in enumerate(hits):
        msg = add()
        if isinstance(hit.id, str):
            msg.id.str = hit.id
        else:
            msg.id.num = hit.id
        msg.score = hit.score
        if payloads is not None:
            if blob := payloads[at]:
                msg.payload_json = blob  # UTF-8 JSON, as stored: no decoding and encoding again
        elif hit.payload is not None:
            msg.payload_json = orjson.dumps(hit.payload).decode()
        if hit.vector is not None:
            msg.vector = _vector_bytes(hit.vector)


def hits_to_response(
    hits: Sequence[Hit],
    response: spb.SearchResponse,
    payloads: Sequence[bytes] | None = None,
    *,
    packed: bool = False,
    with_payload: bool = False,
) -> None:
    """Put ``hits`` in a SearchResponse: as parallel arrays in ``response.packed`` when
    ``packed`` (the request's packed_hits) and every hit has a numeric id and no vector, else
    a message per hit (``hits_to_proto``). ``payloads``: as for ``hits_to_proto``;
    ``with_payload``: the request asked for payloads (packed answers carry one per hit then)."""
    if packed:
        ids = [hit.id for hit in hits]
        if not any(isinstance(pid, str) for pid in ids) and all(hit.vector is None for hit in hits):
            out = response.packed
            out.ids.extend(cast(list[int], ids))
            out.scores.extend([hit.score for hit in hits])
            if payloads is not None:
                out.payloads_json.extend([blob or b"" for blob in payloads])
            elif with_payload:
                out.payloads_json.extend(
                    [b"" if hit.payload is None else orjson.dumps(hit.payload) for hit in hits]
                )
            return
    hits_to_proto(hits, response.hits, payloads)


def hits_from_response(response: spb.SearchResponse, with_vector: bool, with_payload: bool) -> list[Hit]:
    """The hits of a SearchResponse, from ``packed`` (see ``hits_to_response``) or ``hits``."""
    packed = response.packed
    if not packed.ids:
        return hits_from_proto(response.hits, with_vector, with_payload)
    if with_payload:
        return [
            make_hit(pid, score, payload_from_json(blob) or {})
            for pid, score, blob in zip(packed.ids, packed.scores, packed.payloads_json, strict=True)
        ]
    return [make_hit(pid, score) for pid, score in zip(packed.ids, packed.scores, strict=True)]


def hit_from_proto(msg: spb.ScoredPoint, with_vector: bool, with_payload: bool) -> Hit:
    return Hit(
        id=id_from_proto(msg.id),
        score=float(msg.score),
        payload=(payload_from_json(msg.payload_json) or {}) if with_payload else None,
        vector=np.frombuffer(msg.vector, dtype="<f4").copy() if with_vector else None,
    )


def hits_from_proto(msgs: Iterable[spb.ScoredPoint], with_vector: bool, with_payload: bool) -> list[Hit]:
    """``hit_from_proto`` of each message; hits with numeric ids and nothing else (the common
    answer) are read without the per-hit calls."""
    if with_vector or with_payload:
        return [hit_from_proto(m, with_vector, with_payload) for m in msgs]
    out = []
    for msg in msgs:
        pid = msg.id
        out.append(make_hit(pid.num if pid.WhichOneof("kind") == "num" else id_from_proto(pid), msg.score))
    return out


def snapshot_to_proto(info: SnapshotInfo) -> cpb.SnapshotInfo:
    return cpb.SnapshotInfo(**asdict(info))


def snapshot_from_proto(msg: cpb.SnapshotInfo) -> SnapshotInfo:
    return SnapshotInfo(**{f.name: getattr(msg, f.name) for f in fields(SnapshotInfo)})


def tenant_from_proto(tenant: str) -> str | None:
    """A request's tenant: the empty string (proto3's unset) is none."""
    return tenant or None


def tenant_to_proto(info: TenantInfo) -> ppb.TenantInfo:
    return ppb.TenantInfo(name=info.name, points=info.points, indexed=info.indexed)


def tenant_from_info_proto(msg: ppb.TenantInfo) -> TenantInfo:
    return TenantInfo(msg.name, msg.points, msg.indexed)
