"""Bad input gets a precise, typed error, and a rejected request changes nothing.
Runs against both transports; the messages must say what to fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import lamina
from tests.test_api import DIM, snapshot

NAN_VECTOR = np.full((1, DIM), np.nan, dtype=np.float32)


@pytest.fixture
def col(db: lamina.Client) -> lamina.Collection:
    c = db.create_collection("docs", dim=DIM, metric="cosine")
    rng = np.random.default_rng(3)
    c.upsert(list(range(20)), rng.standard_normal((20, DIM)), [{"n": i} for i in range(20)])
    return c


def good(n: int = 1) -> np.ndarray:
    return np.ones((n, DIM), dtype=np.float32)


REJECTED_WRITES: list[tuple[str, Callable[[lamina.Collection], Any], type[Exception], str]] = [
    (
        "wrong dimension",
        lambda c: c.upsert([100], np.ones((1, DIM + 1))),
        lamina.InvalidArgument,
        "dimension",
    ),
    ("nan", lambda c: c.upsert([100], NAN_VECTOR), lamina.InvalidArgument, "NaN"),
    (
        "huge norm",
        lambda c: c.upsert([100], np.full((1, DIM), 1e30)),
        lamina.InvalidArgument,
        "scale the vectors down",
    ),
    (
        "inf",
        lambda c: c.upsert([100, 101], np.array([[1.0] * DIM, [np.inf] * DIM])),
        lamina.InvalidArgument,
        "infinity",
    ),
    (
        "float64 overflow",
        lambda c: c.upsert([100], np.full((1, DIM), 1e300)),
        lamina.InvalidArgument,
        "infinity",
    ),
    ("empty batch", lambda c: c.upsert([], np.zeros((0, DIM))), lamina.InvalidArgument, "empty"),
    ("fewer vectors", lambda c: c.upsert([100, 101], good(1)), lamina.InvalidArgument, "1 vectors for 2 ids"),
    (
        "fewer payloads",
        lambda c: c.upsert([100, 101], good(2), [{}]),
        lamina.InvalidArgument,
        "1 payloads for 2 ids",
    ),
    ("payload not dict", lambda c: c.upsert([100], good(), ["x"]), lamina.InvalidArgument, "JSON object"),
    ("payload nan", lambda c: c.upsert([100], good(), [{"x": float("nan")}]), lamina.InvalidArgument, "NaN"),
    ("payload set", lambda c: c.upsert([100], good(), [{"x": {1, 2}}]), lamina.InvalidArgument, "not JSON"),
    (
        "payload key",
        lambda c: c.upsert([100], good(), [{1: "x"}]),
        lamina.InvalidArgument,
        "keys must be strings",
    ),
    ("negative id", lambda c: c.upsert([-1], good()), lamina.InvalidArgument, "2**64"),
    ("huge id", lambda c: c.upsert([2**64], good()), lamina.InvalidArgument, "2**64"),
    ("float id", lambda c: c.upsert([1.5], good()), lamina.InvalidArgument, "float"),
    ("bool id", lambda c: c.upsert([True], good()), lamina.InvalidArgument, "bool"),
    ("empty str id", lambda c: c.upsert([""], good()), lamina.InvalidArgument, "non-empty"),
    ("long id", lambda c: c.upsert(["x" * 5000], good()), lamina.InvalidArgument, "1024 bytes"),
    ("duplicate ids", lambda c: c.upsert([100, 100], good(2)), lamina.InvalidArgument, "more than once"),
    (
        "one good one nan",
        lambda c: c.upsert([0, 100], np.vstack([good(), NAN_VECTOR])),
        lamina.InvalidArgument,
        "NaN",
    ),
    ("zero vector cosine", lambda c: c.upsert([0], np.zeros((1, DIM))), lamina.InvalidArgument, "zeros"),
    ("3-d vectors", lambda c: c.upsert([0], np.ones((1, 1, DIM))), lamina.InvalidArgument, "2-d"),
    (
        "oversized batch",
        lambda c: c.upsert(list(range(10_001)), np.ones((10_001, DIM))),
        lamina.ResourceExhausted,
        "10000",
    ),
    ("delete neither", lambda c: c.delete(), lamina.InvalidArgument, "either ids or a filter"),
    (
        "delete both",
        lambda c: c.delete(ids=[1], filter={"n": 1}),
        lamina.InvalidArgument,
        "either ids or a filter",
    ),
    ("delete bad filter", lambda c: c.delete(filter={"n": {"$bogus": 1}}), lamina.InvalidArgument, "$bogus"),
    ("delete bad id", lambda c: c.delete(ids=[-5]), lamina.InvalidArgument, "2**64"),
]


@pytest.mark.parametrize(
    ("case", "call", "error", "words"), REJECTED_WRITES, ids=[c[0] for c in REJECTED_WRITES]
)
def test_rejected_write_changes_nothing(
    col: lamina.Collection,
    case: str,
    call: Callable[[lamina.Collection], Any],
    error: type[Exception],
    words: str,
) -> None:
    before = snapshot(col)
    with pytest.raises(error) as info:
        call(col)
    assert words in str(info.value)
    assert snapshot(col) == before
    assert col.count() == len(before)


BAD_FILTERS: list[tuple[Any, str]] = [
    ({"n": {"$bogus": 1}}, "unknown operator '$bogus'"),
    ({"$xor": []}, "unknown operator '$xor'"),
    ({"$and": {"n": 1}}, "non-empty list"),
    ({"$or": []}, "non-empty list"),
    ({"n": {"$in": 5}}, "list of values"),
    ({"n": {"$gt": [1]}}, "number or a string"),
    ({"n": {"$exists": "yes"}}, "true or false"),
    ({"n": {"$gt": 1, "plain": 2}}, "do not mix"),
    ({"n": {}}, "empty condition"),
    (["n", 1], "must be an object"),
    ({"": 1}, "non-empty strings"),
]


@pytest.mark.parametrize(("flt", "words"), BAD_FILTERS, ids=[str(f[0]) for f in BAD_FILTERS])
def test_malformed_filter_is_invalid_argument(col: lamina.Collection, flt: Any, words: str) -> None:
    for call in (lambda: col.search(np.ones(DIM), k=3, filter=flt), lambda: col.count(filter=flt)):
        with pytest.raises(lamina.InvalidArgument) as info:
            call()
        assert words in str(info.value)


def test_deeply_nested_filter_is_rejected(col: lamina.Collection) -> None:
    flt: dict[str, Any] = {"n": 1}
    for _ in range(40):
        flt = {"$not": flt}
    with pytest.raises(lamina.InvalidArgument, match="nested deeper"):
        col.count(filter=flt)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"k": 0}, "k must be positive"),
        ({"k": -3}, "k must be positive"),
        ({"k": 10**9}, "exceeds the maximum"),
        ({"k": 2.5}, "k must be an integer"),
        ({"vector": np.ones(DIM + 2)}, "dimension"),
        ({"vector": np.full(DIM, np.nan)}, "NaN"),
        ({"vector": np.zeros(DIM)}, "zeros"),
        ({"vector": np.full(DIM, 3e38)}, "scores would overflow float32"),
        ({"vector": np.full(DIM, 1.01e18 / np.sqrt(DIM))}, "over the limit of 1e+18"),  # finite, too long
        ({"vector": np.ones((2, DIM))}, "1-d"),
        ({"vector": ["a"] * DIM}, "numeric"),
    ],
)
def test_bad_search_is_invalid_argument(col: lamina.Collection, kwargs: dict[str, Any], words: str) -> None:
    args = {"vector": np.ones(DIM), "k": 5} | kwargs
    with pytest.raises(lamina.InvalidArgument) as info:
        col.search(args["vector"], k=args["k"])
    assert words in str(info.value)


def test_bad_batch_search(col: lamina.Collection) -> None:
    with pytest.raises(lamina.InvalidArgument, match="dimension"):
        col.search_batch(np.ones((3, DIM - 1)), k=2)
    with pytest.raises(lamina.ResourceExhausted, match="exceeds the limit of 1000"):
        col.search_batch(np.ones((1001, DIM)), k=2)
    assert col.search_batch(np.zeros((0, DIM)), k=2) == []


def test_unknown_collection_is_not_found(db: lamina.Client) -> None:
    with pytest.raises(lamina.NotFound, match="'ghost' does not exist"):
        db.get_collection("ghost")
    with pytest.raises(lamina.NotFound):
        db.delete_collection("ghost")
    col = db.create_collection("ghost", dim=2)
    db.delete_collection("ghost")
    with pytest.raises(lamina.NotFound):
        col.count()
    with pytest.raises(lamina.NotFound):
        col.upsert([1], [[1.0, 2.0]])


def test_duplicate_collection_is_already_exists(db: lamina.Client) -> None:
    db.create_collection("dup", dim=4, metric="l2")
    with pytest.raises(lamina.AlreadyExists, match="already exists"):
        db.create_collection("dup", dim=8)
    assert db.get_collection("dup").dim == 4


@pytest.mark.parametrize("name", ["", "has space", "../escape", ".hidden", "x" * 200, "a/b", "ü"])
def test_invalid_collection_name(db: lamina.Client, name: str) -> None:
    with pytest.raises(lamina.InvalidArgument, match="invalid collection name"):
        db.create_collection(name, dim=4)
    assert db.list_collections() == []


@pytest.mark.parametrize(
    ("dim", "metric", "words"), [(0, "cosine", "dim"), (70_000, "cosine", "dim"), (4, "hamming", "metric")]
)
def test_invalid_collection_settings(db: lamina.Client, dim: int, metric: str, words: str) -> None:
    with pytest.raises(lamina.InvalidArgument, match=words):
        db.create_collection("c", dim=dim, metric=metric)  # type: ignore[arg-type]
    assert db.list_collections() == []


def test_bad_scroll_arguments(col: lamina.Collection) -> None:
    with pytest.raises(lamina.InvalidArgument, match="scroll limit"):
        col.scroll(limit=0)
    with pytest.raises(lamina.InvalidArgument, match="2\\*\\*64"):
        col.scroll(limit=5, offset=-1)
