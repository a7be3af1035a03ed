"""The payload column of sealed segments (engine/segments.py: ``payloads.bin`` + ``payloads.off.npy``,
the bytes RocksDB holds): search hits read their payloads from it (the mutable tail's from RocksDB)
and equal what was upserted through seals, grows and merges, deletes, upserts, a reopen, a
snapshot and its restore, tenants and the server (whose Search sends the stored bytes as they
are); segments written before the column answer from RocksDB and get one when they are
rewritten; a damaged column is a damaged segment."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

import lamina
from lamina import cli
from lamina.engine.collection import Collection
from lamina.engine.database import Database
from lamina.engine.manifest import PAYLOAD_OFFSETS, PAYLOADS, read_meta, write_meta
from lamina.errors import DataLoss
from lamina.types import CollectionConfig, IndexConfig, SearchParams
from tests.conftest import ServerThread

DIM = 16
K = 5
HNSW = {"type": "hnsw", "m": 8, "ef_construction": 32}


def _payload(i: int) -> dict[str, Any] | None:
    """Payloads of every shape: none (stored as {}), empty, unicode, nested, long."""
    kind = i % 5
    if kind == 0:
        return None
    if kind == 1:
        return {}
    if kind == 2:
        return {"text": "héllo wörld ✓ 日本語 🚀 \u2028" * (i % 7), "n": i}
    if kind == 3:
        return {"nested": {"a": [i, {"b": None, "c": [1.5, -2, True]}], "d": {"e": {"f": "ü"}}}}
    return {"n": i, "long": "x" * (i * 37 % 900)}


def _engine(db: lamina.Client, name: str = "c") -> Collection:
    return db._transport.db.get_collection(name)  # type: ignore[attr-defined, no-any-return]


class Model:
    """What the collection should hold: id -> (vector, payload as read back)."""

    def __init__(self, seed: int = 5) -> None:
        self.rng = np.random.default_rng(seed)
        self.points: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}

    def upsert(self, col: Any, ids: list[int], payload_of: Callable[[int], dict[str, Any] | None]) -> None:
        vectors = self.rng.standard_normal((len(ids), DIM)).astype(np.float32)
        payloads = [payload_of(i) for i in ids]
        col.upsert(ids, vectors, payloads)
        for i, v, p in zip(ids, vectors, payloads, strict=True):
            self.points[i] = (v, {} if p is None else p)

    def delete(self, col: Any, ids: list[int]) -> None:
        col.delete(ids=ids)
        for i in ids:
            del self.points[i]


def _check_answers(col: Any, model: Model, sample: list[int], engine: Collection | None = None) -> None:
    """Every hit of searches at ``sample`` points' vectors (plain path, exact, batch, and the
    server's ``search_json`` when ``engine`` is given) carries the payload upserted last."""
    for pid in sample:
        vec, payload = model.points[pid]
        answers = [
            col.search(vec, k=K),
            col.search(vec, k=K, exact=True),  # the general path
            col.search_batch(vec[None, :], k=K)[0],
            col.search(vec, k=K, with_vector=True),
        ]
        for hits in answers:
            assert hits and hits[0].id == pid and hits[0].payload == payload, (pid, hits[:1])
            for hit in hits:
                assert hit.id in model.points and hit.payload == model.points[hit.id][1], hit
        assert all(h.payload is None for h in col.search(vec, k=K, with_payload=False))
        if engine is not None:
            for exact in (False, True):
                params = SearchParams(exact=exact)
                hits, raw = engine.search_json(vec, K, None, params)
                assert all(h.payload is None for h in hits)
                assert [orjson.loads(b) for b in raw] == [model.points[h.id][1] for h in hits]
                assert [h.id for h in hits] == [h.id for h in answers[0 if not exact else 1]]


def _check_columns(engine: Collection, with_column: bool = True) -> None:
    """Each sealed segment's column holds exactly the bytes RocksDB holds for its live rows."""
    for segment in engine._segments:
        assert (segment.payload_column is not None) == with_column, segment.name
        if segment.payload_column is None:
            continue
        local = np.flatnonzero(segment.live)
        stored = engine._store.payloads_of(segment.rows[local].tolist())
        assert segment.payloads_local(local) == stored, segment.name


def _sealed_and_tail(engine: Collection, model: Model) -> tuple[list[int], list[int]]:
    """Ids of the model in sealed segments and in the mutable tail."""
    rows = engine._store.rows_of([b"\x00" + int(i).to_bytes(8, "big") for i in model.points])
    sealed = [i for i, r in zip(model.points, rows, strict=True) if r is not None and r < engine._mut_start]
    tail = [i for i, r in zip(model.points, rows, strict=True) if r is not None and r >= engine._mut_start]
    return sealed, tail


