"""The files a sealed segment keeps beside its index tier (see engine/segments.py): the
point ids of its rows, its payload column, its vectors (``vectors.f32`` or an HNSW graph's
records) and, for cosine, the per-row scales that give back each stored vector bit for bit."""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import numpy as np
from numba import njit

from lamina.index.tiers import HnswTier, Tier
from lamina.index.warmup import warm
from lamina.storage.keys import without_tenant
from lamina.storage.vectorfile import map_matrix
from lamina.types import FloatMatrix

from .manifest import MAPPED, PAYLOAD_OFFSETS, PAYLOADS

#: a cosine segment's file of per-row scales (see restoring_scales)
SCALES = "scales.npy"
#: restoring_scales tries the float32 norm and this many neighbouring floats each side
SCALE_STEPS = 6

Ids = np.ndarray | tuple[memoryview, np.ndarray]
#: a payload column: the blob (mapped; slicing it gives bytes) and the rows' offsets in it
Column = tuple[mmap.mmap | bytes, np.ndarray]


def keys_of(ids: Ids) -> list[bytes]:
    """The id key of every row of a segment with ``ids``, as it was written with them."""
    if isinstance(ids, np.ndarray):
        raw = ids.astype(">u8").tobytes()
        return [b"\x00" + raw[i : i + 8] for i in range(0, len(raw), 8)]
    blob, offsets = ids
    bounds = offsets.tolist()
    return [bytes(blob[a:b]) for a, b in pairwise(bounds)]


def restoring_scales(raw: FloatMatrix, unit: FloatMatrix) -> tuple[np.ndarray, np.ndarray]:
    """For a cosine segment: a float32 scale per row such that ``unit * scale`` is the
    ``raw`` vector bit for bit, and whether one was found (the norm or one of the
    ``SCALE_STEPS`` floats either side of it; for unit-length embeddings nearly always).
    Rows without one keep their stored vector in RocksDB. A numba kernel, GIL released."""
    norm = np.sqrt(np.einsum("ij,ij->i", raw, raw, dtype=np.float64)).astype(np.float32)
    scales = norm.copy()
    exact = np.zeros(raw.shape[0], np.bool_)
    _find_scales(np.ascontiguousarray(raw), np.ascontiguousarray(unit), norm, SCALE_STEPS, scales, exact)
    return scales, exact


@njit(nogil=True, cache=True)
def _find_scales(
    raw: np.ndarray, unit: np.ndarray, norm: np.ndarray, steps: int, scales: np.ndarray, exact: np.ndarray
) -> None:  # pragma: no cover - compiled
    for i in range(raw.shape[0]):
        for side in range(2):
            scale = norm[i]
            for _ in range(steps + 1):
                same = True
                for j in range(raw.shape[1]):
                    if unit[i, j] * scale != raw[i, j]:
                        same = False
                        break
                if same:
                    scales[i] = scale
                    exact[i] = True
                    break
                scale = np.float32(np.nextafter(scale, np.float32(np.inf) if side == 0 else np.float32(0.0)))
            if exact[i]:
                break


def map_vectors(folder: Path, tier: Tier, dim: int) -> FloatMatrix:
    """A segment's vectors, memory-mapped: ``vectors.f32``, or the records of an HNSW
    segment's graph (segments sealed since vectors are stored once have no vectors.f32)."""
    if isinstance(tier, HnswTier) and not (folder / MAPPED).exists():
        return HnswTier.vectors(folder, dim)  # the graph's own map is warmed (index/graphview.py)
    vectors = map_matrix(folder / MAPPED, dim)
    warm(vectors, f"segment {folder.name} {MAPPED}")  # reranks read rows all over it
    return vectors


def write_ids(folder: Path, keys: list[bytes], before: Ids | None = None) -> None:
    """Integer ids (tenant prefixes dropped: ``tenants.npy`` holds the tenants) as one
    uint64 array; otherwise the id keys back to back with their offsets. ``before``: the
    ids of the rows that come first (a grown segment's), kept as they are when both are
    integers (no Python loop over a large segment's ids while searches wait for the GIL)."""
    plain = [without_tenant(k) for k in keys]
    if all(len(k) == 9 and k[:1] == b"\x00" for k in plain) and (
        before is None or isinstance(before, np.ndarray)
    ):
        ints = np.frombuffer(b"".join(k[1:] for k in plain), dtype=">u8").astype(np.uint64)
        np.save(folder / "ids.npy", ints if before is None else np.concatenate([before, ints]))
        return
    if before is not None:
        keys = keys_of(before) + keys
    (folder / "keys.bin").write_bytes(b"".join(keys))
    offsets = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum([len(k) for k in keys], out=offsets[1:])
    np.save(folder / "keys.off.npy", offsets)


def write_payloads(folder: Path, before: Column | None, payloads: Sequence[bytes]) -> None:
    """The payload column of a segment folder: the rows of column ``before`` (if any, a grown
    segment's base: copied as they are), then ``payloads``, back to back, and the uint64
    offsets of every row (rows + 1 of them, the first 0)."""
    head = np.zeros(1, np.uint64) if before is None else np.asarray(before[1], np.uint64)
    end = int(head[-1])
    offsets = np.empty(head.size + len(payloads), np.uint64)
    offsets[: head.size] = head
    np.cumsum(np.fromiter(map(len, payloads), np.uint64, len(payloads)), out=offsets[head.size :])
    offsets[head.size :] += np.uint64(end)
    with open(folder / PAYLOADS, "wb") as fh:
        if before is not None:
            for lo in range(0, end, 64 << 20):
                fh.write(before[0][lo : min(end, lo + (64 << 20))])
        for lo in range(0, len(payloads), 65_536):
            fh.write(b"".join(payloads[lo : lo + 65_536]))
    np.save(folder / PAYLOAD_OFFSETS, offsets)


def read_payloads(folder: Path, rows: int) -> Column | None:
    """The payload column of a segment folder of ``rows`` rows (see ``write_payloads``),
    memory-mapped; None for a segment written before columns. ValueError when the offsets
    do not fit the rows or the blob."""
    path = folder / PAYLOADS
    if not path.exists():
        return None
    offsets = np.asarray(np.load(folder / PAYLOAD_OFFSETS, mmap_mode="r"))
    if offsets.dtype != np.uint64 or offsets.shape != (rows + 1,):
        raise ValueError(f"{PAYLOAD_OFFSETS} holds {offsets.shape} {offsets.dtype}, not {rows + 1} uint64")
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size != int(offsets[-1]):
            raise ValueError(f"{PAYLOADS} has {size} bytes, its offsets end at {int(offsets[-1])}")
        blob = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    return blob, offsets


def read_ids(folder: Path) -> Ids:
    """The point ids of a segment folder's rows (see ``write_ids``), memory-mapped."""
    if (folder / "ids.npy").exists():
        return np.asarray(np.load(folder / "ids.npy", mmap_mode="r"))  # a plain view: cheaper to index
    blob = (
        memoryview(cast(Any, np.memmap(folder / "keys.bin", dtype=np.uint8, mode="r")))
        if (folder / "keys.bin").stat().st_size
        else memoryview(b"")
    )
    return blob, np.asarray(np.load(folder / "keys.off.npy", mmap_mode="r"))
