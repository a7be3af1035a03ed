"""``lamina check``: verify a data directory, name each problem and its repair.

What is checked, per collection:

* RocksDB opens (read-only, refusing a write-ahead log damaged before its tail) and
  every block it reads passes RocksDB's own checksums (``deep``: every column family,
  else the small ones: meta, ids, rows, dead);
* the segment manifest: every segment it names opens (``segment.json`` passes its own
  checksum, every file it lists is there with its size and, ``deep``, its CRC-32);
* ids and rows: every id maps to exactly one row whose row maps back to it, and
  (``deep``) every such row has a vector and a payload, every live sealed row is in
  exactly one segment and every live row of a segment is in RocksDB;
* (``deep``) payload indexes: each segment's index equals one rebuilt from the stored
  payloads of its live rows; each segment's payload column holds the bytes RocksDB holds
  for its live rows.

Repairs: a damaged segment is rebuilt from the vectors RocksDB still holds for its rows
(``repair``; offline); damage to RocksDB itself or to the id mapping means restoring a
snapshot (``lamina restore``).
"""

from __future__ import annotations

import fcntl
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from lamina.config import DEFAULT_LIMITS
from lamina.engine.collection import Collection
from lamina.engine.manifest import MAPPED, verify_segment
from lamina.engine.payload import FieldIndex
from lamina.engine.segment_files import SCALES, keys_of, read_ids, read_payloads, restoring_scales
from lamina.engine.segments import Segment, payload_file
from lamina.errors import DataLoss, FailedPrecondition, LaminaError
from lamina.index.tiers import GRAPH, HnswTier
from lamina.storage.keys import without_tenant
from lamina.storage.rocks import CONFIG, MUTABLE_START, SEGMENTS, CollectionStore
from lamina.storage.vectorfile import map_matrix
from lamina.types import CollectionConfig

log = logging.getLogger("lamina.check")