def test_hits_carry_the_upserted_payloads_through_seals_merges_reopen_and_snapshots(tmp_path: Path) -> None:
    model = Model()
    data = tmp_path / "data"
    with lamina.connect(str(data)) as db:
        col = db.create_collection("c", dim=DIM, index=HNSW, segment_rows=256)  # type: ignore[arg-type]
        model.upsert(col, list(range(600)), _payload)
        col.optimize()
        engine = _engine(db)
        assert len(engine._segments) == 2  # 512 + 88 rows
        model.upsert(col, list(range(600, 700)), _payload)  # left in the mutable tail
        sealed, tail = _sealed_and_tail(engine, model)
        assert len(sealed) == 600 and len(tail) == 100
        _check_columns(engine)
        _check_answers(col, model, sealed[::23] + tail[::11], engine)

        # deletes and upserts: a sealed point moves to the tail with a new payload
        gone = [3, 517, 599, 650]
        old = [model.points[i][0] for i in gone]
        model.delete(col, gone)
        moved = [7, 8, 513, 620]
        model.upsert(col, moved, lambda i: {"moved": i, "ünï": ["ç", {"x": None}]})
        _check_answers(col, model, [*moved, 4, 516, 640], engine)
        for vec in old:
            assert not {h.id for h in col.search(vec, k=50)} & set(gone)

        # a seal of the tail and a merge (the 88 + 104 rows grow the 512-row graph)
        before = {s.name for s in engine._segments}
        model.upsert(col, list(range(700, 900)), _payload)
        col.optimize()
        assert {s.name for s in engine._segments}.isdisjoint(before)  # every segment rewritten
        _check_columns(engine)
        _check_answers(col, model, list(model.points)[::29] + moved, engine)
        snap = col.snapshot()

    with lamina.connect(str(data)) as db:  # reopened: the columns are memory-mapped again
        col = db.get_collection("c")
        _check_columns(_engine(db))
        _check_answers(col, model, list(model.points)[::31], _engine(db))

    restored = tmp_path / "restored"
    lamina.restore_snapshot(snap.path, restored, name="copy")
    with lamina.connect(str(restored)) as db:
        col = db.get_collection("copy")
        _check_columns(_engine(db, "copy"))
        _check_answers(col, model, list(model.points)[::37] + moved)


def _seed(data: Path, model: Model, sealed: int, tail: int = 0) -> None:
    """A collection of ``sealed`` points in HNSW segments of 256+ rows, then ``tail`` more."""
    with lamina.connect(str(data)) as db:
        col = db.create_collection("c", dim=DIM, index=HNSW, segment_rows=256)  # type: ignore[arg-type]
        model.upsert(col, list(range(sealed)), _payload)
        col.optimize()
        if tail:
            model.upsert(col, list(range(sealed, sealed + tail)), _payload)


def test_the_server_sends_the_stored_payload_bytes(tmp_path: Path) -> None:
    model = Model(seed=9)
    data = tmp_path / "data"
    _seed(data, model, 400, tail=50)
    srv = ServerThread(data)
    try:
        with lamina.connect(srv.address) as client:
            col = client.get_collection("c")
            _check_answers(col, model, list(range(0, 450, 17)))
            model.upsert(col, [5, 6], lambda i: {"über": [i, "🚀"]})  # through the server
            _check_answers(col, model, [5, 6, 11])
            with pytest.raises(lamina.InvalidArgument):  # refused as before: k out of range
                col.search(model.points[5][0], k=0)
    finally:
        srv.stop()


