"""``lamina serve --processes N``: a writer and reader processes on one port (real servers on
loopback, each process also reached directly on its unix socket in the run directory)."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

import lamina
from lamina.client.api import Client
from lamina.client.transport import GrpcTransport
from lamina.config import DEFAULT_LIMITS, ServerConfig
from lamina.cores import cgroup_cpus, usable_cores
from lamina.engine.follower import Follower, JournaledDatabase
from lamina.errors import InvalidArgument, LaminaError
from lamina.server.auth import ApiKey, hash_key, new_key
from lamina.serving import serving_processes
from lamina.testing import ServerProcess, free_port
from lamina.types import CollectionConfig

DIM = 16


def _ready(run: Path, index: int, timeout: float = 90.0, not_pid: int | None = None) -> int:
    """The pid of process ``index`` once it serves (a new one, when ``not_pid`` is given)."""
    deadline = time.monotonic() + timeout
    mark = run / f"process-{index}.ready"
    while time.monotonic() < deadline:
        try:
            pid = int(mark.read_text())
            if pid != not_pid:
                return pid
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"process {index} not ready in {timeout}s")


def _direct(run: Path, index: int, api_key: str | None = None) -> Client:
    """A client of process ``index`` alone (its unix socket), sending ``api_key`` if given."""
    transport = GrpcTransport(f"unix:{run / f'process-{index}.sock'}", timeout=30.0, api_key=api_key)
    return Client(transport, DEFAULT_LIMITS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _start(tmp_path: Path, n: int, *extra: str) -> tuple[ServerProcess, Path, list[int]]:
    run = tmp_path / "run"
    server = ServerProcess(tmp_path / "data", "--processes", str(n), "--run-dir", str(run), *extra)
    return server, run, [_ready(run, i) for i in range(n)]


def test_processes_flag_is_validated(tmp_path: Path) -> None:
    for bad in ("0", "100000"):
        out = subprocess.run(
            [sys.executable, "-m", "lamina", "serve", "--data", str(tmp_path), "--processes", bad],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, out.stderr
        assert "--processes must be between 1 and" in out.stderr


def test_serve_runs_a_process_per_usable_core_by_default(tmp_path: Path) -> None:
    """Without --processes, ``lamina serve`` runs one process per core it may use (its CPU
    affinity, bounded by a cgroup CPU quota: lamina/cores.py); --ray and --read-only run one,
    and refuse an explicit N > 1."""
    cores = usable_cores()
    assert cores == min(len(os.sched_getaffinity(0)), math.ceil(cgroup_cpus() or 1e9))
    run = tmp_path / "run"
    server = ServerProcess(tmp_path / "data", "--run-dir", str(run), processes=None)
    try:
        if cores > 1:
            pids = [_ready(run, i) for i in range(cores)]
            assert len(set(pids)) == cores and not (run / f"process-{cores}.ready").exists()
        else:  # one process: the server itself, no supervisor and no run directory
            assert not run.exists()
        with lamina.connect(server.address) as client:
            client.create_collection("docs", dim=DIM).upsert([1], np.ones((1, DIM), np.float32))
            assert client.get_collection("docs").count() == 1
    finally:
        assert server.terminate() == 0
    defaults = ServerConfig()
    assert defaults.processes is None
    assert serving_processes(defaults) == cores
    assert serving_processes(defaults, "--ray") == serving_processes(defaults, "--read-only") == 1
    assert serving_processes(dataclasses.replace(defaults, processes=1), "--ray") == 1
    with pytest.raises(InvalidArgument, match="--processes 2 cannot be combined with --read-only"):
        serving_processes(dataclasses.replace(defaults, processes=2), "--read-only")
    with pytest.raises(InvalidArgument, match="processes must be at least 1"):
        ServerConfig.from_dict({"processes": 0})


def test_the_processes_hold_their_graphs_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The processes of ``--processes N`` walk one copy of each graph in the page cache
    (LAMINA_GRAPH_MEMORY=shared), not a copy each, unless the environment says otherwise."""
    from lamina.index.graphview import GRAPH_MEMORY_ENV
    from lamina.server.processes import Supervisor

    monkeypatch.delenv(GRAPH_MEMORY_ENV, raising=False)
    supervisor = Supervisor(["serve"], 2, "127.0.0.1", free_port(), 5.0, run=str(tmp_path / "run"))
    assert supervisor.child_env()[GRAPH_MEMORY_ENV] == "shared"
    monkeypatch.setenv(GRAPH_MEMORY_ENV, "private")
    assert supervisor.child_env()[GRAPH_MEMORY_ENV] == "private"


def test_usable_cores_follow_affinity_and_cgroup_quotas(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # docker --cpus 1.5
    assert cgroup_cpus(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus(v1) == 4.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpus(v1) is None
    assert cgroup_cpus(tmp_path / "none") is None
    mine = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(mine)})
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, mine)
    assert usable_cores() == min(len(mine), math.ceil(cgroup_cpus() or 1e9))


