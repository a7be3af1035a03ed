"""Mongo-style payload filters, compiled once into a predicate.

Grammar (as in Chroma, Pinecone and MongoDB)::

    filter   := {clause, ...}                     # clauses are ANDed; {} matches all
    clause   := "$and": [filter, ...] | "$or": [filter, ...] | "$nor": [filter, ...]
              | "$not": filter
              | field: value                      # equality
              | field: {op: operand, ...}         # operators, ANDed
    op       := $eq $ne $gt $gte $lt $lte $in $nin $exists $not

A field is a payload key; dots reach into nested objects (``"meta.lang"``).
Equality against an array field matches when the array holds the value; booleans
never equal numbers; ``$gt``-style comparisons match numbers with numbers and
strings with strings (so ISO dates compare as text). ``$ne`` and ``$nin`` match
points that lack the field. Malformed filters raise InvalidArgument saying where.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lamina.errors import InvalidArgument
from lamina.types import Filter, Payload
from lamina.validation import check_json_value

Predicate = Callable[[Payload], bool]
_MISSING = object()
_COMPARISONS = {"$gt", "$gte", "$lt", "$lte"}
_FIELD_OPS = {"$eq", "$ne", "$in", "$nin", "$exists", "$not", *_COMPARISONS}
_LOGICAL = {"$and", "$or", "$nor", "$not"}


def _lookup(payload: Any, parts: tuple[str, ...]) -> Any:
    value = payload
    for part in parts:
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _equals(value: Any, operand: Any) -> bool:
    if _same(value, operand):
        return True
    return isinstance(value, list) and not isinstance(operand, list) and any(_same(v, operand) for v in value)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _comparable(value: Any, operand: Any) -> bool:
    return (_is_number(value) and _is_number(operand)) or (
        isinstance(value, str) and isinstance(operand, str)
    )


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _check_scalar(op: str, operand: Any, where: str) -> None:
    if isinstance(operand, (dict, list)):
        raise InvalidArgument(f"filter at {where}: {op} takes a single value, not a {type(operand).__name__}")


def _compile_op(
    op: str, operand: Any, parts: tuple[str, ...], where: str, depth: int, max_depth: int
) -> Predicate:
    if op == "$eq":
        _check_scalar(op, operand, where)
        return lambda p: _equals(_lookup(p, parts), operand)
    if op == "$ne":
        _check_scalar(op, operand, where)
        return lambda p: not _equals(_lookup(p, parts), operand)
    if op in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise InvalidArgument(
                f"filter at {where}: {op} takes a list of values, got {type(operand).__name__}"
            )
        for item in operand:
            _check_scalar(op, item, where)
        options = list(operand)

        def contains(p: Payload) -> bool:
            value = _lookup(p, parts)
            return value is not _MISSING and any(_equals(value, o) for o in options)

        return contains if op == "$in" else (lambda p: not contains(p))
    if op in _COMPARISONS:
        if not (_is_number(operand) or isinstance(operand, str)):
            raise InvalidArgument(
                f"filter at {where}: {op} compares with a number or a string, got {operand!r}"
            )
        compare = _COMPARE[op]

        def compare_field(p: Payload) -> bool:
            value = _lookup(p, parts)
            if isinstance(value, list):
                return any(_comparable(v, operand) and compare(v, operand) for v in value)
            return _comparable(value, operand) and compare(value, operand)

        return compare_field
    if op == "$exists":
        if not isinstance(operand, bool):
            raise InvalidArgument(f"filter at {where}: $exists takes true or false, got {operand!r}")
        return lambda p: (_lookup(p, parts) is not _MISSING) is operand
    if op == "$not":
        inner = _compile_field(parts, operand, where, depth + 1, max_depth)
        return lambda p: not inner(p)
    raise InvalidArgument(
        f"filter at {where}: unknown operator {op!r}; field operators are {', '.join(sorted(_FIELD_OPS))}"
    )


def _compile_field(
    parts: tuple[str, ...], condition: Any, where: str, depth: int, max_depth: int
) -> Predicate:
    if depth > max_depth:
        raise InvalidArgument(f"filter is nested deeper than {max_depth} levels")
    if isinstance(condition, dict) and any(isinstance(k, str) and k.startswith("$") for k in condition):
        if not all(isinstance(k, str) and k.startswith("$") for k in condition):
            raise InvalidArgument(f"filter at {where}: do not mix operators and plain keys in one object")
        if not condition:
            raise InvalidArgument(f"filter at {where}: empty operator object")
        preds = [
            _compile_op(op, operand, parts, f"{where}.{op}", depth, max_depth)
            for op, operand in condition.items()
        ]
        return _all(preds)
    if isinstance(condition, dict) and not condition:
        raise InvalidArgument(
            f"filter at {where}: empty condition; give a value or an operator such as {{'$exists': true}}"
        )
    return lambda p: _equals(_lookup(p, parts), condition)


def _all(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    return lambda p: all(pred(p) for pred in preds)


def _compile(flt: Any, where: str, depth: int, max_depth: int) -> Predicate:
    if depth > max_depth:
        raise InvalidArgument(f"filter is nested deeper than {max_depth} levels")
    if not isinstance(flt, dict):
        raise InvalidArgument(f"filter at {where} must be an object (dict), got {type(flt).__name__}")
    preds: list[Predicate] = []
    for key, value in flt.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"filter at {where}: field names must be non-empty strings, got {key!r}")
        here = f"{where}.{key}" if where else key
        if key in ("$and", "$or", "$nor"):
            if not isinstance(value, list) or not value:
                raise InvalidArgument(f"filter at {here}: {key} takes a non-empty list of filters")
            subs = [_compile(sub, f"{here}[{i}]", depth + 1, max_depth) for i, sub in enumerate(value)]
            if key == "$and":
                preds.append(_all(subs))
            elif key == "$or":
                preds.append(lambda p, subs=subs: any(s(p) for s in subs))  # type: ignore[misc]
            else:
                preds.append(lambda p, subs=subs: not any(s(p) for s in subs))  # type: ignore[misc]
        elif key == "$not":
            inner = _compile(value, here, depth + 1, max_depth)
            preds.append(lambda p, inner=inner: not inner(p))  # type: ignore[misc]
        elif key.startswith("$"):
            raise InvalidArgument(
                f"filter at {here}: unknown operator {key!r}; logical operators are {', '.join(sorted(_LOGICAL))}"
            )
        else:
            preds.append(_compile_field(tuple(key.split(".")), value, here, depth + 1, max_depth))
    if not preds:
        return lambda p: True
    return _all(preds)


def compile_filter(flt: Filter | None, max_depth: int = 32) -> Predicate | None:
    """Compile a filter into a predicate over payload dicts; None for "no filter".

    >>> match = compile_filter({"lang": "en", "year": {"$gte": 2020}})
    >>> match({"lang": "en", "year": 2021}), match({"lang": "de", "year": 2021})
    (True, False)
    """
    if flt is None:
        return None
    if not isinstance(flt, dict):
        raise InvalidArgument(f"filter must be an object (dict), got {type(flt).__name__}")
    if not flt:
        return None
    check_json_value(flt, "filter", max_depth=2 * max_depth + 2)
    return _compile(flt, "", 0, max_depth)
