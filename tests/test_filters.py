"""Filter semantics in detail (the API tests cover filters through both transports)."""

from __future__ import annotations

from typing import Any

import pytest

from lamina.engine.filters import compile_filter


def matches(flt: dict[str, Any], payload: dict[str, Any]) -> bool:
    compiled = compile_filter(flt)
    predicate = None if compiled is None else compiled.predicate
    return True if predicate is None else predicate(payload)


@pytest.mark.parametrize(
    ("flt", "payload", "expected"),
    [
        ({}, {"a": 1}, True),
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": 1}, {"a": True}, False),  # booleans never equal numbers
        ({"a": True}, {"a": 1}, False),
        ({"a": "x"}, {"a": ["y", "x"]}, True),  # array contains
        ({"a": ["x", "y"]}, {"a": ["x", "y"]}, True),  # whole-array equality
        ({"a": ["x"]}, {"a": ["x", "y"]}, False),
        ({"a": {"$ne": 1}}, {}, True),  # $ne matches a missing field
        ({"a": {"$nin": [1]}}, {}, True),
        ({"a": {"$in": [1]}}, {}, False),
        ({"a": {"$gt": 5}}, {"a": "9"}, False),  # no cross-type comparison
        ({"a": {"$gt": "2024-01-01"}}, {"a": "2024-06-30T10:00:00Z"}, True),  # ISO dates compare as text
        ({"a": {"$lt": 3}}, {"a": [5, 1]}, True),  # any element
        ({"a.b": 2}, {"a": {"b": 2}}, True),  # dotted path
        ({"a.b": 2}, {"a": 2}, False),
        ({"a": {"b": 2}}, {"a": {"b": 2}}, True),  # literal object equality
        ({"a": None}, {"a": None}, True),
        ({"a": {"$exists": True}}, {"a": None}, True),
        ({"$nor": [{"a": 1}, {"b": 1}]}, {"a": 2, "b": 2}, True),
        ({"$nor": [{"a": 1}, {"b": 1}]}, {"a": 1}, False),
        ({"a": {"$gte": 1, "$lte": 1}}, {"a": 1}, True),
        ({"$or": [{"a": 1}, {"$and": [{"b": 2}, {"c": {"$exists": False}}]}]}, {"b": 2}, True),
    ],
)
def test_filter_semantics(flt: dict[str, Any], payload: dict[str, Any], expected: bool) -> None:
    assert matches(flt, payload) is expected


def test_empty_and_none_filters_mean_everything() -> None:
    assert compile_filter(None) is None
    assert compile_filter({}) is None
