"""Segment manifests. ``segment.json`` holds a segment's tier and note; besides those it lists every
other file of the folder with its size and CRC-32 (taken as the folder is written, from the page
cache, before it is fsynced and renamed into place), and carries a CRC-32 of its own
body. Opening a segment checks the manifest's own checksum, that every file it lists is
there with its size, and the checksums of every file but the memory-mapped vectors, the
graph that holds them and the payload column (``UNREAD_AT_OPEN``: large, read as searches
touch them; the scrub checks them in the background); ``verify_segment(deep=True)`` (``lamina check --deep``) checks them all.
A segment written before checksums (no ``files`` in its manifest) still opens, unchecked.
Any mismatch raises ``DamagedSegment``; the collection then opens degraded (see
``engine/check.py``).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, cast

import orjson

from lamina.errors import DataLoss
from lamina.index.tiers import GRAPH
from lamina.storage import faults

META = "segment.json"
#: files checked at open by size and checksum; the vector file (memory-mapped, read as
#: searches touch it) by size only, unless deep
MAPPED = "vectors.f32"
#: a segment's payload column: each row's stored payload JSON back to back (the bytes RocksDB
#: holds), and the uint64 offsets of the rows in it (see engine/segments.py)
PAYLOADS = "payloads.bin"
PAYLOAD_OFFSETS = "payloads.off.npy"
#: files checked at open by size only (memory-mapped and possibly large), by checksum when deep;
#: so is an HNSW segment's GRAPH when it is the segment's vector file (saved in label order, no
#: vectors.f32 beside it, searched in place through a memory map: index/graphview.py); a graph
#: beside a vectors.f32 was saved as hnswlib left it and is loaded into hnswlib, which parses
#: every byte: checked at open
UNREAD_AT_OPEN = (MAPPED, PAYLOADS)


class DamagedSegment(DataLoss):
    """A segment's files do not match its manifest (or the manifest is torn)."""


def crc_file(path: Path) -> int:
    """CRC-32 of a file's bytes, read in 4 MiB blocks."""
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(4 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def _body_crc(meta: dict[str, Any]) -> int:
    return zlib.crc32(
        orjson.dumps({k: v for k, v in meta.items() if k != "checksum"}, option=orjson.OPT_SORT_KEYS)
    )


def write_meta(folder: Path, meta: dict[str, Any], dest: Path | None = None, leave_out: str = "") -> None:
    """Write ``segment.json`` (to ``dest``, default in ``folder``): ``meta`` with the size
    and CRC-32 of every other file in ``folder`` (but ``leave_out``, a file about to be
    removed) and a checksum of its own body."""
    files = {
        entry.name: [entry.stat().st_size, crc_file(Path(entry.path))]
        for entry in os.scandir(folder)
        if entry.is_file() and entry.name not in (META, leave_out) and not entry.name.endswith(".tmp")
    }
    body = {k: v for k, v in meta.items() if k not in ("files", "checksum")} | {"files": files}
    (dest or folder / META).write_bytes(orjson.dumps(body | {"checksum": _body_crc(body)}))


def read_meta(folder: Path) -> dict[str, Any]:
    """The manifest of the segment in ``folder``; DamagedSegment when it is missing, torn
    or fails its checksum."""
    path = folder / META
    try:
        faults.check_read(path)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DamagedSegment(f"segment {folder.name}: its manifest {path} is missing") from None
    except OSError as exc:
        raise DamagedSegment(
            f"segment {folder.name}: cannot read its manifest {path}: {exc.strerror}"
        ) from None
    try:
        meta = orjson.loads(raw)
        if not isinstance(meta, dict) or "tier" not in meta:
            raise ValueError("not a segment manifest")
    except (orjson.JSONDecodeError, ValueError):
        raise DamagedSegment(
            f"segment {folder.name}: its manifest {path} is torn or truncated ({len(raw)} bytes that are "
            "not a segment manifest)"
        ) from None
    if ("checksum" in meta or "files" in meta) and meta.get("checksum") != _body_crc(meta):
        raise DamagedSegment(f"segment {folder.name}: its manifest {path} fails its checksum")
    return cast(dict[str, Any], meta)


def verify_segment(folder: Path, *, deep: bool) -> list[str]:
    """Problems of the segment in ``folder`` (empty: intact): its manifest, then every file
    it lists by size, and by checksum (the memory-mapped vectors and payloads only when ``deep``)."""
    try:
        meta = read_meta(folder)
    except DamagedSegment as exc:
        return [str(exc)]
    files: dict[str, list[int]] | None = meta.get("files")
    if files is None:
        return []  # written before checksums: nothing to compare with
    problems = []
    lazy = UNREAD_AT_OPEN if MAPPED in files else (*UNREAD_AT_OPEN, GRAPH)
    for name, (size, crc) in sorted(files.items()):
        path = folder / name
        try:
            faults.check_read(path)
            actual = path.stat().st_size
            if actual != size:
                problems.append(f"segment {folder.name}: {name} has {actual} bytes, its manifest says {size}")
            elif (deep or name not in lazy) and crc_file(path) != crc:
                problems.append(f"segment {folder.name}: {name} fails its checksum")
        except FileNotFoundError:
            problems.append(f"segment {folder.name}: {name} is missing")
        except OSError as exc:
            problems.append(f"segment {folder.name}: cannot read {name}: {exc.strerror}")
    return problems


def degraded_error(collection: str, damaged: dict[str, str]) -> DataLoss:
    """Why a search of a degraded collection is refused."""
    return DataLoss(
        f"collection {collection!r} is degraded: {'; '.join(damaged.values())}. Searches are refused "
        "rather than answered without those rows (get and scroll by id still work); repair it offline "
        "with `lamina check --data DIR --repair` (a rebuild from the stored vectors), or restore a snapshot"
    )
