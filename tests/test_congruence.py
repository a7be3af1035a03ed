"""The same calls on every transport (embedded and remote, sync and async) give the same answers."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

import lamina
from lamina.client.embedded import EmbeddedTransport
from lamina.client.transport import GrpcRequests
from tests.conftest import ServerThread


async def _a(value: Any) -> Any:
    """The result of a sync call, or of an async one awaited: one scenario serves both clients."""
    return await value if inspect.isawaitable(value) else value


async def scenario(db: lamina.Client | lamina.AsyncClient) -> list[Any]:
    rng = np.random.default_rng(11)
    out: list[Any] = []
    col = await _a(db.create_collection("c", dim=12, metric="dot"))
    ids: list[Any] = [i if i % 4 else f"s{i}" for i in range(300)]
    payloads = [{"g": i % 7, "name": f"n{i}", "f": i / 3} for i in range(300)]
    out.append(await _a(col.upsert(ids, rng.standard_normal((300, 12)), payloads)))
    queries = rng.standard_normal((6, 12))
    out.append(await _a(col.search_batch(queries, k=15, filter={"g": {"$in": [1, 2, 3]}}, with_vector=True)))
    out.append(await _a(col.search(queries[0], k=40, filter={"f": {"$gte": 20.5}})))
    out.append(await _a(col.get(ids[::17])))
    out.append(await _a(col.scroll(limit=33, offset=100, filter={"g": {"$ne": 0}})))
    out.append(await _a(col.query(vector=queries[1], k=5, exact=True)))
    out.append(await _a(col.delete(filter={"g": 6})))
    out.append(await _a(col.delete(ids=ids[:10])))
    out.append((await _a(col.count()), await _a(col.count({"g": 2}))))
    text = await _a(db.create_collection("t", embedding="minilm"))  # text in, text out
    docs = ["Prune roses in late winter.", "Tides follow the moon.", "Bake bread at 250 degrees."]
    out.append(await _a(text.add([1, 2, 3], docs, [{"n": 1}, None, {"n": 3}])))
    out.append(await _a(text.search("cutting back roses", k=2)))
    out.append(await _a(text.search_batch(["the sea", "baking"], k=1)))
    out.append(await _a(text.query(text="moon", k=2)))
    out.append(np.round(await _a(text.embed(["roses"])), 5).tolist())
    out.append([(i.name, i.config, i.count) for i in await _a(db.collections_info())])
    out.append(await _a(db.list_collections()))
    for bad in (
        lambda: col.upsert([1], np.ones((1, 3))),
        lambda: col.search(np.ones(12), k=0),
        lambda: col.count({"$x": 1}),
        lambda: db.get_collection("missing"),
    ):
        try:
            await _a(bad())
        except lamina.LaminaError as exc:
            out.append((type(exc).__name__, str(exc)))
        else:  # kept, so a transport that stops validating disagrees (and the check below fails)
            out.append(("accepted", None))
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


async def test_embedded_and_remote_sync_and_async_agree(tmp_path: Path) -> None:
    answers = {}
    with lamina.connect(str(tmp_path / "embedded")) as db:
        answers["embedded"] = _plain(await scenario(db))
    async with await lamina.connect_async(str(tmp_path / "embedded-async")) as adb:
        answers["embedded async"] = _plain(await scenario(adb))
    srv = ServerThread(tmp_path / "server")
    try:
        with lamina.connect(srv.address) as db:
            answers["remote"] = _plain(await scenario(db))
            db.delete_collection("c")
            db.delete_collection("t")
        async with await lamina.connect_async(srv.address) as adb:
            answers["remote async"] = _plain(await scenario(adb))
    finally:
        srv.stop()
    for name, answer in answers.items():
        assert answer == answers["embedded"], name
    # and what they agree on for the bad calls is a refusal of the right kind
    assert [error for error, _ in answers["embedded"][-4:]] == [
        "InvalidArgument",
        "InvalidArgument",
        "InvalidArgument",
        "NotFound",
    ]


def test_every_operation_has_one_engine_form_and_one_grpc_form() -> None:
    """An operation is a method of EmbeddedTransport (engine) and of GrpcRequests (wire),
    with the same parameters: the async transports reuse these, so there is no third form."""

    def operations(cls: type, skip: set[str]) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(fn).parameters)
            for name, fn in vars(cls).items()
            if inspect.isfunction(fn) and not name.startswith("_") and name not in skip
        }

    engine = operations(EmbeddedTransport, {"run", "close"})
    wire = operations(GrpcRequests, {"build"})
    assert engine == wire
    assert len(engine) == 25
