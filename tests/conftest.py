"""Fixtures: a real gRPC server on a loopback port and real RocksDB in temp dirs.

``db`` is parametrized over both transports, so every API test runs embedded and
remote (qdrant-client's congruence idea).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import lamina
from lamina.config import DEFAULT_LIMITS, Limits
from lamina.console import Console
from lamina.engine.database import Database
from lamina.server.app import SYNC_SERVER, LaminaServer
from lamina.server.auth import ApiKey
from lamina.testing import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


class ServerThread:
    """A LaminaServer on its own event loop in a background thread."""

    def __init__(
        self,
        data: Path,
        limits: Limits = DEFAULT_LIMITS,
        workers: int = 4,
        keys: Sequence[ApiKey] = (),
        tls: tuple[bytes, bytes] | None = None,
        metrics_port: int | None = None,
        port: int = 0,
        sync_writes: bool = True,
        metrics_key: str | None = None,
        metrics_names: bool = False,
        console: bool = False,
        sample_every: float = 2.0,
        sync_server: bool = SYNC_SERVER,
    ) -> None:
        self.data = data
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.db = Database(data, limits=limits, sync_writes=sync_writes)
        self.server = LaminaServer(
            self.db,
            "127.0.0.1",
            port,
            workers=workers,
            keys=keys,
            tls=tls,
            metrics_port=metrics_port,
            metrics_key=metrics_key,
            metrics_names=metrics_names,
            sync_server=sync_server,
        )
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        self.address = f"127.0.0.1:{self.port}"
        self.console: Console | None = None
        if console:  # the web console on a free port, as `lamina serve` runs it
            self.console = Console(port=0, sample_every=sample_every)
            asyncio.run_coroutine_threadsafe(self.console.start(self.server), self.loop).result(30)

    def stop(self) -> None:
        if self.console is not None:
            asyncio.run_coroutine_threadsafe(self.console.stop(), self.loop).result(30)
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=1), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    srv = ServerThread(tmp_path / "server-data")
    yield srv
    srv.stop()


@pytest.fixture(params=["embedded", "remote"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[lamina.Client]:
    if request.param == "embedded":
        client = lamina.connect(str(tmp_path / "embedded-data"))
        yield client
        client.close()
    else:
        srv = ServerThread(tmp_path / "server-data")
        client = lamina.connect(srv.address)
        yield client
        client.close()
        srv.stop()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class Tracked(ServerProcess):
        def __init__(self, data: Path, *extra: str, ca_cert: Path | None = None) -> None:
            super().__init__(data, *extra, ca_cert=ca_cert)
            started.append(self)

    yield Tracked
    for proc in started:
        if proc.proc.poll() is None:
            proc.kill()
