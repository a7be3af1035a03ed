"""Mongo-style payload filters, compiled once into a predicate and a plan tree.

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
strings with strings (so ISO dates compare as text), except on fields with a
``datetime`` payload index, where both sides are instants (ISO 8601 or epoch
seconds). ``$ne`` and ``$nin`` match points that lack the field.

``compile_filter`` returns the exact predicate over payload dicts and a tree that
``evaluate`` answers from payload indexes as two bitmaps per segment: rows that
surely match and rows that may match. The caller checks only the difference
against payloads, so indexed and unindexed fields give identical answers.
Malformed filters, unknown fields and operands of the wrong type for a field's
index raise InvalidArgument naming the path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from lamina.engine.payload import MISSING, FieldIndex, index_key, is_number, lookup, to_epoch
from lamina.errors import InvalidArgument, ResourceExhausted
from lamina.types import Filter, Payload
from lamina.validation import check_json_value

Predicate = Callable[[Payload], bool]
Getter = Callable[[Payload], Any]
_COMPARISONS = {"$gt", "$gte", "$lt", "$lte"}
_FIELD_OPS = {"$eq", "$ne", "$in", "$nin", "$exists", "$not", *_COMPARISONS}
_LOGICAL = {"$and", "$or", "$nor", "$not"}


# ---------------------------------------------------------------- plan tree
@dataclass(frozen=True)
class Leaf:
    """One condition on one field. ``op`` is ``in`` (any of ``keys``), ``range``,
    ``exists`` or ``scan`` (no index can answer it; checked on payloads)."""

    field: str
    op: str
    keys: tuple[Any, ...] = ()
    lo: float = -np.inf
    lo_inclusive: bool = True
    hi: float = np.inf
    hi_inclusive: bool = True


@dataclass(frozen=True)
class Node:
    """``and`` / ``or`` / ``not`` over ``children``; ``all`` matches everything."""

    op: str
    children: tuple[Node | Leaf, ...] = field(default=())


_ALL = Node("all")


@dataclass(frozen=True)
class CompiledFilter:
    """A validated filter: the exact predicate, the plan tree and the fields it names."""

    predicate: Predicate
    tree: Node | Leaf
    fields: frozenset[str]
    #: the filter and the index types of its fields as canonical JSON: equal keys, equal answers
    key: bytes


# ---------------------------------------------------------------- exact semantics
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _equals(value: Any, operand: Any) -> bool:
    if _same(value, operand):
        return True
    return isinstance(value, list) and not isinstance(operand, list) and any(_same(v, operand) for v in value)


def _comparable(value: Any, operand: Any) -> bool:
    return (is_number(value) and is_number(operand)) or (isinstance(value, str) and isinstance(operand, str))


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _epoch_value(value: Any) -> Any:
    """A datetime field's value as epoch seconds (arrays item by item; unparseable → MISSING-like)."""
    if value is MISSING:
        return MISSING
    if isinstance(value, list):
        return [e for e in (to_epoch(v) for v in value) if e is not None]
    epoch = to_epoch(value)
    return epoch if epoch is not None else _UNPARSED


_UNPARSED: Any = object()  # present but not an instant: equals nothing, compares with nothing


# ---------------------------------------------------------------- compiler
def _member(options: Sequence[Any]) -> Callable[[Any], bool]:
    """Whether a field's value equals (or, for an array, holds) one of the scalar ``options``,
    as ``_equals`` decides, in constant time per item: booleans apart (``True == 1`` in a set)."""
    flags = {o for o in options if isinstance(o, bool)}
    plain = {o for o in options if not isinstance(o, bool)}

    def one(item: Any) -> bool:
        if isinstance(item, bool):
            return item in flags
        if isinstance(item, (str, int, float)) or item is None:
            return item in plain
        return False  # an object or array equals no scalar

    return lambda value: one(value) or (isinstance(value, list) and any(one(v) for v in value))


