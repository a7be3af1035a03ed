"""Hybrid queries: a dense ranking (the read path's search) and a BM25 ranking over a
``text`` payload index (engine/text.py), fused (engine/fusion.py) under one filter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lamina.errors import InvalidArgument
from lamina.index.kernels import finish_scores
from lamina.types import Hit, SearchParams
from lamina.validation import as_query, check_k

from .fusion import fuse, fusion_depth
from .reads import Reads
from .state import ReadSnapshot
from .text import Bm25Query, top_rows


class Hybrid(Reads):
    """Hybrid and text queries of a collection."""

    def query(
        self,
        vector: object = None,
        text: str | None = None,
        k: int = 10,
        filter: Any = None,
        fusion: str = "rrf",
        weights: Sequence[float] | None = None,
        text_field: str | None = None,
        with_payload: bool = True,
        with_vector: bool = False,
        params: SearchParams | None = None,
        tenant: str | None = None,
    ) -> list[Hit]:
        """Hybrid search (among the points of ``tenant``): the dense ranking of ``vector`` and the BM25 ranking of ``text``
        (over a ``text`` payload index), fused by ``fusion`` (``"rrf"`` or ``"weighted"``,
        with ``weights`` (dense, text), default (1, 1)); ``filter`` applies to both.
        With only one of vector and text, that ranking alone (BM25 scores for text)."""
        code = self._tenant(tenant)
        if vector is None and text is None:
            raise InvalidArgument("query needs a vector, a text or both")
        if fusion not in ("rrf", "weighted"):
            raise InvalidArgument(f"unknown fusion {fusion!r}: use rrf or weighted")
        w = (1.0, 1.0) if weights is None else tuple(weights)
        if len(w) != 2 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < float("inf") for x in w
        ):
            raise InvalidArgument(f"weights must be two non-negative numbers (dense, text), got {weights!r}")
        if text is not None and not isinstance(text, str):
            raise InvalidArgument(f"text must be a string, got {type(text).__name__}")
        k = check_k(k, self._limits)
        query = as_query(vector, self.config.dim).reshape(1, -1) if vector is not None else None
        field_name = self._text_field(text_field) if text is not None else ""
        compiled = self._compile(filter)
        prepared = self._prepare(query) if query is not None else None
        depth = k if vector is None or text is None else fusion_depth(k, self._limits.max_k)

        if code == -1:
            return []

        def read(snap: ReadSnapshot) -> list[Hit]:
            masks = self._masks(compiled, snap, code)
            rankings: list[tuple[np.ndarray, np.ndarray]] = []
            if prepared is not None:
                scores, rows, counts = self._search_rows(prepared, depth, snap, masks, params, None)
                rankings.append((rows[0, : counts[0]], scores[0, : counts[0]]))
            if text is not None:
                rankings.append(self._bm25(text, field_name, depth, snap, masks))
            if len(rankings) == 1:
                rows, fused = rankings[0]
                if prepared is not None:
                    fused = finish_scores(fused[None, :], self._metric)[0]
            else:
                rows, fused = fuse(rankings, fusion, w, k)
            return self._hits(
                snap, fused[None, :], rows[None, :], np.array([rows.size]), with_payload, with_vector
            )[0]

        return self._read(read)

    def _text_field(self, name: str | None) -> str:
        texts = sorted(f for f, kind in self.config.payload_index.items() if kind == "text")
        if name is None:
            if len(texts) != 1:
                raise InvalidArgument(
                    "text search needs a text payload index: create one with create_payload_index(field, 'text')"
                    if not texts
                    else f"the collection has several text indexes ({', '.join(texts)}): pass text_field="
                )
            return texts[0]
        if self.config.payload_index.get(name) != "text":
            raise InvalidArgument(
                f"field {name!r} has no text index: create one with create_payload_index({name!r}, 'text')"
            )
        return name

    def _bm25(
        self, text: str, field_name: str, n: int, snap: ReadSnapshot, masks: list[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(global rows, BM25 scores) of the best ``n`` allowed rows, best first."""
        sealed = [
            seg.payload.get(field_name) or self._index_segment(seg, field_name, "text")
            for seg in snap.segments
        ]
        mutable = snap.payload.get(field_name, [])
        bm25 = Bm25Query.prepare(text, [*sealed, *mutable])
        found_rows: list[np.ndarray] = []
        found_scores: list[np.ndarray] = []
        for i, (seg, part) in enumerate(zip(snap.segments, sealed, strict=True)):
            pos, scores = top_rows(bm25.score(part, seg.size), masks[i] if masks else seg.live, n)
            found_rows.append(seg.rows[pos])
            found_scores.append(scores)
        size = snap.live.size
        total = np.zeros(size, np.float32)
        for part in mutable:
            total += bm25.score(part, size, snap.start)
        pos, scores = top_rows(total, masks[-1] if masks else snap.live, n)
        found_rows.append(pos + snap.start)
        found_scores.append(scores)
        rows, scores = np.concatenate(found_rows), np.concatenate(found_scores)
        order = np.argsort(-scores, kind="stable")[:n]
        return rows[order], scores[order]
