"""The same calls on the embedded and the remote transport give the same answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import lamina
from tests.conftest import ServerThread


def scenario(db: lamina.Client) -> list[Any]:
    rng = np.random.default_rng(11)
    out: list[Any] = []
    col = db.create_collection("c", dim=12, metric="dot")
    ids: list[Any] = [i if i % 4 else f"s{i}" for i in range(300)]
    payloads = [{"g": i % 7, "name": f"n{i}", "f": i / 3} for i in range(300)]
    out.append(col.upsert(ids, rng.standard_normal((300, 12)), payloads))
    queries = rng.standard_normal((6, 12))
    out.append(col.search_batch(queries, k=15, filter={"g": {"$in": [1, 2, 3]}}, with_vector=True))
    out.append(col.search(queries[0], k=40, filter={"f": {"$gte": 20.5}}))
    out.append(col.get(ids[::17]))
    out.append(col.scroll(limit=33, offset=100, filter={"g": {"$ne": 0}}))
    out.append(col.delete(filter={"g": 6}))
    out.append(col.delete(ids=ids[:10]))
    out.append((col.count(), col.count({"g": 2})))
    out.append([(i.name, i.config, i.count) for i in db.collections_info()])
    for bad in (
        lambda: col.upsert([1], np.ones((1, 3))),
        lambda: col.search(np.ones(12), k=0),
        lambda: col.count({"$x": 1}),
    ):
        try:
            bad()
        except lamina.LaminaError as exc:
            out.append((type(exc).__name__, str(exc)))
    return out


def _plain(value: Any) -> Any:
    """Hits and points compare vectors with ==; make them comparable as tuples."""
    if isinstance(value, (lamina.Hit, lamina.Point)):
        vec = None if value.vector is None else value.vector.tobytes()
        score = getattr(value, "score", None)
        return (value.id, score, value.payload, vec)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def test_embedded_and_remote_agree(tmp_path: Path) -> None:
    with lamina.connect(str(tmp_path / "embedded")) as db:
        embedded = _plain(scenario(db))
    srv = ServerThread(tmp_path / "server")
    try:
        with lamina.connect(srv.address) as db:
            remote = _plain(scenario(db))
    finally:
        srv.stop()
    assert embedded == remote
