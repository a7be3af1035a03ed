"""The numba walk of an hnswlib graph file (index/graphview.py maps the file and calls it).

hnswlib's ``searchKnn`` step for step, over the file's 32-bit words: greedy descent on the
upper levels, then the level-0 beam search (see graphview's docstring). ``walk_graph`` walks
one graph for each query, ``walk_graphs`` several graphs (tuples of their arrays) for each
query in one call; both release the GIL and share the walk of one query (``_walk``), so their
answers are identical. ``index_upper`` reads the upper levels' offsets when a view opens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: reordered float sums (the dot product in SIMD lanes, as hnswlib's own SIMD distance does);
#: not "ninf"/"nnan": the walk compares against infinity
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
#: the kernel's answer when a link points outside the graph (a damaged file)
BAD_LINK = -1


@njit(nogil=True, cache=True)
def index_upper(
    words: np.ndarray, start: int, n: int, per_level: int, upper: np.ndarray, levels: np.ndarray
) -> int:  # pragma: no cover - compiled
    """Fill ``upper[i]`` with the word offset of element i's level-1 list (-1: level 0 only)
    and ``levels[i]``; returns the word offset after the last element (-1 past the end, or
    when a list is malformed or links outside the graph)."""
    at = start
    size = words.size
    for i in range(n):
        if at >= size:
            return -1
        nbytes = words[at]
        if nbytes % (4 * per_level):
            return -1
        length = nbytes // 4
        if at + 1 + length > size:
            return -1
        if length:
            upper[i] = at + 1
            levels[i] = length // per_level
            for level in range(length // per_level):
                head = at + 1 + level * per_level
                count = words[head] & 0xFFFF
                if count >= per_level:
                    return -1
                for c in range(1, count + 1):
                    if words[head + c] >= n:
                        return -1
        at += 1 + length
    return at


def _prefetch_intrinsic(typingctx, array, row, col):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Ask the CPU to fetch ``array[row, col]``'s cache line (``llvm.prefetch``, read, keep
    in all levels), as hnswlib does with the next neighbour's vector and visited mark."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        at = [context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2)]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, at)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, row, col), codegen


_prefetch: Any = intrinsic(_prefetch_intrinsic)


@njit(nogil=True, fastmath=_FASTMATH, cache=True, inline="always")
def _distance(floats: np.ndarray, i: int, col: int, dim: int, query: np.ndarray, ip: bool) -> np.float32:
    row = floats[i, col : col + dim]  # a slice: LLVM vectorizes this loop (row[col + j] runs 3x slower)
    acc = np.float32(0.0)
    if ip:
        for j in range(row.shape[0]):
            acc += row[j] * query[j]
        return np.float32(1.0) - acc
    for j in range(row.shape[0]):
        diff = row[j] - query[j]
        acc += diff * diff
    return acc


@njit(nogil=True, cache=True, inline="always")
def _heap_push(dist: np.ndarray, ids: np.ndarray, size: int, d: np.float32, i: int, sign: np.float32) -> None:
    """Push onto a binary heap whose top (index 0) has the largest ``sign * dist``."""
    pos = size
    key = sign * d
    while pos > 0:
        parent = (pos - 1) >> 1
        if sign * dist[parent] >= key:
            break
        dist[pos] = dist[parent]
        ids[pos] = ids[parent]
        pos = parent
    dist[pos] = d
    ids[pos] = i


@njit(nogil=True, cache=True, inline="always")
def _heap_pop(dist: np.ndarray, ids: np.ndarray, size: int, sign: np.float32) -> None:
    """Remove the top of a heap of ``size`` (see ``_heap_push``)."""
    size -= 1
    d = dist[size]
    i = ids[size]
    key = sign * d
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and sign * dist[child + 1] > sign * dist[child]:
            child += 1
        if sign * dist[child] <= key:
            break
        dist[pos] = dist[child]
        ids[pos] = ids[child]
        pos = child
    if size > 0:
        dist[pos] = d
        ids[pos] = i


@njit(nogil=True, fastmath=_FASTMATH, cache=True, inline="always")
def _walk(
    level0: np.ndarray,
    floats: np.ndarray,
    words: np.ndarray,
    upper: np.ndarray,
    shape: np.ndarray,
    ip: bool,
    query: np.ndarray,
    k: int,
    ef: int,
    returnable: np.ndarray,
    marks: np.ndarray,
    tag: np.ndarray,
    top_d: np.ndarray,
    top_i: np.ndarray,
    cand_d: np.ndarray,
    cand_i: np.ndarray,
    out_dist: np.ndarray,
    out_ids: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """hnswlib's search of one query in one graph (``shape``: see ``GraphView.shape``): its
    k best returnable rows into ``out_dist``/``out_ids``, best first. Returns their count
    (or ``BAD_LINK``) and the candidate heap's arrays (larger ones when it filled);
    ``top_*`` hold ef + 1."""
    n = level0.shape[0]
    col, dim, entry, maxlevel, per_level, max_m0 = shape[0], shape[1], shape[2], shape[3], shape[4], shape[5]
    marks2 = marks.reshape(marks.size, 1)  # 2-d for _prefetch
    up = np.float32(1.0)  # max-heap of the beam: its worst at the top
    down = np.float32(-1.0)  # min-heap of candidates: the nearest at the top
    # greedy descent through the upper levels
    cur = entry
    cur_d = _distance(floats, cur, col, dim, query, ip)
    for level in range(maxlevel, 0, -1):
        changed = True
        while changed:
            changed = False
            head = upper[cur]
            if head < 0:
                return BAD_LINK, cand_d, cand_i
            head += (level - 1) * per_level
            count = words[head] & 0xFFFF
            for c in range(1, count + 1):
                nb = words[head + c]  # checked against n when the view was opened
                d = _distance(floats, nb, col, dim, query, ip)
                if d < cur_d:
                    cur_d = d
                    cur = nb
                    changed = True
    # level 0: beam search of width ef
    tag[0] += 1
    if tag[0] > 65535:
        marks[:] = 0
        tag[0] = 1
    mark = np.uint16(tag[0])
    n_top = 0
    n_cand = 0
    if returnable[cur]:
        lower = cur_d
        _heap_push(top_d, top_i, n_top, cur_d, cur, up)
        n_top += 1
        _heap_push(cand_d, cand_i, n_cand, cur_d, cur, down)
    else:
        lower = np.float32(np.inf)
        _heap_push(cand_d, cand_i, n_cand, lower, cur, down)
    n_cand += 1
    marks[cur] = mark
    while n_cand:
        c_d = cand_d[0]
        if c_d > lower and n_top == ef:
            break
        node = cand_i[0]
        _heap_pop(cand_d, cand_i, n_cand, down)
        n_cand -= 1
        count = level0[node, 0] & 0xFFFF
        if count > max_m0:
            return BAD_LINK, cand_d, cand_i
        if count:
            first = level0[node, 1]
            if first < n:
                _prefetch(marks2, first, 0)
                _prefetch(floats, first, col)
        for c in range(1, count + 1):
            nb = level0[node, c]
            if nb >= n:
                return BAD_LINK, cand_d, cand_i
            if c < count:  # the next neighbour's mark and vector, while this one is scored
                ahead = level0[node, c + 1]
                if ahead < n:
                    _prefetch(marks2, ahead, 0)
                    _prefetch(floats, ahead, col)
            if marks[nb] == mark:
                continue
            marks[nb] = mark
            d = _distance(floats, nb, col, dim, query, ip)
            if n_top < ef or lower > d:
                if n_cand == cand_d.size:  # grow the candidate heap
                    grown_d = np.empty(2 * n_cand, np.float32)
                    grown_i = np.empty(2 * n_cand, np.int64)
                    grown_d[:n_cand] = cand_d
                    grown_i[:n_cand] = cand_i
                    cand_d = grown_d
                    cand_i = grown_i
                _heap_push(cand_d, cand_i, n_cand, d, nb, down)
                n_cand += 1
                if returnable[nb]:
                    _heap_push(top_d, top_i, n_top, d, nb, up)
                    n_top += 1
                    if n_top > ef:
                        _heap_pop(top_d, top_i, n_top, up)
                        n_top -= 1
                if n_top:
                    lower = top_d[0]
    # the k best, best first: drop the worst past k, then pop the rest from the back
    while n_top > k:
        _heap_pop(top_d, top_i, n_top, up)
        n_top -= 1
    found = n_top
    while n_top:
        out_dist[n_top - 1] = top_d[0]
        out_ids[n_top - 1] = top_i[0]
        _heap_pop(top_d, top_i, n_top, up)
        n_top -= 1
    return found, cand_d, cand_i


@njit(nogil=True, fastmath=_FASTMATH, cache=True)
def walk_graph(
    level0: np.ndarray,
    floats: np.ndarray,
    words: np.ndarray,
    upper: np.ndarray,
    shape: np.ndarray,
    ip: bool,
    queries: np.ndarray,
    k: int,
    ef: int,
    returnable: np.ndarray,
    marks: np.ndarray,
    tag: np.ndarray,
    out_dist: np.ndarray,
    out_ids: np.ndarray,
    counts: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """``_walk`` of each query in one graph (``GraphView.search``); 0, or ``BAD_LINK``."""
    top_d = np.empty(ef + 1, np.float32)
    top_i = np.empty(ef + 1, np.int64)
    cand_d = np.empty(4 * ef + 64, np.float32)
    cand_i = np.empty(4 * ef + 64, np.int64)
    for q in range(queries.shape[0]):
        found, cand_d, cand_i = _walk(
            level0, floats, words, upper, shape, ip, queries[q], k, ef, returnable, marks, tag,
            top_d, top_i, cand_d, cand_i, out_dist[q], out_ids[q],
        )  # fmt: skip
        if found < 0:
            return found
        counts[q] = found
    return 0


@njit(nogil=True, fastmath=_FASTMATH, cache=True)
def walk_graphs(
    level0s: tuple[np.ndarray, ...],
    floatss: tuple[np.ndarray, ...],
    wordss: tuple[np.ndarray, ...],
    uppers: tuple[np.ndarray, ...],
    shapes: np.ndarray,
    ip: bool,
    queries: np.ndarray,
    k: int,
    ef: int,
    returnables: tuple[np.ndarray, ...],
    markss: tuple[np.ndarray, ...],
    tagss: tuple[np.ndarray, ...],
    lo: int,
    hi: int,
    out_dist: np.ndarray,
    out_ids: np.ndarray,
    counts: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """``_walk`` of each query in graphs ``lo`` to ``hi`` of the tuples (graph s: its k best
    into ``out_*[s, q]``, their count into ``counts[s, q]``, at most its element count);
    the beam is max(ef, k) per graph. Returns -1, or the first graph found damaged."""
    top_d = np.empty(max(ef, k) + 1, np.float32)
    top_i = np.empty(max(ef, k) + 1, np.int64)
    cand_d = np.empty(4 * ef + 64, np.float32)
    cand_i = np.empty(4 * ef + 64, np.int64)
    for s in range(lo, hi):
        level0 = level0s[s]
        kk = min(k, level0.shape[0])
        for q in range(queries.shape[0]):
            found, cand_d, cand_i = _walk(
                level0, floatss[s], wordss[s], uppers[s], shapes[s], ip, queries[q], kk, max(ef, kk),
                returnables[s], markss[s], tagss[s], top_d, top_i, cand_d, cand_i,
                out_dist[s, q], out_ids[s, q],
            )  # fmt: skip
            if found < 0:
                return s
            counts[s, q] = found
    return -1