class _Compiler:
    def __init__(
        self, schema: Mapping[str, str], known: frozenset[str] | None, max_depth: int, max_terms: int
    ) -> None:
        self.schema = schema
        self.known = known
        self.max_depth = max_depth
        self.max_terms = max_terms
        self.terms = 0
        self.fields: set[str] = set()

    def count(self, terms: int, where: str) -> None:
        """Count conditions and ``$in``/``$nin`` values; past ``max_terms`` the filter is refused."""
        self.terms += terms
        if self.terms > self.max_terms:
            raise ResourceExhausted(
                f"filter at {where}: the filter holds more than {self.max_terms:,} conditions and $in/$nin "
                f"values (limit max_filter_terms): split the request, or index the field and ask for fewer values"
            )

    def depth(self, depth: int) -> None:
        if depth > self.max_depth:
            raise InvalidArgument(f"filter is nested deeper than {self.max_depth} levels")

    def filter(self, flt: Any, where: str, depth: int) -> tuple[Predicate, Node | Leaf]:
        self.depth(depth)
        if not isinstance(flt, dict):
            raise InvalidArgument(
                f"filter at {where or '(top)'} must be an object (dict), got {type(flt).__name__}"
            )
        preds: list[Predicate] = []
        nodes: list[Node | Leaf] = []
        for key, value in flt.items():
            if not isinstance(key, str) or not key:
                raise InvalidArgument(
                    f"filter at {where}: field names must be non-empty strings, got {key!r}"
                )
            here = f"{where}.{key}" if where else key
            if key in ("$and", "$or", "$nor"):
                if not isinstance(value, list) or not value:
                    raise InvalidArgument(f"filter at {here}: {key} takes a non-empty list of filters")
                subs = [self.filter(sub, f"{here}[{i}]", depth + 1) for i, sub in enumerate(value)]
                sub_preds = [p for p, _ in subs]
                sub_nodes = tuple(n for _, n in subs)
                if key == "$and":
                    preds.append(_all(sub_preds))
                    nodes.append(Node("and", sub_nodes))
                elif key == "$or":
                    preds.append(lambda p, s=sub_preds: any(f(p) for f in s))  # type: ignore[misc]
                    nodes.append(Node("or", sub_nodes))
                else:
                    preds.append(lambda p, s=sub_preds: not any(f(p) for f in s))  # type: ignore[misc]
                    nodes.append(Node("not", (Node("or", sub_nodes),)))
            elif key == "$not":
                inner, node = self.filter(value, here, depth + 1)
                preds.append(lambda p, f=inner: not f(p))  # type: ignore[misc]
                nodes.append(Node("not", (node,)))
            elif key.startswith("$"):
                raise InvalidArgument(
                    f"filter at {here}: unknown operator {key!r}; logical operators are {', '.join(sorted(_LOGICAL))}"
                )
            else:
                self.fields.add(key)
                pred, node = self.field(key, value, here, depth + 1)
                preds.append(pred)
                nodes.append(node)
        if not preds:
            return (lambda p: True), _ALL
        return _all(preds), nodes[0] if len(nodes) == 1 else Node("and", tuple(nodes))

    def check_field(self, name: str, where: str) -> None:
        """InvalidArgument for a field no point has and no index names ($exists may ask)."""
        if self.known is None or name in self.schema or name.split(".")[0] in self.known:
            return
        raise InvalidArgument(
            f"filter at {where}: unknown field {name!r}: no point has it and it has no payload index"
            " (check the spelling; known fields: "
            + (", ".join(sorted(self.known | set(self.schema))[:20]) or "none yet")
            + ")"
        )

    def getter(self, name: str) -> Getter:
        parts = tuple(name.split("."))
        if self.schema.get(name) == "datetime":
            return lambda p: _epoch_value(lookup(p, parts))
        return lambda p: lookup(p, parts)

    def field(self, name: str, condition: Any, where: str, depth: int) -> tuple[Predicate, Node | Leaf]:
        self.depth(depth)
        get = self.getter(name)
        if isinstance(condition, dict) and any(isinstance(k, str) and k.startswith("$") for k in condition):
            if not all(isinstance(k, str) and k.startswith("$") for k in condition):
                raise InvalidArgument(f"filter at {where}: do not mix operators and plain keys in one object")
            compiled = [
                self.op(name, get, op, operand, f"{where}.{op}", depth) for op, operand in condition.items()
            ]
            nodes = tuple(n for _, n in compiled)
            return _all([p for p, _ in compiled]), nodes[0] if len(nodes) == 1 else Node("and", nodes)
        if isinstance(condition, dict) and not condition:
            raise InvalidArgument(
                f"filter at {where}: empty condition; give a value or an operator such as {{'$exists': true}}"
            )
        if isinstance(condition, (dict, list)):  # literal object or whole-array equality
            self.check_field(name, where)
            self.count(1, where)
            return (lambda p: _equals(get(p), condition)), Leaf(name, "scan")
        return self.op(name, get, "$eq", condition, where, depth)

    def operand(self, name: str, op: str, value: Any, where: str) -> Any:
        """``value`` as the field's index represents it (converted for datetime fields);
        InvalidArgument when the index's type cannot hold it."""
        if isinstance(value, (dict, list)):
            raise InvalidArgument(
                f"filter at {where}: {op} takes a single value, not a {type(value).__name__}"
            )
        kind = self.schema.get(name)
        if kind is None or kind == "text":
            return value
        if op in _COMPARISONS and kind in ("keyword", "bool"):
            if kind == "keyword" and isinstance(value, str):
                return value
            raise InvalidArgument(
                f"filter at {where}: field {name!r} has a {kind} index; {op} compares numbers or dates, "
                f"so compare it with {'a string' if kind == 'keyword' else '$eq true/false'} instead of {value!r}"
            )
        key = index_key(kind, value)
        if key is None:
            expected = {
                "keyword": "a string",
                "bool": "true or false",
                "int": "a number",
                "float": "a number",
                "datetime": "an ISO 8601 date/time string or epoch seconds",
            }[kind]
            raise InvalidArgument(
                f"filter at {where}: field {name!r} has a {kind} index, so compare it with {expected}, got {value!r}"
            )
        return to_epoch(value) if kind == "datetime" else value

    def op(
        self, name: str, get: Getter, op: str, operand: Any, where: str, depth: int
    ) -> tuple[Predicate, Node | Leaf]:
        if op not in ("$exists", "$not"):
            self.check_field(name, where)
        self.count(len(operand) if op in ("$in", "$nin") and isinstance(operand, list) else 1, where)
        kind = self.schema.get(name)
        term = kind in ("keyword", "bool", "int", "float", "datetime")
        if op in ("$eq", "$ne"):
            value = self.operand(name, op, operand, where)
            pred: Predicate = lambda p: _equals(get(p), value)  # noqa: E731
            node: Node | Leaf = (
                Leaf(name, "in", (index_key(kind or "", value),)) if term else Leaf(name, "scan")
            )
            return (pred, node) if op == "$eq" else ((lambda p: not pred(p)), Node("not", (node,)))
        if op in ("$in", "$nin"):
            if not isinstance(operand, list):
                raise InvalidArgument(
                    f"filter at {where}: {op} takes a list of values, got {type(operand).__name__}"
                )
            options = [self.operand(name, op, item, f"{where}[{i}]") for i, item in enumerate(operand)]
            member = _member(options)

            def contains(p: Payload) -> bool:
                value = get(p)
                return value is not MISSING and member(value)

            node = (
                Leaf(name, "in", tuple(index_key(kind or "", o) for o in options))
                if term
                else Leaf(name, "scan")
            )
            return (contains, node) if op == "$in" else ((lambda p: not contains(p)), Node("not", (node,)))
        if op in _COMPARISONS:
            if not (is_number(operand) or isinstance(operand, str)):
                raise InvalidArgument(
                    f"filter at {where}: {op} compares with a number or a string, got {operand!r}"
                )
            bound = self.operand(name, op, operand, where)
            compare = _COMPARE[op]

            def compare_field(p: Payload) -> bool:
                value = get(p)
                if isinstance(value, list):
                    return any(_comparable(v, bound) and compare(v, bound) for v in value)
                return _comparable(value, bound) and compare(value, bound)

            if kind in ("int", "float", "datetime"):
                x = float(bound)
                node = {
                    "$gt": Leaf(name, "range", lo=x, lo_inclusive=False),
                    "$gte": Leaf(name, "range", lo=x),
                    "$lt": Leaf(name, "range", hi=x, hi_inclusive=False),
                    "$lte": Leaf(name, "range", hi=x),
                }[op]
            else:
                node = Leaf(name, "scan")
            return compare_field, node
        if op == "$exists":
            if not isinstance(operand, bool):
                raise InvalidArgument(f"filter at {where}: $exists takes true or false, got {operand!r}")
            parts = tuple(name.split("."))
            exists = Leaf(name, "exists")
            return (lambda p: (lookup(p, parts) is not MISSING) is operand), exists if operand else Node(
                "not", (exists,)
            )
        if op == "$not":
            inner, node = self.field(name, operand, where, depth + 1)
            return (lambda p: not inner(p)), Node("not", (node,))
        raise InvalidArgument(
            f"filter at {where}: unknown operator {op!r}; field operators are {', '.join(sorted(_FIELD_OPS))}"
        )


