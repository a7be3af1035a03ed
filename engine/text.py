"""BM25 over ``text`` payload indexes (fusion with the dense ranking: engine/fusion.py).

The text index is a ``FieldIndex`` of kind ``text`` (postings of lower-cased word
tokens with term frequencies, and document lengths), one per sealed segment and a
few for the mutable segment, so it follows sealing, deletes and compaction like
every payload index. Scores use corpus statistics summed over all parts (Lucene's
BM25 with ``k1 = 1.2``, ``b = 0.75`` and its non-negative idf); rows deleted but not
yet compacted still count in those statistics, as in Lucene.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lamina.engine.payload import FieldIndex, tokenize

K1 = 1.2
B = 0.75


@dataclass(frozen=True)
class Bm25Query:
    """A query's distinct tokens with their idf, and the corpus's average length."""

    terms: tuple[str, ...]
    idf: tuple[float, ...]
    avgdl: float

    @classmethod
    def prepare(cls, text: str, parts: Sequence[FieldIndex]) -> Bm25Query:
        terms = tuple(dict.fromkeys(tokenize(text)))
        docs = sum(p.doc_rows.size for p in parts)
        length = float(sum(p.doc_len.sum(dtype=np.float64) for p in parts))
        idf = []
        for term in terms:
            df = sum(p.doc_freq(term) for p in parts)
            idf.append(math.log(1.0 + (docs - df + 0.5) / (df + 0.5)))
        return cls(terms, tuple(idf), length / docs if docs else 1.0)

    def score(self, part: FieldIndex, size: int, base: int = 0) -> np.ndarray:
        """BM25 score of rows ``base .. base + size`` from one index part (0 without a match)."""
        out = np.zeros(size, dtype=np.float32)
        for term, idf in zip(self.terms, self.idf, strict=True):
            rows, tf, dl = part.postings(term)
            if not rows.size:
                continue
            gain = idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * dl / self.avgdl))
            local = rows - base
            inside = (local >= 0) & (local < size)
            if not inside.all():
                local, gain = local[inside], gain[inside]
            out[local] += gain.astype(np.float32)
        return out


def top_rows(scores: np.ndarray, allow: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, scores) of the best ``n`` allowed positions with a positive score, best first."""
    pos = np.flatnonzero(allow & (scores > 0))
    if pos.size > n:
        pos = pos[np.argpartition(-scores[pos], n - 1)[:n]]
    order = np.argsort(-scores[pos], kind="stable")
    return pos[order], scores[pos[order]]