def _counted(port: int, method: str) -> float:
    """The writer's /metrics count of successful ``method`` calls (summed over processes)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    line = f'lamina_requests_total{{code="OK",method="{method}"}} '
    return sum(float(x.removeprefix(line)) for x in text.splitlines() if x.startswith(line))


def test_writes_through_one_process_are_read_at_once_through_another(tmp_path: Path) -> None:
    metrics_port = free_port()
    server, run, pids = _start(tmp_path, 2, "--metrics-port", str(metrics_port))
    rng = np.random.default_rng(7)
    try:
        writer, reader = _direct(run, 0), _direct(run, 1)
        assert len(set(pids)) == 2
        # admin through the reader is forwarded to the writer; the reader follows the catalog
        reader.create_collection("docs", dim=DIM, segment_rows=256)
        assert writer.list_collections() == reader.list_collections() == ["docs"]
        w, r = writer.get_collection("docs"), reader.get_collection("docs")
        vectors = rng.standard_normal((600, DIM)).astype(np.float32)
        for i in range(0, 600, 20):  # alternate: write through one, read through the other at once
            src, dst = (w, r) if i % 40 else (r, w)
            src.upsert(list(range(i, i + 20)), vectors[i : i + 20], [{"n": j} for j in range(i, i + 20)])
            assert dst.count() == i + 20
            hit = dst.search(vectors[i + 19], k=1)[0]
            assert (hit.id, hit.payload) == (i + 19, {"n": i + 19})
        # seals and merges made by the writer's optimizer are followed
        r.optimize()
        assert w.info().status.segments >= 1
        w.delete([0, 1, 2])
        r.upsert([3], vectors[10:11])
        assert r.count() == w.count() == 597
        assert [h.id for h in r.search(vectors[10], k=2)] in ([3, 10], [10, 3])
        assert r.get([0, 3])[0].id == 3 and len(r.get([0, 1, 2])) == 0
        # bad input is refused the same way by both processes, and changes nothing
        errors = []
        for col in (w, r):
            with pytest.raises(InvalidArgument) as exc:
                col.upsert([9999], np.zeros((1, DIM + 1), np.float32))
            errors.append(str(exc.value))
        assert errors[0] == errors[1] and "dim" in errors[0]
        assert r.count() == 597
        # the writer's metrics count the requests of every process
        before = _counted(metrics_port, "Points/Count")
        for col, times in ((w, 3), (r, 4)):
            for _ in range(times):
                col.count()
        assert _counted(metrics_port, "Points/Count") - before == 7
        # tenants: a multi-tenant collection is followed too
        tenants = reader.create_collection("tenants", dim=DIM, multi_tenant=True)
        tenants.upsert([1, 2], vectors[:2], tenant="acme")
        assert reader.get_collection("tenants").count(tenant="acme") == 2
        assert tenants.search(vectors[1], k=5, tenant="acme")[0].id == 2
        # a collection dropped through the writer leaves the reader
        writer.delete_collection("docs")
        writer.delete_collection("tenants")
        assert reader.list_collections() == []
        # the shared port reaches the processes too
        with lamina.connect(server.address) as client:
            assert client.list_collections() == []
    finally:
        assert server.terminate() == 0
    assert not any(_alive(pid) for pid in pids)


def test_keys_and_limits_are_checked_alike_by_every_process(tmp_path: Path) -> None:
    """A reader answers reads under the server's keys and limits itself and forwards writes
    with the caller's key: each process refuses the same request with the same status and
    words, and a write refused through the reader changes nothing."""
    keys = {role: new_key() for role in ("read", "write", "admin")}
    config = tmp_path / "lamina.toml"
    config.write_text(
        "\n\n".join(ApiKey(f"{role}-key", hash_key(key), role).to_toml() for role, key in keys.items())
    )
    server, run, pids = _start(tmp_path, 2, "--config", str(config), "--limit", "max_k=5")

    def direct(index: int, role: str | None) -> Client:
        return _direct(run, index, role and keys[role])

    try:
        with pytest.raises(lamina.PermissionDenied, match="needs admin"):
            direct(1, "write").create_collection("docs", dim=DIM)  # forwarded, refused by the writer
        direct(1, "admin").create_collection("docs", dim=DIM)
        vectors = np.random.default_rng(3).standard_normal((8, DIM)).astype(np.float32)
        direct(1, "write").get_collection("docs").upsert(list(range(8)), vectors)
        refused: dict[str, list[tuple[str, str]]] = {}
        for index in (0, 1):
            seen = refused.setdefault("a read without a key", [])
            with pytest.raises(LaminaError) as exc:
                direct(index, None).get_collection("docs")
            seen.append((type(exc.value).__name__, str(exc.value)))
            reader = direct(index, "read").get_collection("docs")
            assert reader.search(vectors[2], k=5)[0].id == 2  # read key, k within the limit
            with pytest.raises(InvalidArgument) as exc:
                reader.search(vectors[2], k=6)  # over --limit max_k=5
            refused.setdefault("k over max_k", []).append((type(exc.value).__name__, str(exc.value)))
            with pytest.raises(LaminaError) as exc:
                reader.upsert([100 + index], vectors[:1])  # a read key may not write
            refused.setdefault("upsert with a read key", []).append(
                (type(exc.value).__name__, str(exc.value))
            )
        for what, (on_writer, on_reader) in refused.items():
            assert on_writer == on_reader, what
        assert refused["a read without a key"][0][0] == "Unauthenticated"
        assert "exceeds the maximum of 5" in refused["k over max_k"][0][1]
        assert refused["upsert with a read key"][0][0] == "PermissionDenied"
        assert direct(1, "read").get_collection("docs").count() == 8  # the refused writes changed nothing
    finally:
        assert server.terminate() == 0
    assert not any(_alive(pid) for pid in pids)


def test_a_follower_sees_every_write_across_the_writers_log_switches(tmp_path: Path) -> None:
    """A seal flushes RocksDB's memtables, which switches its write-ahead log; a secondary
    instance's plain catch-up across such a switch missed rows (stop 28's CI failure; this
    test failed 3 runs in 3 with the plain catch-up)."""
    run = tmp_path / "run"
    run.mkdir()
    writer = JournaledDatabase(tmp_path / "data", run)
    follower = None
    try:
        docs = writer.create_collection("docs", CollectionConfig(dim=DIM, segment_rows=256))
        follower = Follower(tmp_path / "data", run)
        vectors = np.random.default_rng(3).standard_normal((1200, DIM)).astype(np.float32)
        for i in range(0, 1200, 40):
            docs.upsert(list(range(i, i + 40)), vectors[i : i + 40], [{"n": j} for j in range(i, i + 40)])
            if i % 120 == 80:
                docs.optimize()  # seals: the writer flushes its memtables, a new log begins
            seen = follower.get_collection("docs")
            assert seen.count() == docs.count() == i + 40
            hit = seen.search(vectors[i + 39], k=1)[0]
            assert (hit.id, hit.payload) == (i + 39, {"n": i + 39})
        assert follower.get_collection("docs").info().status.segments >= 1
    finally:
        if follower is not None:
            follower.close()
        writer.close()


def test_killed_processes_are_restarted_and_no_acknowledged_write_is_lost(tmp_path: Path) -> None:
    server, run, pids = _start(tmp_path, 2)
    try:
        with lamina.connect(server.address) as setup:
            setup.create_collection("load", dim=DIM)
        acked: list[int] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def load(worker: int) -> None:
            rng = np.random.default_rng(worker)
            # the SDK's default retries (3, ~0.35 s of back-off in all): a client of the process that
            # died is sent to another one by its retry, and a reader holds a write until the
            # restarted writer (seconds: it imports numpy, numba and grpc first) takes it
            with lamina.connect(server.address) as client:
                col = client.get_collection("load")
                i = worker * 1_000_000
                while not stop.is_set():
                    try:
                        col.upsert(list(range(i, i + 5)), rng.standard_normal((5, DIM)).astype(np.float32))
                        acked.extend(range(i, i + 5))
                        col.search(rng.standard_normal(DIM).astype(np.float32), k=3)
                    except (grpc.RpcError, LaminaError) as exc:  # a retried request that still failed
                        failures.append(exc)  # (the SDK raises typed errors: a thread must not die quietly)
                        return
                    i += 5

        threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        os.kill(pids[1], 9)  # the reader, under load
        new = _ready(run, 1, not_pid=pids[1])
        assert new != pids[1] and _alive(new)
        time.sleep(1.0)
        os.kill(pids[0], 9)  # the writer: forwarded writes are retried until it is back
        writer = _ready(run, 0, not_pid=pids[0])
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(60)
        assert acked and not failures, failures
        assert not any(t.is_alive() for t in threads)
        with lamina.connect(server.address) as client:
            col = client.get_collection("load")
            assert col.count() == len(acked)
            step = DEFAULT_LIMITS.max_batch  # a get takes at most this many ids
            assert sum(len(col.get(acked[i : i + step])) for i in range(0, len(acked), step)) == len(acked)
        pids[:2] = [writer, new]
        assert server.log.read_text().count("exited with signal 9; starting it again") == 2
    finally:
        assert server.terminate() == 0  # SIGTERM to the supervisor stops every process
    assert not any(_alive(pid) for pid in pids)