def _all(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    return lambda p: all(pred(p) for pred in preds)


def compile_filter(
    flt: Filter | None,
    max_depth: int = 32,
    schema: Mapping[str, str] | None = None,
    known: frozenset[str] | None = None,
    max_terms: int = 10_000,
) -> CompiledFilter | None:
    """Validate and compile a filter; None for "no filter" (None or ``{}``).

    ``schema`` maps indexed fields to their index type; ``known`` (top-level payload
    keys seen in the collection) turns on the unknown-field check; a filter of more
    than ``max_terms`` conditions and ``$in``/``$nin`` values is ResourceExhausted.

    >>> match = compile_filter({"lang": "en", "year": {"$gte": 2020}}).predicate
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
    compiler = _Compiler(schema or {}, known, max_depth, max_terms)
    predicate, tree = compiler.filter(flt, "", 0)
    named = {name: kind for name, kind in (schema or {}).items() if name in compiler.fields}
    key = orjson.dumps([flt, named], option=orjson.OPT_SORT_KEYS)  # an index's type changes semantics
    return CompiledFilter(predicate, tree, frozenset(compiler.fields), key)


# ---------------------------------------------------------------- evaluation over indexes
def evaluate(
    tree: Node | Leaf, size: int, base: int, indexes: Mapping[str, Sequence[FieldIndex]]
) -> tuple[np.ndarray, np.ndarray]:
    """(surely, maybe) boolean masks over rows ``base .. base + size`` of one segment:
    rows that match for certain and rows that may match (a superset). ``indexes`` maps
    a field to its index parts in the same row numbering; a field without parts is
    unindexed here and every row may match it."""
    if isinstance(tree, Leaf):
        parts = indexes.get(tree.field)
        if not parts or tree.op == "scan":
            none = np.zeros(size, np.bool_)
            if parts and tree.op == "scan":  # indexed but not answerable: only rows with the field may match
                return none, _mask(size, base, [p.present for p in parts])
            return none, np.ones(size, np.bool_)
        if tree.op == "in":
            surely = _mask(size, base, [p.equal(tree.keys) for p in parts])
        elif tree.op == "range":
            surely = _mask(
                size, base, [p.between(tree.lo, tree.lo_inclusive, tree.hi, tree.hi_inclusive) for p in parts]
            )
        else:  # exists
            return (m := _mask(size, base, [p.present for p in parts])), m
        odd = _mask(size, base, [p.odd for p in parts])
        return surely, surely | odd
    if tree.op == "all":
        return np.ones(size, np.bool_), np.ones(size, np.bool_)
    if tree.op == "not":
        surely, maybe = evaluate(tree.children[0], size, base, indexes)
        return ~maybe, ~surely
    results = [evaluate(child, size, base, indexes) for child in tree.children]
    combine = np.logical_and if tree.op == "and" else np.logical_or
    surely, maybe = results[0]
    for s, m in results[1:]:
        surely, maybe = combine(surely, s), combine(maybe, m)
    return surely, maybe


def _mask(size: int, base: int, row_sets: list[np.ndarray]) -> np.ndarray:
    mask = np.zeros(size, np.bool_)
    for rows in row_sets:
        if rows.size:
            local = rows - base if base else rows
            inside = (local >= 0) & (local < size)
            mask[local if inside.all() else local[inside]] = True
    return mask
