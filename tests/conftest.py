"""Fixtures: a real gRPC server on a loopback port and real RocksDB in temp dirs.

``db`` is parametrized over both transports, so every API test runs embedded and
remote (qdrant-client's congruence idea).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lamina
from lamina.config import DEFAULT_LIMITS, Limits
from lamina.engine.database import Database
from lamina.server.app import LaminaServer

ROOT = Path(__file__).resolve().parent.parent


class ServerThread:
    """A LaminaServer on its own event loop in a background thread."""

    def __init__(self, data: Path, limits: Limits = DEFAULT_LIMITS, workers: int = 4) -> None:
        self.data = data
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.db = Database(data, limits=limits)
        self.server = LaminaServer(self.db, "127.0.0.1", 0, workers=workers)
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m lamina serve`` as a subprocess, for kill -9 and signal tests."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = data.parent / f"server-{self.port}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lamina", "serve", "--data", str(data), "--port", str(self.port), *extra],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{self.log.read_text()}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log.read_text()}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def terminate(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class Tracked(ServerProcess):
        def __init__(self, data: Path, *extra: str) -> None:
            super().__init__(data, *extra)
            started.append(self)

    yield Tracked
    for proc in started:
        if proc.proc.poll() is None:
            proc.kill()
