"""Hypothesis fuzzing of the running gRPC server with malformed and extreme requests.

Requests are drawn from the protobuf descriptors of every Lamina RPC (so a new RPC is
fuzzed without touching this file), with extreme values where they hurt: wrong and zero
dimensions, NaN/Inf, huge or negative k, empty and enormous batches, giant payloads,
deeply nested filters, very long ids and names, unknown enum values, and truncated or
corrupted bytes. The server must stay up; every answer is OK or a precise status with a
message; a rejected request changes nothing.

``LAMINA_FUZZ_EXAMPLES`` (default 1000) sets the number of examples.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.client.api import Client
from lamina.client.embedded import EmbeddedTransport
from lamina.client.transport import GrpcTransport
from lamina.config import DEFAULT_LIMITS
from lamina.proto.lamina.v1 import collections_pb2, common_pb2, info_pb2, points_pb2, search_pb2
from lamina.testing import ServerProcess
from lamina.types import CollectionConfig
from tests.conftest import ServerThread

DIM = 8
COLLECTION = "fz"
TENANTED = "fzt"  # a multi-tenant collection, with tenants "acme" and "beta"
EXAMPLES = int(os.environ.get("LAMINA_FUZZ_EXAMPLES", "1000"))
PROCESSES_EXAMPLES = int(os.environ.get("LAMINA_FUZZ_PROCESSES_EXAMPLES", "150"))
# statuses a well-formed answer to a bad request may carry; never INTERNAL or UNKNOWN
PRECISE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
METHODS = [
    (f"/{service.full_name}/{method.name}", method.input_type)
    for module in (collections_pb2, points_pb2, search_pb2, info_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
TALLY: Counter[str] = Counter()
BY_METHOD: Counter[tuple[str, str]] = Counter()

names = st.one_of(
    st.just(COLLECTION),
    st.just(COLLECTION),
    st.just(COLLECTION),
    st.just(TENANTED),
    st.just(TENANTED),
    st.sampled_from(["", "nope", "x" * 129, "a" * 128, "../etc", "has space", "ü", ".hidden", "-"]),
    st.text(max_size=40),
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["$eq", "$and", "$or", "$not", "$in", "$gt", "$exists", "$nor", "2024-01-01T00:00:00Z"]),
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["a", "$and", "$or", "x.y", "$gt", "n"]), inner, max_size=4),
    ),
    max_leaves=20,
)


def deep(depth: int, op: str) -> Any:
    node: Any = {"a": 1}
    for _ in range(depth):
        node = {op: [node]} if op != "$not" else {"$not": node}
    return node


json_text = st.one_of(
    st.just(""),
    json_values.map(json.dumps),
    st.builds(deep, st.integers(1, 200), st.sampled_from(["$and", "$or", "$not", "$nor"])).map(json.dumps),
    st.sampled_from(["{", "[1,2", "NaN", '{"a": NaN}', '{"a": Infinity}', "null", "[]", '"x"', "1e999"]),
    st.integers(2 << 20, 3 << 20).map(lambda n: orjson.dumps({"big": "x" * n}).decode()),  # giant payloads
    st.text(max_size=30),
)


def vector_bytes(dim: int, n: int, special: str) -> bytes:
    arr = np.random.default_rng(dim * 31 + n).standard_normal((n, dim)).astype("<f4")
    if arr.size and special != "finite":
        arr.flat[0] = {"nan": np.nan, "inf": np.inf, "ninf": -np.inf, "max": 3.4e38}[special]
    return arr.tobytes()


vectors_raw = st.one_of(
    st.builds(
        vector_bytes,
        st.sampled_from([DIM, DIM, 0, 1, DIM - 1, DIM + 1, 1024]),
        st.sampled_from([0, 1, 3, 1001]),
        st.sampled_from(["finite", "finite", "nan", "inf", "ninf", "max"]),
    ),
    st.binary(max_size=40),
)
big_ints = st.sampled_from([-(2**63), -1, 0, 1, 3, 10, 10_000, 10_001, 2**31, 2**63 - 1])
doubles = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 0.5, 1.0, 1e308, 5e-324])


def field_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """Values for one field, extreme where extremes are interesting."""
    t = field.type
    name = field.name
    if t == FieldDescriptor.TYPE_MESSAGE:
        if depth > 3:
            return st.none()
        inner = message_strategy(field.message_type, depth + 1)
        if field.message_type.full_name == "lamina.v1.PointId":
            inner = st.one_of(
                st.builds(lambda v: GetMessageClass(field.message_type)(num=v), st.integers(0, 2**64 - 1)),
                st.builds(
                    lambda v: GetMessageClass(field.message_type)(str=v),
                    st.one_of(st.text(max_size=8), st.just("i" * 5000)),
                ),
                inner,
            )
        return inner
    if t == FieldDescriptor.TYPE_STRING:
        if name in ("collection", "name"):
            return names
        if name.endswith("_json"):
            return json_text
        if name == "tenant":
            return st.one_of(
                st.sampled_from(["acme", "acme", "beta", "", "nobody", "t" * 300, "a\nb"]),
                st.text(max_size=12),
            )
        return st.one_of(
            st.text(max_size=20), st.sampled_from(["rrf", "weighted", "exact", "keyword", "text", "a" * 5000])
        )
    if t == FieldDescriptor.TYPE_BYTES:
        return vectors_raw
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)  # unknown values included
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return doubles
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.sampled_from([0, 1, DIM - 1, DIM, DIM + 1, 2**32 - 1])
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.sampled_from([0, 1, 2**64 - 1])
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.sampled_from([-(2**31), -1, 0, 1, 2**31 - 1])
    return big_ints


def message_strategy(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = GetMessageClass(desc)
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            keys = st.one_of(st.sampled_from(["a", "n.x", "", "$bad", "t", "a." * 40]), st.text(max_size=10))
            kinds = st.sampled_from(["keyword", "int", "float", "bool", "datetime", "text", "vector", ""])
            parts[field.name] = st.one_of(st.none(), st.dictionaries(keys, kinds, max_size=3))
            continue
        value = field_strategy(field, depth)
        if field.is_repeated:
            many = st.lists(value, max_size=5)
            if field.message_type is not None and field.message_type.full_name == "lamina.v1.PointId":
                # enormous batches: ids past the batch limit
                point_id = GetMessageClass(field.message_type)
                huge = st.integers(10_001, 10_050).map(lambda n, cls=point_id: [cls(num=i) for i in range(n)])
                many = st.one_of(many, huge)
            parts[field.name] = st.one_of(st.none(), many)
        else:
            parts[field.name] = st.one_of(st.none(), value)

    def build(values: dict[str, Any]) -> Message:
        msg = cls()
        for key, value in values.items():
            if value is None:
                continue
            field = desc.fields_by_name[key]
            if isinstance(value, dict):
                getattr(msg, key).update(value)
            elif field.is_repeated:
                getattr(msg, key).extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, key).CopyFrom(value)
            else:
                setattr(msg, key, value)
        return msg

    return st.fixed_dictionaries(parts).map(build)


def near_valid_upsert(n: int, dim: int, special: str, payload: str) -> points_pb2.UpsertRequest:
    """Upserts that pass the first checks, to reach the deeper ones."""
    req = points_pb2.UpsertRequest(collection=COLLECTION)
    req.ids.extend(common_pb2.PointId(num=1000 + i) for i in range(n))
    req.vectors.dim = dim
    req.vectors.data = vector_bytes(dim, n, special)
    req.payloads_json.extend([payload] * n)
    return req


def near_valid_search(dim: int, special: str, k: int, flt: str, exact: bool) -> search_pb2.SearchRequest:
    """Searches with a usable vector, to reach the k, filter and planner checks."""
    return search_pb2.SearchRequest(
        collection=COLLECTION,
        vector=vector_bytes(dim, 1, special),
        k=k,
        filter_json=flt,
        params=search_pb2.SearchParams(exact=exact),
        explain=not exact,
    )


requests = st.one_of(
    st.builds(
        lambda *a: ("/lamina.v1.Search/Search", near_valid_search(*a).SerializeToString()),
        st.sampled_from([DIM, DIM, DIM, 0, DIM + 1]),
        st.sampled_from(["finite", "finite", "nan", "inf", "max"]),
        st.one_of(st.integers(1, 60), big_ints),
        st.one_of(st.just(""), st.just('{"a": {"$gte": 10}}'), json_text),
        st.booleans(),
    ),
    st.sampled_from(METHODS).flatmap(
        lambda m: st.tuples(st.just(m[0]), message_strategy(m[1]).map(lambda r: r.SerializeToString()))
    ),
    st.builds(
        lambda *a: ("/lamina.v1.Points/Upsert", near_valid_upsert(*a).SerializeToString()),
        st.integers(0, 4),
        st.sampled_from([DIM, DIM, DIM + 1]),
        st.sampled_from(["finite", "finite", "nan", "inf"]),
        json_text,
    ),
    # truncated and corrupted bytes of a generated request
    st.sampled_from(METHODS).flatmap(
        lambda m: st.tuples(
            st.just(m[0]),
            st.tuples(
                message_strategy(m[1]).map(lambda r: r.SerializeToString()),
                st.integers(0, 64),
                st.binary(min_size=1, max_size=4),
            ).map(lambda t: t[0][: max(0, len(t[0]) - 1 - t[1])] + (t[2] if t[1] % 2 else b"")),
        )
    ),
)


def fingerprint(client: Client) -> str:
    """A digest of everything a client could observe: collections, configs, points."""
    digest = hashlib.sha256()
    for name in client.list_collections():
        col = client.get_collection(name)
        config = col.info().config
        digest.update(name.encode() + orjson.dumps(config.to_dict()))
        tenants = [t.name for t in col.list_tenants()] if config.multi_tenant else [None]
        for tenant in tenants:
            digest.update(repr(tenant).encode())
            offset = None
            while True:
                points, offset = col.scroll(1_000, offset, with_payload=True, with_vector=True, tenant=tenant)
                for p in points:
                    digest.update(repr(p.id).encode() + p.vector.tobytes() + orjson.dumps(p.payload))  # type: ignore[union-attr]
                if offset is None:
                    break
    digest.update(orjson.dumps([s.name for s in client.list_snapshots()]))
    return digest.hexdigest()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, grpc.Channel]]:
    """The server in this process, and a client of its database (in-process too)."""
    srv = ServerThread(Path(tmp_path_factory.mktemp("fuzz")) / "data")
    channel = grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 128 << 20)])
    yield Client(EmbeddedTransport("", db=srv.db), DEFAULT_LIMITS), channel
    channel.close()
    srv.stop()
    print(f"\nfuzzed {sum(TALLY.values())} requests: {dict(sorted(TALLY.items()))}")
    if os.environ.get("LAMINA_FUZZ_VERBOSE"):
        for (method, code), n in sorted(BY_METHOD.items()):
            print(f"  {method:<20} {code:<20} {n}")


@pytest.fixture(scope="module")
def processes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, grpc.Channel]]:
    """``lamina serve --processes 2``: a client of the writer process, and a channel to the
    reader process alone (it answers reads, forwards the rest to the writer)."""
    root = Path(tmp_path_factory.mktemp("fuzzprocesses"))
    server = ServerProcess(root / "data", "--processes", "2", "--run-dir", str(root / "run"))
    try:
        for index in (0, 1):
            deadline = time.monotonic() + 60
            while not (root / "run" / f"process-{index}.ready").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        writer = Client(
            GrpcTransport(f"unix:{root / 'run' / 'process-0.sock'}", timeout=60.0), DEFAULT_LIMITS
        )
        channel = grpc.insecure_channel(
            f"unix:{root / 'run' / 'process-1.sock'}", options=[("grpc.max_send_message_length", 128 << 20)]
        )
        yield writer, channel
        channel.close()
        writer.close()
    finally:
        assert server.terminate() == 0


def reset(client: Client) -> None:
    """The collection the requests aim at, with a few points and a payload index."""
    for name in client.list_collections():
        if name not in (COLLECTION, TENANTED):
            client.delete_collection(name)
    if COLLECTION not in client.list_collections():
        col = client.create_collection(COLLECTION, dim=DIM, payload_index={"a": "int"})
        rng = np.random.default_rng(0)
        col.upsert(
            list(range(50)), rng.standard_normal((50, DIM)), [{"a": i, "n": {"x": [i]}} for i in range(50)]
        )
    names = client.list_collections()
    if TENANTED not in names or {t.name for t in client.get_collection(TENANTED).list_tenants()} != {
        "acme",
        "beta",
    }:
        if TENANTED in names:
            client.delete_collection(TENANTED)
        mt = client.create_collection(TENANTED, dim=DIM, multi_tenant=True, tenant_index_rows=16)
        rng = np.random.default_rng(1)
        for tenant in ("acme", "beta"):
            mt.upsert(
                list(range(30)), rng.standard_normal((30, DIM)), [{"a": i} for i in range(30)], tenant=tenant
            )
        mt.optimize()
    for snap in client.list_snapshots():
        client.delete_snapshot(snap.collection, snap.name)


def fuzz_one(client: Client, channel: grpc.Channel, method: str, raw: bytes) -> None:
    """Send one request: it is answered, or refused with a precise status and a message
    and changes nothing; the server stays healthy."""
    reset(client)
    before = fingerprint(client)
    call = channel.unary_unary(method)
    try:
        call(raw, timeout=60)
        TALLY["ok"] += 1
        BY_METHOD[method.rsplit("/", 1)[1], "ok"] += 1
    except grpc.RpcError as exc:
        code = exc.code()
        TALLY[code.name] += 1
        BY_METHOD[method.rsplit("/", 1)[1], code.name] += 1
        assert code in PRECISE, f"{method} answered {code}: {exc.details()}"
        assert exc.details(), f"{method} answered {code} without a message"
        assert fingerprint(client) == before, f"{method} was rejected ({code}) but changed the state"
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(requests)
def test_server_answers_every_fuzzed_request_precisely(
    fuzz_server: tuple[Client, grpc.Channel], request: tuple[str, bytes]
) -> None:
    fuzz_one(*fuzz_server, *request)


@settings(
    max_examples=PROCESSES_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(requests)
def test_every_process_of_a_multi_process_server_answers_fuzzed_requests_precisely(
    processes_server: tuple[Client, grpc.Channel], request: tuple[str, bytes]
) -> None:
    """The same requests sent to the reader process of ``lamina serve --processes 2``: the
    reads it answers and the writes it forwards are refused as precisely, and change nothing."""
    fuzz_one(*processes_server, *request)


# ---------------------------------------------------------------- expensive but valid requests
BIG = "fzbig"  # 20,000 points with unindexed payloads: where filters and big answers cost most
BIG_POINTS = 20_000
HEAVY_EXAMPLES = int(os.environ.get("LAMINA_FUZZ_HEAVY_EXAMPLES", "6"))
HEAVY_COPIES = 4  # sent at once, from one client
HEAVY_DEADLINE = 5.0  # seconds each heavy request may take
LIGHT_WITHIN = 2.0  # seconds a second client's trivial call may take meanwhile
#: seconds the work of requests whose clients left may take to stop: the deadline is checked
#: between blocks of work, and one block took over 5 s once on this 2-core machine at load 5-7
STOP_WITHIN = 15.0
HEAVY_STATUSES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # refused before the work: a limit named in the message
    grpc.StatusCode.DEADLINE_EXCEEDED,  # ran out of its deadline (its work is stopped)
}


def wide_in(field: str, op: str, n: int) -> dict[str, Any]:
    return {field: {op: [f"t{i}" if field == "tag" else i for i in range(n)]}}


def many_clauses(op: str, n: int, field: str) -> dict[str, Any]:
    return {op: [{field: f"x{i}" if field == "tag" else {"$gt": i}} for i in range(n)]}


expensive_filters = st.one_of(
    st.builds(
        wide_in,
        st.sampled_from(["tag", "n", "missing", "nested.x"]),
        st.sampled_from(["$in", "$nin"]),
        st.sampled_from([1_000, 9_999, 10_001, 50_000]),
    ),
    st.builds(
        many_clauses,
        st.sampled_from(["$or", "$and", "$nor"]),
        st.sampled_from([10, 60, 400, 5_000]),
        st.sampled_from(["tag", "n"]),
    ),
    st.builds(
        lambda v, s: {"$or": [{"n": {"$gte": v}}, {"tag": {"$lt": s}}, {"nested.x": {"$exists": True}}]},
        st.integers(-5, BIG_POINTS),
        st.text(max_size=4).map(lambda s: "t" + s),
    ),
).map(orjson.dumps)


def heavy_batch(nq: int, k: int, flt: bytes, with_payload: bool, with_vector: bool) -> tuple[str, bytes]:
    req = search_pb2.SearchBatchRequest(
        collection=BIG, k=k, filter_json=flt.decode(), with_payload=with_payload, with_vector=with_vector
    )
    req.vectors.dim = DIM
    req.vectors.data = vector_bytes(DIM, nq, "finite")
    return "/lamina.v1.Search/SearchBatch", req.SerializeToString()


expensive_requests = st.one_of(
    expensive_filters.map(
        lambda f: ("/lamina.v1.Points/Count", points_pb2.CountRequest(collection=BIG, filter_json=f.decode()))
    ).map(lambda t: (t[0], t[1].SerializeToString())),
    st.builds(
        lambda f, vec: (
            "/lamina.v1.Points/Scroll",
            points_pb2.ScrollRequest(
                collection=BIG, limit=10_000, filter_json=f.decode(), with_payload=True, with_vector=vec
            ).SerializeToString(),
        ),
        expensive_filters,
        st.booleans(),
    ),
    st.builds(
        heavy_batch,
        st.sampled_from([1, 100, 1_000]),
        st.sampled_from([10, 1_000, 10_000]),
        st.one_of(st.just(b""), expensive_filters),
        st.booleans(),
        st.booleans(),
    ),
)


@pytest.fixture(scope="module")
def heavy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(Path(tmp_path_factory.mktemp("heavy")) / "data", workers=4)
    col = srv.db.create_collection(BIG, CollectionConfig(dim=DIM, segment_rows=10_000))
    rng = np.random.default_rng(5)
    for lo in range(0, BIG_POINTS, 10_000):
        ids = list(range(lo, lo + 10_000))
        payloads = [{"tag": f"t{i}", "n": i, "nested": {"x": [i]} if i % 2 else {}} for i in ids]
        col.upsert(ids, rng.standard_normal((10_000, DIM)), payloads)
    yield srv
    srv.stop()


@settings(
    max_examples=HEAVY_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(expensive_requests)
def test_expensive_valid_requests_leave_the_server_responsive(
    heavy_server: ServerThread, request: tuple[str, bytes]
) -> None:
    """Copies of one expensive but valid request (wide $in/$nin, many clauses on unindexed
    fields, huge k x batch with vectors and payloads) sent at once from one client: each
    is answered OK, refused RESOURCE_EXHAUSTED or stopped at its deadline, while another
    client's trivial call answers within LIGHT_WITHIN seconds; then nothing keeps running."""
    method, raw = request
    local = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 128 << 20)]
    with (
        grpc.insecure_channel(heavy_server.address, options=local) as heavy,
        grpc.insecure_channel(heavy_server.address, options=local) as light,
    ):
        calls = [heavy.unary_unary(method).future(raw, timeout=HEAVY_DEADLINE) for _ in range(HEAVY_COPIES)]
        count = light.unary_unary(
            "/lamina.v1.Points/Count", response_deserializer=points_pb2.CountResponse.FromString
        )
        started = time.monotonic()
        answer = count(points_pb2.CountRequest(collection=BIG).SerializeToString(), timeout=30)
        waited = time.monotonic() - started
        assert answer.count == BIG_POINTS
        assert waited < LIGHT_WITHIN, f"a trivial Count waited {waited:.1f} s behind {method}"
        for call in calls:
            code = call.code()
            TALLY[f"heavy {code.name}"] += 1
            assert code in HEAVY_STATUSES, f"{method} answered {code}: {call.details()}"
            if code != grpc.StatusCode.OK:
                assert call.details(), f"{method} answered {code} without a message"
    gate = heavy_server.server.gate
    deadline = time.monotonic() + STOP_WITHIN
    while gate.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gate.in_flight == 0, f"work of requests whose clients had gone kept running {STOP_WITHIN:.0f} s on"
