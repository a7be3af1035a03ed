"""Payload indexes: what a filter can answer without reading payloads.

A ``FieldIndex`` covers one payload field over a set of rows and never changes once
built. Sealed segments hold one per indexed field, in their own row numbering
(positions ``0 .. size-1``), written to the segment folder and loaded at start; the
mutable segment holds a few of them in global row numbers, one per write batch,
merged log-structured (two of similar size become one) so that a query touches
O(log n) of them. Sealing and compaction carry the indexes over by remapping rows
(``select``), so payloads are read back only when an index is added to a
collection that already has points.

Kinds and their structure:

============  ===========================================================
``keyword``   sorted (term, row) postings: strings, arrays of strings
``bool``      the same with the terms ``false`` / ``true``
``int``       (value, row) sorted by value: binary search answers ranges
``float``     the same
``datetime``  the same over epoch seconds (ISO 8601 strings or numbers)
``text``      (token, row, term frequency) postings and document lengths
              for BM25 (``lamina.engine.text``)
============  ===========================================================

Every index also keeps ``present`` (rows that have the field) and ``odd`` (rows whose
value, or one of whose array items, the index cannot represent, such as a number in a
keyword field). Odd rows are never decided by the index: the filter evaluator checks
them against their payloads, so answers equal the exact evaluator's in every case.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from lamina.types import Payload

_TERM_KINDS = ("keyword", "bool", "text")
_EXACT_FLOAT = 2**53
_TOKEN = re.compile(r"\w+", re.UNICODE)
_EMPTY = np.zeros(0, dtype=np.int64)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (Unicode letters, digits and underscore)."""
    return _TOKEN.findall(text.lower())


