"""An independent evaluator of Lamina filters over plain payload dicts, written from the
grammar in engine/filters.py's docstring without using any of its code: the tests that
check the engine's filter answers (test_hybrid's property test, test_state_machine's
model) compare with it, so a bug in ``compile_filter`` is not copied into the expectation.

``dates`` names the fields with a ``datetime`` payload index: on those both sides compare
as instants; everywhere else ``$gt``-style comparisons match numbers with numbers and
strings with strings.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

_ABSENT = object()
_NOT_A_DATE = "<not a date>"


def _get(payload: dict[str, Any], path: str) -> Any:
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _instant(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return None


def _value(payload: dict[str, Any], path: str, dates: Collection[str]) -> Any:
    """The field's value as the reference compares it (instants for datetime fields)."""
    value = _get(payload, path)
    if path not in dates or value is _ABSENT:
        return value
    if isinstance(value, list):
        return [t for t in (_instant(v) for v in value) if t is not None]
    t = _instant(value)
    return t if t is not None else _NOT_A_DATE


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, str) and a == _NOT_A_DATE:
        return False
    return bool(a == b)


def _has(value: Any, operand: Any) -> bool:
    return _eq(value, operand) or (
        isinstance(value, list) and not isinstance(operand, list) and any(_eq(v, operand) for v in value)
    )


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _cmp(value: Any, op: str, operand: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    for v in items:
        comparable = (_number(v) and _number(operand)) or (
            isinstance(v, str) and isinstance(operand, str) and v != _NOT_A_DATE
        )
        if (
            comparable
            and {"$gt": v > operand, "$gte": v >= operand, "$lt": v < operand, "$lte": v <= operand}[op]
        ):
            return True
    return False


def ref_match(flt: dict[str, Any], payload: dict[str, Any], dates: Collection[str] = ()) -> bool:
    """Whether ``payload`` matches the filter ``flt``."""
    for key, cond in flt.items():
        if key == "$and" and not all(ref_match(f, payload, dates) for f in cond):
            return False
        if key == "$or" and not any(ref_match(f, payload, dates) for f in cond):
            return False
        if key == "$nor" and any(ref_match(f, payload, dates) for f in cond):
            return False
        if key == "$not" and ref_match(cond, payload, dates):
            return False
        if not key.startswith("$") and not ref_field(key, cond, payload, dates):
            return False
    return True


def ref_field(path: str, cond: Any, payload: dict[str, Any], dates: Collection[str] = ()) -> bool:
    """Whether the field at ``path`` satisfies ``cond`` (a value or a dict of operators)."""
    value = _value(payload, path, dates)

    def operand(x: Any) -> Any:
        return _instant(x) if path in dates else x

    if not (isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond)):
        return value is not _ABSENT and _has(value, operand(cond))
    for op, x in cond.items():
        if op == "$eq":
            ok = value is not _ABSENT and _has(value, operand(x))
        elif op == "$ne":
            ok = not (value is not _ABSENT and _has(value, operand(x)))
        elif op == "$in":
            ok = value is not _ABSENT and any(_has(value, operand(o)) for o in x)
        elif op == "$nin":
            ok = not (value is not _ABSENT and any(_has(value, operand(o)) for o in x))
        elif op == "$exists":
            ok = (_get(payload, path) is not _ABSENT) is x
        elif op == "$not":
            ok = not ref_field(path, x, payload, dates)
        else:
            ok = value is not _ABSENT and _cmp(value, op, operand(x))
        if not ok:
            return False
    return True
