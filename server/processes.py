"""``lamina serve --processes N``: one server on every core.

The supervisor (the ``lamina serve`` process itself) starts N server processes and keeps
them running:

- process 0, the *writer*: today's server over a ``JournaledDatabase`` (engine/follower.py);
  it alone writes the data directory, runs the optimizer, serves the web console and
  the metrics endpoint;
- processes 1..N-1, the *readers*: servers over a ``Follower`` of the same directory. They
  answer reads themselves and forward every other call (writes, admin, snapshots) to the
  writer over a unix socket in the run directory, with the caller's metadata (API key)
  and remaining deadline, so every call is checked by the one process that carries it
  out, and a refused call is refused identically whichever process took it.

All bind the same port with SO_REUSEPORT: the kernel spreads connections over them. A
process that dies is started again (logged); SIGTERM or SIGINT to the supervisor stops
them all (each drains its requests in flight), and a process whose supervisor dies is
sent SIGTERM by the kernel (PR_SET_PDEATHSIG), so none is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message_factory import GetMessageClass

from lamina.cores import usable_cores
from lamina.errors import FailedPrecondition, InvalidArgument
from lamina.proto.lamina.v1 import collections_pb2 as cpb
from lamina.proto.lamina.v1 import info_pb2 as ipb
from lamina.proto.lamina.v1 import points_pb2 as ppb
from lamina.proto.lamina.v1 import search_pb2 as spb
from lamina.server.metrics import MULTIPROCESS_ENV
from lamina.server.network import host_port

#: how a process holds its graphs (index/graphview.py ``GRAPH_MEMORY_ENV``; the server speaks to
#: the engine, not to the index, so the name is repeated here and tests hold the two together)
GRAPH_MEMORY_ENV = "LAMINA_GRAPH_MEMORY"

log = logging.getLogger("lamina.server")

#: calls a reader answers itself; every other one is forwarded to the writer
READS = frozenset(
    {
        "Search/Search",
        "Search/SearchBatch",
        "Search/Query",
        "Search/Embed",
        "Points/Get",
        "Points/Count",
        "Points/Scroll",
        "Points/ListTenants",
        "Collections/Get",
        "Collections/List",
        "Collections/ListSnapshots",
        "Info/GetInfo",
    }
)
#: metadata gRPC sets itself, not forwarded
_TRANSPORT_KEYS = frozenset({"user-agent", "content-type", "te", "grpc-timeout", "grpc-accept-encoding"})
#: carries the caller's address to the writer (admission control counts callers by it)
PEER_KEY = "lamina-peer"
#: how many times more processes than cores ``--processes`` accepts
MAX_PER_CORE = 4
#: a process that dies this soon after it started counts as failing to start
START_SECONDS = 10.0
#: ... and this many such deaths in a row stop the server
START_FAILURES = 5
PR_SET_PDEATHSIG = 1


def max_processes() -> int:
    """The largest ``--processes`` accepted: ``MAX_PER_CORE`` per usable core."""
    return MAX_PER_CORE * usable_cores()


def check_processes(n: int) -> int:
    """``n`` if it is a valid ``--processes``; InvalidArgument naming the flag otherwise."""
    limit = max_processes()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise InvalidArgument(
            f"--processes must be between 1 and {limit} ({MAX_PER_CORE} per core on this machine's "
            f"{usable_cores()} usable cores), got {n}; leave it out to serve on every core"
        )
    return n


def socket_path(run: Path, index: int) -> Path:
    """The unix socket process ``index`` also listens on (0: the writer, where readers
    forward writes)."""
    return run / f"process-{index}.sock"


@dataclass(frozen=True)
class ProcessRole:
    """What one process of a multi-process server is: its index (0: the writer) and the
    run directory that holds the sockets and journals."""

    index: int
    run: Path

    @property
    def writer(self) -> bool:
        return self.index == 0

    @property
    def address(self) -> str:
        """This process's own unix socket address (gRPC)."""
        return f"unix:{socket_path(self.run, self.index)}"

    def announce(self) -> None:
        """Tell the supervisor this process serves."""
        (self.run / f"process-{self.index}.ready").write_text(str(os.getpid()))

    @staticmethod
    def die_with_parent() -> None:
        """Ask the kernel to send SIGTERM to this process when its supervisor dies (Linux)."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # not Linux: the supervisor's SIGTERM still stops it
            pass


def _methods() -> dict[str, tuple[str, Any]]:
    """``Service/Method`` -> (the full gRPC method path, the response parser)."""
    found = {}
    for module in (cpb, ppb, spb, ipb):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"{service.name}/{method.name}"] = (
                    f"/{service.full_name}/{method.name}",
                    GetMessageClass(method.output_type).FromString,
                )
    return found


#: how long a forwarded call waits for a writer that is not reachable (restarting after it
#: died: it imports numpy, numba and grpc and opens the data directory first, 2-10 s here)
#: before it is refused UNAVAILABLE, at most the caller's deadline
WRITER_WAIT_S = 30.0
#: the reconnect back-off of a reader's channel to the writer: a unix socket is cheap to try,
#: and grpc's default (1 s growing to 120 s) would leave a restarted writer unseen for seconds
_WRITER_BACKOFF = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]


class Forwarder:
    """A reader's channel to the writer: sends a call on with the caller's metadata and
    deadline, and answers with the writer's response or status. While the writer is not
    reachable (restarting), a call waits for it (``WRITER_WAIT_S``, within the caller's
    deadline), so a client sees a slower write, not an error."""

    def __init__(self, run: Path) -> None:
        self.target = f"unix:{socket_path(run, 0)}"
        self._methods = _methods()
        self._channel: grpc.aio.Channel | None = None

    def forwards(self, path: str) -> bool:
        return path not in READS

    async def __call__(self, path: str, raw: bytes, context: Any) -> Any:
        if self._channel is None:  # made on the loop that serves
            self._channel = grpc.aio.insecure_channel(
                self.target,
                options=[
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.max_send_message_length", -1),
                    *_WRITER_BACKOFF,
                ],
            )
        full, parse = self._methods[path]
        await self._writer_ready(self._channel, context.time_remaining())
        metadata = [
            (k, v)
            for k, v in context.invocation_metadata()
            if not k.startswith(":") and k not in _TRANSPORT_KEYS
        ]
        metadata.append((PEER_KEY, context.peer()))
        try:
            answer = await self._channel.unary_unary(full)(
                raw, timeout=context.time_remaining(), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
                details = "the writer process of this server is restarting: send the request again"
            await context.abort(exc.code(), details, trailing_metadata=exc.trailing_metadata() or ())
            raise AssertionError("unreachable") from exc  # abort raises
        return parse(answer)

    @staticmethod
    async def _writer_ready(channel: grpc.aio.Channel, remaining: float | None) -> None:
        """Wait until ``channel`` reaches the writer, for at most ``WRITER_WAIT_S`` or the
        caller's ``remaining`` seconds; the call that follows fails if it still cannot."""
        if channel.get_state() is grpc.ChannelConnectivity.READY:
            return
        wait = WRITER_WAIT_S if remaining is None else max(0.0, min(remaining, WRITER_WAIT_S))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(channel.channel_ready(), wait)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def forwarded_peer(context: Any) -> str:
    """The caller's address: that of the connection, or for a call a reader forwarded over
    the writer's unix socket (only processes of this server reach it), the reader's caller."""
    peer: str = context.peer()
    if peer.startswith("unix:"):
        for key, value in context.invocation_metadata():
            if key == PEER_KEY:
                return str(value)
    return peer