def to_epoch(value: Any) -> float | None:
    """Seconds since 1970 for an ISO 8601 string or an epoch number; None otherwise.
    A date or time without a zone is taken as UTC."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def lookup(payload: Any, parts: tuple[str, ...]) -> Any:
    """The value at a dotted path, or ``MISSING``."""
    value = payload
    for part in parts:
        if not isinstance(value, dict):
            return MISSING
        value = value.get(part, MISSING)
        if value is MISSING:
            return MISSING
    return value


MISSING: Any = object()


def is_number(x: Any) -> bool:
    """A JSON number (booleans are not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def index_key(kind: str, item: Any) -> Any:
    """The index's representation of one scalar ``item``, or None when it has none."""
    if kind == "keyword":
        return item if isinstance(item, str) else None
    if kind == "bool":
        return ("false", "true")[item] if isinstance(item, bool) else None
    if kind in ("int", "float"):
        if is_number(item) and math.isfinite(item) and abs(item) <= _EXACT_FLOAT:
            return float(item)
        return None
    if kind == "datetime":
        return to_epoch(item)
    return item if isinstance(item, str) else None  # text


def _none() -> np.ndarray:
    return _EMPTY


@dataclass(frozen=True, eq=False)
class FieldIndex:
    """An immutable index of one field over some rows (see the module docstring).
    Term kinds fill ``terms``/``term_of``/``rows`` (and ``tf``, ``doc_rows``,
    ``doc_len`` for text); value kinds fill ``values``/``rows``."""

    kind: str
    present: np.ndarray
    odd: np.ndarray
    rows: np.ndarray
    terms: tuple[str, ...] = ()
    term_of: np.ndarray = field(default_factory=_none)
    values: np.ndarray = field(default_factory=_none)
    tf: np.ndarray = field(default_factory=_none)
    doc_rows: np.ndarray = field(default_factory=_none)
    doc_len: np.ndarray = field(default_factory=_none)

    @cached_property
    def spans(self) -> dict[str, tuple[int, int]]:
        """term -> (start, end) of its postings (computed when first asked: indexes merged
        on the write path are often never queried)."""
        bounds = np.searchsorted(self.term_of, np.arange(len(self.terms) + 1, dtype=self.term_of.dtype))
        edges = bounds.tolist()
        return {t: (edges[i], edges[i + 1]) for i, t in enumerate(self.terms)}

    @cached_property
    def posting_len(self) -> np.ndarray:
        """text: the length of each posting's document (aligned with ``rows``)."""
        return self.doc_len[np.searchsorted(self.doc_rows, self.rows)] if self.doc_rows.size else _EMPTY

    # ------------------------------------------------------------ building
    @classmethod
    def build(
        cls, kind: str, path: tuple[str, ...], rows: Sequence[int], payloads: Iterable[Payload | None]
    ) -> FieldIndex:
        """Index the field at ``path`` of ``payloads`` (one per row)."""
        present: list[int] = []
        odd: list[int] = []
        entry_rows: list[int] = []
        keys: list[Any] = []
        tfs: list[int] = []
        doc_rows: list[int] = []
        doc_len: list[int] = []
        for row, payload in zip(rows, payloads, strict=True):
            value = lookup(payload, path) if payload is not None else MISSING
            if value is MISSING:
                continue
            present.append(row)
            if kind == "text":
                if not isinstance(value, str):
                    odd.append(row)
                    continue
                tokens = tokenize(value)
                counts: dict[str, int] = {}
                for token in tokens:
                    counts[token] = counts.get(token, 0) + 1
                doc_rows.append(row)
                doc_len.append(len(tokens))
                entry_rows.extend([row] * len(counts))
                keys.extend(counts)
                tfs.extend(counts.values())
                continue
            items = value if isinstance(value, list) else [value]
            is_odd = False
            for item in items:
                key = index_key(kind, item)
                if key is None:
                    is_odd = True
                else:
                    entry_rows.append(row)
                    keys.append(key)
            if is_odd:
                odd.append(row)
        as_rows = np.asarray(entry_rows, dtype=np.int64)
        common = {
            "present": np.asarray(present, dtype=np.int64),
            "odd": np.asarray(odd, dtype=np.int64),
        }
        if kind in _TERM_KINDS:
            terms = sorted(set(keys))
            ids = {t: i for i, t in enumerate(terms)}
            term_of = np.asarray([ids[t] for t in keys], dtype=np.int32)
            return cls._sorted_terms(
                kind,
                common,
                tuple(terms),
                term_of,
                as_rows,
                np.asarray(tfs, dtype=np.float32),
                np.asarray(doc_rows, dtype=np.int64),
                np.asarray(doc_len, dtype=np.float32),
            )
        values = np.asarray(keys, dtype=np.float64)
        order = np.lexsort((as_rows, values))
        return cls(kind, common["present"], common["odd"], as_rows[order], values=values[order])

    @classmethod
    def _sorted_terms(
        cls,
        kind: str,
        common: dict[str, np.ndarray],
        terms: tuple[str, ...],
        term_of: np.ndarray,
        rows: np.ndarray,
        tf: np.ndarray,
        doc_rows: np.ndarray,
        doc_len: np.ndarray,
    ) -> FieldIndex:
        order = np.lexsort((rows, term_of))
        text = kind == "text"
        return cls(
            kind,
            terms=terms,
            term_of=term_of[order],
            rows=rows[order],
            tf=tf[order] if text else _EMPTY,
            doc_rows=doc_rows if text else _EMPTY,
            doc_len=doc_len if text else _EMPTY,
            **common,
        )

    @classmethod
    def merge(cls, parts: Sequence[FieldIndex], maps: Sequence[np.ndarray] | None = None) -> FieldIndex:
        """One index holding every part's entries; with ``maps``, part ``i``'s row ``r``
        becomes ``maps[i][r]`` (rows mapped to -1 are dropped)."""
        kind = parts[0].kind

        def rows_of(i: int, rows: np.ndarray) -> np.ndarray:
            return rows if maps is None else maps[i][rows]

        def keep(i: int, rows: np.ndarray) -> np.ndarray:
            return rows_of(i, rows) >= 0 if maps is not None else np.ones(rows.size, np.bool_)

        def unique(name: str) -> np.ndarray:
            out = [rows_of(i, getattr(p, name))[keep(i, getattr(p, name))] for i, p in enumerate(parts)]
            return np.unique(np.concatenate(out)) if out else _EMPTY

        common = {"present": unique("present"), "odd": unique("odd")}
        masks = [keep(i, p.rows) for i, p in enumerate(parts)]
        rows = np.concatenate(
            [rows_of(i, p.rows)[m] for i, (p, m) in enumerate(zip(parts, masks, strict=True))]
        )
        if kind in _TERM_KINDS:
            terms = sorted(set().union(*(p.terms for p in parts)))
            ids = {t: i for i, t in enumerate(terms)}
            term_of = np.concatenate(
                [
                    np.asarray([ids[t] for t in p.terms], dtype=np.int32)[p.term_of[m]]
                    if p.terms
                    else np.zeros(0, np.int32)
                    for p, m in zip(parts, masks, strict=True)
                ]
            )
            tf = np.concatenate([p.tf[m] if p.tf.size else p.tf for p, m in zip(parts, masks, strict=True)])
            doc_masks = [keep(i, p.doc_rows) for i, p in enumerate(parts)]
            doc_rows = np.concatenate(
                [rows_of(i, p.doc_rows)[dm] for i, (p, dm) in enumerate(zip(parts, doc_masks, strict=True))]
            )
            doc_len = np.concatenate([p.doc_len[dm] for p, dm in zip(parts, doc_masks, strict=True)])
            order = np.argsort(doc_rows, kind="stable")
            return cls._sorted_terms(
                kind,
                common,
                tuple(terms),
                term_of,
                rows,
                tf.astype(np.float32),
                doc_rows[order],
                doc_len[order],
            )
        values = np.concatenate([p.values[m] for p, m in zip(parts, masks, strict=True)])
        order = np.lexsort((rows, values))
        return cls(kind, common["present"], common["odd"], rows[order], values=values[order])

    @staticmethod
    def select(parts: Sequence[FieldIndex], rows: np.ndarray) -> FieldIndex:
        """One index of the entries of ``parts`` for the sorted ``rows``, renumbered to
        their positions (how a sealed segment takes over the mutable segment's entries)."""
        top = max(int(rows.max(initial=-1)), *(int(p.present.max(initial=-1)) for p in parts)) + 1
        mapping = np.full(top, -1, dtype=np.int64)
        mapping[rows] = np.arange(rows.size)
        return FieldIndex.merge(parts, [mapping] * len(parts))

    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (
                self.present,
                self.odd,
                self.rows,
                self.term_of,
                self.values,
                self.tf,
                self.doc_rows,
                self.doc_len,
            )
        )

    # ------------------------------------------------------------ answering
    def _term_rows(self, term: str) -> np.ndarray:
        lo, hi = self._term_span(term)
        return self.rows[lo:hi]

    def _term_span(self, term: str) -> tuple[int, int]:
        return self.spans.get(term, (0, 0))

    def equal(self, keys: Sequence[Any]) -> np.ndarray:
        """Rows holding any of ``keys`` (already in index representation)."""
        if self.kind in _TERM_KINDS:
            parts = [self._term_rows(k) for k in keys]
        else:
            parts = [
                self.rows[np.searchsorted(self.values, k, "left") : np.searchsorted(self.values, k, "right")]
                for k in keys
            ]
        return np.concatenate(parts) if parts else _EMPTY

    def between(self, lo: float, lo_inclusive: bool, hi: float, hi_inclusive: bool) -> np.ndarray:
        """Rows with a value in the range (value kinds only)."""
        start = np.searchsorted(self.values, lo, "left" if lo_inclusive else "right")
        stop = np.searchsorted(self.values, hi, "right" if hi_inclusive else "left")
        return self.rows[start:stop] if stop > start else _EMPTY

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, term frequencies, document lengths) of a text token."""
        lo, hi = self._term_span(term)
        return self.rows[lo:hi], self.tf[lo:hi], self.posting_len[lo:hi]

    def doc_freq(self, term: str) -> int:
        lo, hi = self._term_span(term)
        return hi - lo

    # ------------------------------------------------------------ files
    def save(self, path: Path) -> None:
        arrays = {
            name: getattr(self, name)
            for name in ("present", "odd", "rows", "term_of", "values", "tf", "doc_rows", "doc_len")
        }
        meta = np.frombuffer(orjson.dumps({"kind": self.kind, "terms": list(self.terms)}), dtype=np.uint8)
        with open(path, "wb") as fh:
            np.savez(fh, meta=meta, **arrays)

    @classmethod
    def load(cls, path: Path) -> FieldIndex:
        with np.load(path) as data:
            meta = orjson.loads(data["meta"].tobytes())
            arrays = {name: data[name] for name in data.files if name != "meta"}
        return cls(meta["kind"], terms=tuple(meta["terms"]), **arrays)


class MutableIndexes:
    """The mutable segment's payload indexes: per field, a stack of FieldIndexes in global
    rows, one per write batch, merged while the newest is at least half the size of the
    one below it (so a field has O(log n) parts)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[FieldIndex]] = {}

    def add(self, fields: dict[str, str], rows: Sequence[int], payloads: Sequence[Payload | None]) -> None:
        for name, kind in fields.items():
            built = FieldIndex.build(kind, tuple(name.split(".")), rows, payloads)
            if not built.present.size:
                continue
            stack = self.parts.setdefault(name, [])
            stack.append(built)
            while len(stack) > 1 and 2 * stack[-1].present.size >= stack[-2].present.size:
                top = stack.pop()
                stack[-1] = FieldIndex.merge([stack[-1], top])

    def drop_field(self, name: str) -> None:
        self.parts.pop(name, None)

    def snapshot(self) -> dict[str, list[FieldIndex]]:
        """The parts as they are now (safe to read while writers add more)."""
        return {name: list(stack) for name, stack in self.parts.items()}

    def forget_below(self, row: int) -> None:
        """Drop entries of rows below ``row`` (they were sealed into a segment)."""
        for name, stack in list(self.parts.items()):
            if not stack:
                continue
            top = max(int(p.present.max(initial=-1)) for p in stack) + 1
            mapping = np.arange(top, dtype=np.int64)
            mapping[:row] = -1
            self.parts[name] = [FieldIndex.merge(stack, [mapping] * len(stack))]

    def nbytes(self) -> int:
        return sum(p.nbytes() for stack in self.parts.values() for p in stack)


def take(kind: str, parts: Sequence[FieldIndex], rows: np.ndarray) -> FieldIndex:
    """One index of the entries of ``parts`` (global rows) for the sorted global ``rows``,
    renumbered to their positions: the payload index of a segment sealed from them."""
    if not parts:
        return FieldIndex.build(kind, (), [], [])
    return FieldIndex.select(parts, rows)
