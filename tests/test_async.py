"""The async SDK (``lamina.connect_async``), embedded and over gRPC.

That its answers equal the sync client's is checked in test_congruence; here: it does
not block the event loop, runs calls concurrently, and honours the connection options
(API keys over TLS, deadlines, retries) as the sync client does.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

import lamina
from lamina.testing import free_port
from tests.conftest import ServerThread
from tests.test_auth import Secured
from tests.test_limits import slow_collection

DIM = 16


async def test_embedded_calls_leave_the_event_loop_free(tmp_path: Path) -> None:
    async with await lamina.connect_async(str(tmp_path)) as db:
        col = await db.create_collection("c", dim=DIM, segment_rows=1_000_000)
        rng = np.random.default_rng(0)
        for lo in range(0, 40_000, 10_000):
            await col.upsert(list(range(lo, lo + 10_000)), rng.standard_normal((10_000, DIM)))
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.002)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        start = time.perf_counter()
        hits = await col.search_batch(rng.standard_normal((300, DIM)), k=100, with_payload=False)
        elapsed = time.perf_counter() - start
        task.cancel()
        assert len(hits) == 300 and all(len(h) == 100 for h in hits)
        # the loop kept ticking while the engine worked in its thread (0 ticks if it had blocked)
        assert elapsed > 0.02 and ticks >= 3, (elapsed, ticks)


async def test_remote_calls_run_concurrently_and_match_sync(tmp_path: Path) -> None:
    srv = ServerThread(tmp_path / "data")
    try:
        rng = np.random.default_rng(1)
        queries = rng.standard_normal((40, DIM)).astype(np.float32)
        with lamina.connect(srv.address) as sync_db:
            col = sync_db.create_collection("c", dim=DIM, metric="l2")
            col.upsert(list(range(2000)), rng.standard_normal((2000, DIM)), [{"i": i} for i in range(2000)])
            expected = [[h.id for h in col.search(q, k=7, exact=True)] for q in queries]
        async with await lamina.connect_async(srv.address) as db:
            acol = await db.get_collection("c")
            assert isinstance(acol, lamina.AsyncCollection) and acol.dim == DIM
            results = await asyncio.gather(*(acol.search(q, k=7, exact=True) for q in queries))
            assert [[h.id for h in hits] for hits in results] == expected
            assert results[0][0].payload == {"i": results[0][0].id}
            assert await db.is_serving()
            assert (await db.server_info())["mode"] == "server"
            with pytest.raises(lamina.InvalidArgument, match="dimension"):
                await acol.search(np.ones(DIM + 1), k=3)
    finally:
        srv.stop()


async def test_api_keys_and_tls(tmp_path: Path) -> None:
    secured = Secured(tmp_path)
    try:
        with secured.client(secured.keys["admin"]) as admin:
            admin.create_collection("kb", dim=4).upsert([1, 2], np.eye(2, 4))

        async def connect(key: str | None) -> lamina.AsyncClient:
            return await lamina.connect_async(secured.address, api_key=key, ca_cert=secured.ca_file)

        async with await connect(secured.keys["read"]) as reader:
            col = await reader.get_collection("kb")
            assert [h.id for h in await col.search([1, 0, 0, 0], k=1)] == [1]
            with pytest.raises(lamina.PermissionDenied):
                await col.upsert([3], np.ones((1, 4)))
        async with await connect(None) as anonymous:
            with pytest.raises(lamina.Unauthenticated):
                await anonymous.list_collections()
            assert await anonymous.is_serving()  # the health check needs no key
        async with await lamina.connect_async(secured.address, api_key=secured.keys["read"]) as plain:
            # a TLS server does not answer a plaintext channel
            with pytest.raises(lamina.LaminaError):
                await plain.list_collections()
    finally:
        secured.server.stop()


async def test_deadlines_and_retries(tmp_path: Path) -> None:
    srv = ServerThread(tmp_path / "data", workers=1)
    try:
        with lamina.connect(srv.address) as setup:
            _, queries = slow_collection(setup)
        async with await lamina.connect_async(srv.address, timeout=0.3) as hasty:
            col = await hasty.get_collection("slow")
            with pytest.raises(lamina.DeadlineExceeded):
                await col.search_batch(queries, k=1000, with_payload=False)
    finally:
        srv.stop()
    async with await lamina.connect_async(srv.address, retries=0) as gone:
        assert not await gone.is_serving()

    # a server that is down at first: repeatable requests are sent again until it answers
    port = free_port()
    async with await lamina.connect_async(f"127.0.0.1:{port}", retries=10) as client:
        pending = asyncio.create_task(client.list_collections())
        await asyncio.sleep(0.5)
        assert not pending.done()
        late = ServerThread(tmp_path / "late", port=port)
        try:
            assert await asyncio.wait_for(pending, 60) == []
            async with await lamina.connect_async(f"127.0.0.1:{free_port()}", retries=0) as nobody:
                with pytest.raises(lamina.Unavailable):
                    await nobody.list_collections()
        finally:
            late.stop()


async def test_embedded_options_and_close(tmp_path: Path) -> None:
    with pytest.raises(lamina.InvalidArgument, match="api_key, tls and ca_cert are for servers"):
        await lamina.connect_async(str(tmp_path), api_key="k")
    db = await lamina.connect_async(str(tmp_path))
    col = await db.get_or_create_collection("c", dim=3)
    assert (await db.get_or_create_collection("c", dim=3)).name == "c"
    await col.upsert(["a"], np.ones((1, 3)), [{"x": 1}], tenant=None)
    assert [p.payload for p in await col.get(["a"])] == [{"x": 1}]
    assert repr(col) == "AsyncCollection(name='c', dim=3, metric='cosine')"
    await db.close()
    with pytest.raises(lamina.FailedPrecondition):
        await db.list_collections()
    async with await lamina.connect_async(str(tmp_path)) as again:  # the data directory is free again
        assert await (await again.get_collection("c")).count() == 1
