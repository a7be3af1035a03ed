"""hnswlib's saved graph file, read as the segment's vector store.

hnswlib (0.8) saves a graph as a 96-byte header, then one fixed-size record per element
in internal-id order, ``[level-0 link count + links, vector (float32), label (uint64)]``,
then each element's upper-level links. The vectors are thus already on disk inside the
graph: an HNSW segment keeps no second float32 copy. ``relabel`` rewrites a saved graph so
that the internal id of every element is its label (hnswlib numbers elements in the order
threads insert them), and ``vectors`` memory-maps the file's vector column as a strided
(rows, dim) float32 view whose row i is label i's vector: the segment's local row i.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from numba import njit

from lamina.types import FloatMatrix

#: offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset,
#: offsetData (size_t), maxlevel (int), enterpoint_node (uint32), maxM, maxM0, M (size_t),
#: mult (double), ef_construction (size_t)
_HEADER = struct.Struct("<QQQQQQiIQQQdQ")
HEADER_BYTES = _HEADER.size  # 96


class GraphLayout:
    """What the header of a saved hnswlib graph says about its records."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as fh:
            raw = fh.read(HEADER_BYTES)
        if len(raw) < HEADER_BYTES:
            raise ValueError(f"{path} is not an hnswlib graph ({len(raw)} bytes)")
        fields = list(_HEADER.unpack(raw))
        self.fields = fields
        self.count = int(fields[2])
        self.record = int(fields[3])  # bytes per level-0 record
        self.label_at = int(fields[4])
        self.vector_at = int(fields[5])
        self.entry = int(fields[7])
        self.max_m = int(fields[8])
        self.max_m0 = int(fields[9])
        if self.record % 4 or self.label_at % 4 or self.vector_at % 4:
            raise ValueError(f"{path}: unexpected hnswlib record layout {fields}")

    def header(self, entry: int) -> bytes:
        fields = list(self.fields)
        fields[7] = entry
        return _HEADER.pack(*fields)


def vectors(path: Path, dim: int) -> FloatMatrix:
    """The (count, dim) float32 vectors inside a saved graph, memory-mapped read-only (a
    strided view: pages are read when touched and belong to the page cache). Row i is the
    vector of internal id i, which is label i in a graph written by ``relabel``."""
    layout = GraphLayout(path)
    if layout.count == 0:
        return np.zeros((0, dim), np.float32)
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    return np.ndarray(
        (layout.count, dim),
        dtype="<f4",
        buffer=mapped,
        offset=HEADER_BYTES + layout.vector_at,
        strides=(layout.record, 4),
    )


def relabel(src: Path, dest: Path) -> None:
    """Write the graph saved at ``src`` to ``dest`` with internal ids equal to labels
    (labels must be 0..count-1): records are permuted and every link renumbered. The
    renumbering runs in a numba kernel with the GIL released."""
    layout = GraphLayout(src)
    n, cols = layout.count, layout.record // 4
    size = os.path.getsize(src)
    raw = np.memmap(src, dtype=np.uint8, mode="r")
    words = np.asarray(raw[HEADER_BYTES:]).view("<u4")  # the header is 96 bytes: aligned
    level0 = words[: n * cols].reshape(n, cols)
    label_col = layout.label_at // 4
    labels = np.ascontiguousarray(level0[:, label_col]).astype(np.int64)
    if n and (np.ascontiguousarray(level0[:, label_col + 1]).any() or not _is_permutation(labels)):
        raise ValueError(f"{src}: labels are not 0..{n - 1}; the graph cannot be stored in label order")
    out = np.memmap(dest, dtype=np.uint8, mode="w+", shape=(size,))
    entry = int(labels[layout.entry]) if n else layout.entry
    out[:HEADER_BYTES] = np.frombuffer(layout.header(entry), np.uint8)
    out_words = np.asarray(out[HEADER_BYTES:]).view("<u4")
    _relabel(words, out_words, labels, n, cols, layout.max_m0, layout.max_m)
    out.flush()
    del out, raw


def _is_permutation(labels: np.ndarray) -> bool:
    n = labels.size
    if labels.min() < 0 or labels.max() >= n:
        return False
    return bool(np.bincount(labels, minlength=n).max() == 1)


@njit(nogil=True, cache=True)
def _relabel(
    words: np.ndarray, out: np.ndarray, new_of: np.ndarray, n: int, cols: int, max_m0: int, max_m: int
) -> None:  # pragma: no cover - compiled
    old_of = np.empty(n, np.int64)
    for old in range(n):
        old_of[new_of[old]] = old
    # level 0: record j of the output is the record of the element labelled j
    for new in range(n):
        src = old_of[new] * cols
        dst = new * cols
        for c in range(cols):
            out[dst + c] = words[src + c]
        count = words[src] & 0xFFFF
        for c in range(1, 1 + min(count, max_m0)):
            out[dst + c] = new_of[words[src + c]]
    # upper levels: each element's [size in bytes, levels * (count word, max_m links)]
    upper = n * cols
    starts = np.empty(n, np.int64)
    at = upper
    for old in range(n):
        starts[old] = at
        at += 1 + words[at] // 4
    pos = upper
    per_level = 1 + max_m
    for new in range(n):
        src = starts[old_of[new]]
        length = words[src] // 4
        out[pos] = words[src]
        for level in range(length // per_level):
            head = src + 1 + level * per_level
            dst = pos + 1 + level * per_level
            count = words[head] & 0xFFFF
            out[dst] = words[head]
            for c in range(1, per_level):
                value = words[head + c]
                out[dst + c] = new_of[value] if c <= count else value
        pos += 1 + length