RESTORE = "restore the collection from a snapshot (`lamina restore SNAPSHOT --data DIR --name NAME`)"
REBUILD = "rebuild the segment from its vectors: `lamina check --data DIR --repair`"
_SMALL_FAMILIES = ("meta", "ids", "rows", "dead")
_ALL_FAMILIES = ("meta", "ids", "rows", "vecs", "pays", "dead")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a collection, and how to repair it."""

    collection: str
    what: str
    repair: str

    def __str__(self) -> str:
        return f"{self.collection}: {self.what}\n    repair: {self.repair}"


@dataclass
class Report:
    """What ``check_data_directory`` found: problems, and a line per collection checked."""

    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


@contextmanager
def held(path: Path, *, online: bool) -> Iterator[bool]:
    """Hold the data directory's lock while checking (True), or, ``online``, check a
    directory a running server holds without it (False). FailedPrecondition when the
    directory is no Lamina data directory, or is held and ``online`` is not given."""
    if not (path / "collections").is_dir():
        raise FailedPrecondition(
            f"{path} is not a Lamina data directory (it has no collections/ folder): give --data the "
            "directory `lamina serve --data` uses"
        )
    if not (path / "LOCK").exists():
        yield True
        return
    lock = open(path / "LOCK")  # noqa: SIM115 - held for the check
    try:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not online:
                raise FailedPrecondition(
                    f"data directory {path} is in use by a running Lamina server: stop it first, or pass "
                    "--online to check it while it runs (read-only; writes made during the check may "
                    "show up as false alarms)"
                ) from None
            yield False
            return
        yield True
    finally:
        lock.close()


def check_data_directory(
    path: Path,
    collection: str | None = None,
    *,
    deep: bool = False,
    online: bool = False,
    repair: bool = False,
) -> Report:
    """Check every collection of the data directory ``path`` (or only ``collection``)."""
    report = Report()
    with held(path, online=online) as owned:
        if repair and not owned:
            raise FailedPrecondition(
                "--repair changes the data directory: stop the server first (not --online)"
            )
        names = sorted(
            e.name for e in (path / "collections").iterdir() if e.is_dir() and not e.name.startswith(".")
        )
        if collection is not None:
            if collection not in names:
                raise FailedPrecondition(
                    f"{path} holds no collection {collection!r}; it holds: {', '.join(names)}"
                )
            names = [collection]
        for name in names:
            folder = path / "collections" / name
            before = len(report.problems)
            try:
                report.checked.append(_check_collection(name, folder, deep, report.problems))
            except Exception as exc:  # damage this check did not foresee: still a finding, not a crash
                report.problems.append(
                    Problem(name, f"the check could not finish: {type(exc).__name__}: {exc}", RESTORE)
                )
                report.checked.append(f"collection {name}: check interrupted")
            if repair and len(report.problems) > before:
                report.repaired.extend(repair_collection(name, folder, deep))
    return report


def _check_collection(name: str, folder: Path, deep: bool, problems: list[Problem]) -> str:
    def problem(what: str, repair: str = RESTORE) -> None:
        problems.append(Problem(name, what, repair))

    try:
        store = CollectionStore(folder, read_only=True, paranoid=True)
    except LaminaError as exc:
        problem(f"RocksDB cannot be opened: {exc}")
        return f"collection {name}: RocksDB cannot be opened"
    try:
        for family in _ALL_FAMILIES if deep else _SMALL_FAMILIES:
            try:
                store.verify_family(family)
            except LaminaError as exc:
                problem(f"RocksDB column family {family!r} fails its checksums: {exc}")
        if store.get_meta(CONFIG) is None:
            problem("RocksDB holds no collection config (not a Lamina collection, or damaged)")
            return f"collection {name}: no config"
        orphans = sorted({p.name for p in folder.glob("*.sst")} - store.table_files())
        if orphans:
            problem(
                f"RocksDB's MANIFEST does not name {len(orphans)} table file(s) in its folder ({orphans[0]}, ...): "
                "the MANIFEST is damaged and the data in those tables is invisible"
            )
        raw = store.get_meta(SEGMENTS)
        names: list[str] = orjson.loads(raw) if raw else []
        unlisted = sorted(
            p.name
            for p in (folder / "segments").glob("*")
            if p.is_dir() and p.name not in names and not p.name.endswith(".tmp")
        )
        if unlisted:
            problem(
                f"{len(unlisted)} segment folder(s) are not in the segment manifest ({unlisted[0]}, ...): "
                "either left by a compaction a crash interrupted (harmless: the next start removes them) "
                "or the manifest in RocksDB lost them"
            )
        raw = store.get_meta(MUTABLE_START)
        mut_start = int.from_bytes(raw, "big") if raw else 0
        ids, rows = _check_ids(store, problem)
        segment_rows = 0
        damaged: set[str] = set()
        for seg_name in names:
            found = verify_segment(folder / "segments" / seg_name, deep=deep)
            if found:
                damaged.add(seg_name)
            for what in found:
                problem(what, REBUILD)
        if deep:
            segment_rows = _check_rows(store, folder, names, damaged, ids, rows, mut_start, problem)
        return f"collection {name}: {len(ids):,} ids, {len(names)} segment(s)" + (
            f" ({segment_rows:,} rows checked against RocksDB)" if deep else ""
        )
    finally:
        store.close()


Reporter = Callable[..., None]  # (what, repair=RESTORE): record a problem


def _check_ids(store: CollectionStore, report: Reporter) -> tuple[dict[bytes, int], dict[int, bytes]]:
    """Every id maps to one row that maps back to it, and the other way round."""
    ids: dict[bytes, int] = {}
    rows: dict[int, bytes] = {}
    try:
        ids = dict(store.scan_ids())
        rows = dict(store.scan_rows())
    except LaminaError as exc:
        report(f"cannot read the id mapping: {exc}")
        return ids, rows
    bad = [key for key, row in ids.items() if rows.get(row) != key]
    bad_rows = [row for row, key in rows.items() if ids.get(key) != row]
    if bad:
        report(f"{len(bad)} id(s) map to a row that does not map back to them (first: row {ids[bad[0]]})")
    if bad_rows:
        report(f"{len(bad_rows)} row(s) map to an id that maps elsewhere (first: row {bad_rows[0]})")
    return ids, rows


def _check_rows(
    store: CollectionStore,
    folder: Path,
    names: list[str],
    damaged: set[str],
    ids: dict[bytes, int],
    rows: dict[int, bytes],
    mut_start: int,
    report: Reporter,
) -> int:
    """Deep: vectors and payloads of every row, sealed rows against the segments, and
    payload indexes against the stored payloads. Returns how many segment rows were checked."""
    live = np.array(sorted(rows), dtype=np.int64)
    # sealed rows' vectors live in their segment's file (checked with the segment)
    for family, reader, which in (
        ("vecs", store.vectors_of, live[live >= mut_start]),
        ("pays", store.payloads_of, live),
    ):
        missing = [int(r) for r, v in zip(which.tolist(), reader(which.tolist()), strict=True) if v is None]
        if missing:
            report(f"{len(missing)} live row(s) have no {family[:-1]} stored (first: row {missing[0]})")
    dead = set(store.dead_rows().tolist())
    sealed = live[live < mut_start]
    covered = np.zeros(sealed.size, dtype=np.int64)
    checked = 0
    config = store.get_meta(CONFIG)
    schema: dict[str, str] = orjson.loads(config).get("payload_index", {}) if config else {}
    for seg_name in names:
        seg_folder = folder / "segments" / seg_name
        if seg_name in damaged:
            lo = int(seg_name.split("-")[0])
            covered[(sealed >= lo) & (sealed < _next_lo(names, seg_name, mut_start))] += 1
            continue
        seg_rows = np.load(seg_folder / "rows.npy")
        checked += seg_rows.size
        alive = np.array([int(r) not in dead for r in seg_rows.tolist()], dtype=np.bool_)
        gone = [int(r) for r in seg_rows[alive].tolist() if r not in rows]
        if gone:
            report(
                f"segment {seg_name}: {len(gone)} live row(s) were deleted from RocksDB without being "
                f"recorded dead (first: row {gone[0]})",
                REBUILD,
            )
        if sealed.size:
            pos = np.searchsorted(sealed, seg_rows[alive])
            pos = pos[(pos < sealed.size) & (sealed[np.minimum(pos, sealed.size - 1)] == seg_rows[alive])]
            covered[pos] += 1
        differs = _column_differs(store, seg_folder, seg_rows, alive)
        if differs:
            report(f"segment {seg_name}: its payload column {differs}", REBUILD)
        for field_name, kind in schema.items():
            index_path = seg_folder / payload_file(field_name, kind)
            if index_path.exists() and not _index_matches(
                store, index_path, kind, field_name, seg_rows, alive
            ):
                report(
                    f"segment {seg_name}: the {kind} index of {field_name!r} differs from the stored payloads",
                    REBUILD,
                )
    if sealed.size and (covered != 1).any():
        bad = sealed[covered != 1]
        report(
            f"{bad.size} live sealed row(s) are in {'no' if covered.min() == 0 else 'more than one'} segment "
            f"(first: row {int(bad[0])})",
            REBUILD,
        )
    return checked


def _next_lo(names: list[str], name: str, mut_start: int) -> int:
    at = names.index(name)
    return int(names[at + 1].split("-")[0]) if at + 1 < len(names) else mut_start


def _column_differs(store: CollectionStore, seg_folder: Path, seg_rows: np.ndarray, alive: np.ndarray) -> str:
    """How a segment's payload column differs from the payloads RocksDB holds for its live
    rows ("" when it does not, or the segment has no column)."""
    try:
        column = read_payloads(seg_folder, seg_rows.size)
    except (OSError, ValueError) as exc:
        return f"cannot be read: {exc}"
    if column is None:
        return ""
    blob, offsets = column
    local = np.flatnonzero(alive)
    for lo in range(0, local.size, 4_096):
        part = local[lo : lo + 4_096]
        stored = store.payloads_of(seg_rows[part].tolist())
        spans = zip(part.tolist(), offsets[part].tolist(), offsets[part + 1].tolist(), stored, strict=True)
        for at, a, b, want in spans:
            if want is not None and blob[a:b] != want:
                return f"differs from the stored payloads (first: row {int(seg_rows[at])})"
    return ""


def _index_matches(
    store: CollectionStore, path: Path, kind: str, field_name: str, seg_rows: np.ndarray, alive: np.ndarray
) -> bool:
    try:
        stored = FieldIndex.load(path)
    except (OSError, ValueError, KeyError):
        return False
    local = np.flatnonzero(alive)
    payloads = [
        orjson.loads(b) if b is not None else None for b in store.payloads_of(seg_rows[local].tolist())
    ]
    rebuilt = FieldIndex.build(kind, tuple(field_name.split(".")), range(local.size), payloads)
    kept = FieldIndex.select([stored], local)
    return kept.terms == rebuilt.terms and all(
        np.array_equal(getattr(kept, a), getattr(rebuilt, a))
        for a in ("present", "odd", "rows", "term_of", "values", "tf", "doc_rows", "doc_len")
    )


def _salvage(
    store: CollectionStore, seg_folder: Path, rows: np.ndarray, config: CollectionConfig
) -> list[bytes]:
    """The stored vectors of the live ``rows`` of a damaged segment: from RocksDB (rows it
    kept, or a segment sealed before vectors were stored once), else from the segment's
    own vector file when that passes its checksum (the damage is elsewhere: its row list,
    a payload index...). Rows are found in it by their row list, or when that is damaged
    by their ids. Raises DataLoss naming the segment when the vectors themselves are lost."""
    blobs = store.vectors_of(rows.tolist())
    need = [i for i, b in enumerate(blobs) if b is None]
    if not need:
        return [b for b in blobs if b is not None]
    problems = verify_segment(seg_folder, deep=True)

    def intact(file: str) -> bool:
        return (seg_folder / file).exists() and not any(
            f": {file} " in p or f" {file}:" in p for p in problems
        )

    lost = f"segment {seg_folder.name}: the vectors of {len(need):,} row(s) were stored only in it and "
    source = MAPPED if (seg_folder / MAPPED).exists() else GRAPH
    cosine = config.metric == "cosine"
    if not intact(source) or (cosine and not intact(SCALES)):
        raise DataLoss(
            lost + f"its {source if intact(SCALES) or not cosine else SCALES} is damaged: "
            "restore the collection from a snapshot"
        )
    vectors = (
        map_matrix(seg_folder / MAPPED, config.dim)
        if source == MAPPED
        else HnswTier.vectors(seg_folder, config.dim)
    )
    want = rows[need]
    if intact("rows.npy"):
        seg_rows = np.load(seg_folder / "rows.npy")
        local = np.minimum(np.searchsorted(seg_rows, want), seg_rows.size - 1)
        found = seg_rows[local] == want
    else:  # by id: a row's id key is at its position (the last one: an upserted id's live row)
        ids = keys_of(read_ids(seg_folder))
        where = {key: at for at, key in enumerate(ids)}
        keys = store.id_keys_of(want.tolist())
        plain = isinstance(read_ids(seg_folder), np.ndarray)
        local = np.array(
            [where.get(without_tenant(k) if plain else k, -1) if k else -1 for k in keys], np.int64
        )
        found = (local >= 0) & (local < vectors.shape[0])
    if not found.all():
        raise DataLoss(lost + "its row list and ids are damaged: restore the collection from a snapshot")
    got = np.asarray(vectors[local], dtype=np.float32)
    if cosine:
        got = got * np.load(seg_folder / SCALES)[local][:, None]
    for i, vec in zip(need, got, strict=True):
        blobs[i] = vec.astype("<f4").tobytes()
    return [b for b in blobs if b is not None]


def repair_collection(name: str, folder: Path, deep: bool = False) -> list[str]:
    """Rebuild every damaged segment of the collection in ``folder`` from the vectors and
    payloads RocksDB holds for its rows (offline: the caller holds the directory lock):
    those found damaged at open, and (``deep``) those the scrub finds, whose memory-mapped
    files opening checks by size only. Returns a line per segment rebuilt."""
    done: list[str] = []
    collection = Collection.open(name, folder, DEFAULT_LIMITS, sync=True)
    try:
        if deep:  # the scrub, now rather than in the background: damaged segments join _damaged
            with collection._lock:
                while collection._scrub_step():
                    pass
        store = collection._store
        raw = store.get_meta(SEGMENTS)
        names: list[str] = orjson.loads(raw) if raw else []
        for seg_name in [n for n in names if n in collection._damaged]:
            lo, hi = int(seg_name.split("-")[0]), _next_lo(names, seg_name, collection._mut_start)
            rows = np.array([r for r, _ in store.scan_rows(lo) if r < hi], dtype=np.int64)
            forget = [int(r) for r in store.dead_rows().tolist() if lo <= r < hi]
            segment: Segment | None = None
            scales: np.ndarray | None = None
            kept: list[tuple[int, bytes]] = []
            if rows.size:
                blobs = _salvage(store, folder / "segments" / seg_name, rows, collection.config)
                vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(-1, collection.config.dim)
                prepared = collection._prepare(vectors.astype(np.float32))
                payloads = collection._stored_payloads(rows)
                indexes = {
                    f: FieldIndex.build(kind, tuple(f.split(".")), range(rows.size), payloads)
                    for f, kind in collection.config.payload_index.items()
                }
                if collection.config.metric == "cosine":  # as a seal does (see segments.restoring_scales)
                    scales, exact = restoring_scales(vectors, prepared)
                    kept = [(int(rows[i]), blobs[i]) for i in np.flatnonzero(~exact).tolist()]
                segment = collection._build(rows, prepared, indexes, scales)
            fresh = [n if n != seg_name else (segment.name if segment else "") for n in names]
            names = [n for n in fresh if n]
            # the rebuilt segment holds the one copy of its rows' vectors, as after a seal
            store.put_meta({SEGMENTS: orjson.dumps(names)}, forget_dead=forget, sealed=(lo, hi), kept=kept)
            shutil.rmtree(folder / "segments" / seg_name, ignore_errors=True)
            done.append(
                f"{name}: rebuilt segment {seg_name} as {segment.name if segment else '(none: no live rows)'} "
                f"from {rows.size:,} stored vectors"
            )
            log.info("%s", done[-1])
    finally:
        collection.close()
    return done