# ---------------------------------------------------------------- supervisor
def _check_port(host: str, port: int) -> int:
    """``port``, or a free one for 0; FailedPrecondition when another program holds it
    (the servers bind it with SO_REUSEPORT, which would otherwise share it with another
    server of the same user)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot serve on {host_port(host, port)}: {exc.strerror} (another program holds the port?); "
                "stop it or pick another --port"
            ) from None
        return int(probe.getsockname()[1])


class Supervisor:
    """Runs the N processes of ``lamina serve --processes N`` (see the module's doc)."""

    def __init__(
        self,
        argv: Sequence[str],
        processes: int,
        host: str,
        port: int,
        grace: float,
        run: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.n = check_processes(processes)
        self.host = host
        self.port = _check_port(host, port)
        self.grace = grace
        #: the sockets, journals and ready marks of the processes: a new private folder, or ``run``
        self.run = Path(tempfile.mkdtemp(prefix="lamina-run-")) if run is None else Path(run)
        self._own_run = run is None
        if run is not None:
            try:
                self.run.mkdir(mode=0o700, parents=True, exist_ok=True)
                for stale in self.run.glob("process-*"):
                    stale.unlink()
                for stale in self.run.glob("journal-*"):
                    stale.unlink()
                (self.run / "catalog").unlink(missing_ok=True)
                shutil.rmtree(self.run / "metrics", ignore_errors=True)
            except OSError as exc:
                raise FailedPrecondition(f"cannot use --run-dir {run}: {exc.strerror}") from None
        (self.run / "metrics").mkdir(exist_ok=True)
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.failures = 0
        self.stopping = False

    def _spawn(self, index: int) -> None:
        (self.run / f"process-{index}.ready").unlink(missing_ok=True)
        args = [sys.executable, "-m", "lamina", *self.argv]
        args += ["--port", str(self.port), "--process-index", str(index), "--run-dir", str(self.run)]
        child = subprocess.Popen(args, env=self.child_env())
        self.children[index] = child
        self.started[index] = time.monotonic()
        log.info("process %d (%s) started: pid %d", index, "writer" if index == 0 else "reader", child.pid)

    def child_env(self) -> dict[str, str]:
        """The environment of a process: this one's, the folder of its request counts, and its
        graphs held shared (one page-cache copy for all processes, not one each; see
        index/graphview.py), unless LAMINA_GRAPH_MEMORY asks for private copies."""
        env = dict(os.environ, **{MULTIPROCESS_ENV: str(self.run / "metrics")})
        env.setdefault(GRAPH_MEMORY_ENV, "shared")
        return env

    def _wait_ready(self, index: int, timeout: float = 600.0) -> bool:
        """Wait until process ``index`` serves; False if it exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            if (self.run / f"process-{index}.ready").exists():
                return True
            if self.children[index].poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def serve(self) -> int:
        """Run until SIGTERM or SIGINT; the exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        log.info(
            "serving on %s with %d processes (1 writer, %d readers; run directory %s)",
            host_port(self.host, self.port),
            self.n,
            self.n - 1,
            self.run,
        )
        try:
            self._spawn(0)
            if not self._wait_ready(0):
                if self.stopping:
                    return 0
                log.error("the writer process failed to start (its log above says why)")
                return self.children[0].wait() or 1
            for index in range(1, self.n):
                self._spawn(index)
            while not self.stopping:
                time.sleep(0.1)
                for index, child in list(self.children.items()):
                    code = child.poll()
                    if code is None or self.stopping:
                        continue
                    quick = time.monotonic() - self.started[index] < START_SECONDS
                    self.failures = self.failures + 1 if quick else 0
                    log.warning(
                        "process %d (pid %d) exited with %s; starting it again",
                        index,
                        child.pid,
                        f"signal {-code}" if code < 0 else f"status {code}",
                    )
                    if self.failures >= START_FAILURES:
                        log.error("processes keep dying at start (%d in a row): stopping", self.failures)
                        return 1
                    self._spawn(index)
            return 0
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        """SIGTERM every process (readers first, the writer last), wait for them to drain,
        SIGKILL any left after the grace period, and remove the run directory."""
        log.info("stopping %d process(es)", len(self.children))
        order = sorted(self.children, reverse=True)
        for index in order:
            if self.children[index].poll() is None:
                self.children[index].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 10.0
        for index in order:
            child = self.children[index]
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("process %d (pid %d) did not stop in time: killing it", index, child.pid)
                child.kill()
                child.wait()
        if self._own_run:
            shutil.rmtree(self.run, ignore_errors=True)
        log.info("all processes stopped")