def test_tenant_segments_have_a_column_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with lamina.connect(str(tmp_path)) as db:
        col = db.create_collection("c", dim=DIM, multi_tenant=True, segment_rows=256)  # type: ignore[arg-type]
        vectors = rng.standard_normal((600, DIM)).astype(np.float32)
        for t in range(3):
            ids = list(range(t * 200, t * 200 + 200))
            col.upsert(ids, vectors[ids], [_payload(i) for i in ids], tenant=f"t{t}")
        col.optimize()
        _check_columns(_engine(db))
        for i in (0, 201, 402, 599):
            hits = col.search(vectors[i], k=K, tenant=f"t{i // 200}")
            assert hits[0].id == i
            assert all(h.payload == (_payload(h.id) or {}) and h.id // 200 == i // 200 for h in hits)


def _segment_folders(data: Path, name: str = "c") -> list[Path]:
    return sorted(p for p in (data / "collections" / name / "segments").iterdir() if p.is_dir())


def _strip_column(folder: Path) -> None:
    """Make ``folder`` a segment written before payload columns (its manifest rewritten)."""
    (folder / PAYLOADS).unlink()
    (folder / PAYLOAD_OFFSETS).unlink()
    write_meta(folder, read_meta(folder))


def test_segments_without_a_column_answer_from_rocksdb_and_get_one_when_rewritten(tmp_path: Path) -> None:
    model = Model(seed=11)
    data = tmp_path / "data"
    _seed(data, model, 600)
    for folder in _segment_folders(data):
        _strip_column(folder)
    with lamina.connect(str(data)) as db:
        col = db.get_collection("c")
        engine = _engine(db)
        _check_columns(engine, with_column=False)
        model.upsert(col, list(range(600, 650)), _payload)  # a tail beside old segments
        model.delete(col, [1, 520])
        _check_answers(col, model, list(range(0, 650, 19)), engine)
        model.upsert(col, list(range(650, 800)), _payload)
        col.optimize()  # the old segments are grown / rebuilt: the new one has a column
        _check_columns(engine)
        _check_answers(col, model, list(model.points)[::27], engine)


def _check(data: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli.main(["check", "--data", str(data), *args])
    return code, out.getvalue()


def _seed_flat(data: Path, model: Model) -> None:
    with Database(data) as db:
        col = db.create_collection(
            "c", CollectionConfig(dim=DIM, segment_rows=256, index=IndexConfig(type="flat"))
        )
        model.upsert(col, list(range(600)), _payload)
        col.optimize()


def test_a_damaged_column_is_a_damaged_segment(tmp_path: Path) -> None:
    model = Model(seed=13)
    data = tmp_path / "data"
    _seed_flat(data, model)
    victim = _segment_folders(data)[0]
    with open(victim / PAYLOADS, "r+b") as fh:  # torn: one byte short
        fh.truncate((victim / PAYLOADS).stat().st_size - 1)
    with Database(data) as db:
        col = db.get_collection("c")
        assert victim.name in col.info().status.note
        with pytest.raises(DataLoss, match="degraded"):
            col.search(model.points[0][0], k=3)
    code, out = _check(data)
    assert code == 1 and f"segment {victim.name}: {PAYLOADS} has" in out, out
    code, out = _check(data, "--repair")
    assert "REPAIRED" in out, out
    with Database(data) as db:  # rebuilt from RocksDB, column included
        col = db.get_collection("c")
        _check_columns(col)
        _check_answers_engine(col, model)

    victim = _segment_folders(data)[-1]
    raw = bytearray((victim / PAYLOADS).read_bytes())
    raw[len(raw) // 2] ^= 0x20  # a flipped bit: same size, found by checksum
    (victim / PAYLOADS).write_bytes(bytes(raw))
    assert _check(data)[0] == 0  # like the vectors, the column is checked by size at open
    code, out = _check(data, "--deep")
    assert code == 1 and f"segment {victim.name}: {PAYLOADS} fails its checksum" in out, out
    with Database(data) as db:
        col = db.get_collection("c")
        deadline = time.monotonic() + 20
        while "degraded" not in col.info().status.note:  # the background scrub finds it
            assert time.monotonic() < deadline, "the scrub did not find the flipped payload byte"
            time.sleep(0.05)
        with pytest.raises(DataLoss):
            col.search(model.points[0][0], k=1)

    victim = _segment_folders(data)[0]
    blob = (victim / PAYLOADS).read_bytes()
    at = blob.index(b'"n":') + 4  # a digit of some row's "n": still JSON, the same size
    (victim / PAYLOADS).write_bytes(
        blob[:at] + (b"7" if blob[at : at + 1] != b"7" else b"8") + blob[at + 1 :]
    )
    write_meta(victim, read_meta(victim))  # its checksums agree: only the comparison with RocksDB tells
    code, out = _check(data, "--deep")
    assert code == 1 and f"segment {victim.name}: its payload column differs from the stored" in out, out

    offsets = _segment_folders(data)[0] / PAYLOAD_OFFSETS
    raw = bytearray(offsets.read_bytes())
    raw[-3] ^= 0x01  # the offsets file is checked in full at open
    offsets.write_bytes(bytes(raw))
    code, out = _check(data)
    assert code == 1 and f"{PAYLOAD_OFFSETS} fails its checksum" in out, out


def _check_answers_engine(col: Collection, model: Model) -> None:
    for pid in list(model.points)[::41]:
        vec = model.points[pid][0]
        hits = col.search(vec, k=K)
        assert hits[0].id == pid and all(h.payload == model.points[h.id][1] for h in hits)
        ids, raw = col.search_json(vec, K)
        assert [orjson.loads(b) for b in raw] == [model.points[h.id][1] for h in ids]
