"""Helpers for tests, benchmarks and harnesses that drive a real ``lamina serve`` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m lamina serve`` as a subprocess, for kill -9 and signal tests."""

    def __init__(
        self,
        data: Path,
        *extra: str,
        port: int | None = None,
        ca_cert: Path | None = None,
        global_args: tuple[str, ...] = (),
        processes: int | None = 1,
    ) -> None:
        """``processes``: ``--processes`` (None: leave the flag out, the server's default of
        a process per core). One by default: what most tests drive (signals, TLS, keys,
        kill -9) is the process that serves; several are driven by test_processes and the
        multi-process runs of the crash, fuzz and load tests."""
        self.ca_cert = ca_cert  # the server speaks TLS with a certificate from this CA
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = data.parent / f"server-{self.port}.log"
        if not {"--http-port", "--no-console"} & set(extra):
            extra = (*extra, "--no-console")  # the console's default port would be shared by every server
        if processes is not None and "--processes" not in extra:
            extra = (*extra, "--processes", str(processes))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lamina",
                *global_args,
                "serve",
                "--data",
                str(data),
                "--port",
                str(self.port),
                *extra,
            ],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a process group of its own: kill(group=True) takes its children too
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 180.0) -> None:
        # a server with --ray starts a local Ray first: 30-40 s on a loaded 2-core machine
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        channel = (
            grpc.secure_channel(self.address, grpc.ssl_channel_credentials(self.ca_cert.read_bytes()))
            if self.ca_cert is not None
            else grpc.insecure_channel(self.address)
        )
        with channel:
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

    def kill(self, group: bool = False) -> None:
        """SIGKILL the server; ``group``: with every process it started (its Ray, the
        processes of ``--processes N``), as when its machine goes down, and wait until they
        are all gone (so a restart finds the data directory's lock free)."""
        import psutil

        started = psutil.Process(self.proc.pid).children(recursive=True) if group else []
        if group:
            os.killpg(self.proc.pid, 9)
        else:
            self.proc.kill()
        self.proc.wait(30)
        deadline = time.monotonic() + 30
        for proc in started:
            while time.monotonic() < deadline:
                try:
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        break
                except psutil.NoSuchProcess:
                    break
                time.sleep(0.01)

    def terminate(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)
