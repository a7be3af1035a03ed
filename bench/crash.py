"""Crash harness: SIGKILL a ``lamina serve`` process at random moments and check what survives.

``python -m bench crash --cycles 20`` (CI runs 3 cycles through tests/test_crash.py; the
second cycle of every four aims its kill at a running snapshot, the third at a merge
growing a segment's graph, so CI's run has one of each).

Each cycle starts the server on the same data directory, runs a writer (upserts of new
and existing ids, deletes by id and by filter, optimize calls that seal and compact)
and a snapshot taker against it, and kills the server with SIGKILL after a random
delay: during ingest, while a segment is sealed and indexed, while a merge grows a
segment's graph, during compaction or during a snapshot. The writer keeps a model of every acknowledged write. After the
restart the harness checks that

* every acknowledged point is there with identical vector bytes and payload, and the
  request in flight at the kill was applied whole or not at all;
* the indexes agree with storage: each checked vector's self-query returns it first
  (through the index tier and exactly), and filtered counts over payload indexes match;
* the last acknowledged snapshot (of this cycle or an earlier one) restores and holds the
  points it reported, and a snapshot interrupted by the kill left nothing behind;
* the writer and the snapshot taker ran until the kill: an error that stopped either
  before it (a timeout, a refused request, a bug in the harness) fails the run;
* the server serves (a write and a read after the checks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import lamina
from lamina.client.api import Client
from lamina.client.transport import GrpcTransport
from lamina.config import DEFAULT_LIMITS
from lamina.testing import ServerProcess

DIM = 16
COLLECTION = "crash"
TAGS = ("red", "green", "blue")
Model = dict[Any, tuple[bytes, dict[str, Any]]]


@dataclass
class Tally:
    """What the harness did and checked, over all cycles."""

    cycles: int = 0
    kills: int = 0
    acked_requests: int = 0
    points_checked: int = 0
    in_flight_applied: int = 0
    in_flight_not_applied: int = 0
    snapshots_restored: int = 0
    events: Counter[str] = field(default_factory=Counter)  # what the server was doing at each kill

    def line(self) -> str:
        return (
            f"{self.cycles} cycles, {self.kills} SIGKILLs survived, {self.acked_requests} acknowledged requests, "
            f"{self.points_checked} point checks, in-flight request applied {self.in_flight_applied} / "
            f"not applied {self.in_flight_not_applied}, {self.snapshots_restored} snapshots restored; "
            f"killed during: {dict(self.events)}"
        )


class Writer:
    """One writer thread over gRPC; ``model`` holds exactly what was acknowledged."""

    def __init__(self, col: lamina.Collection, model: Model, seed: int, next_id: int) -> None:
        self.col = col
        self.model = model
        self.rng = np.random.default_rng(seed)
        self.next_id = next_id
        self.acked = 0
        self.pending: Model | None = None  # the state had the request in flight been applied
        self.error: BaseException | None = None  # what stopped it (the kill, or a failure before it)
        self.stopped_at = 0.0  # time.monotonic() when it stopped
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _step(self) -> tuple[Any, Model]:
        """Choose a request; return a function sending it and the model after it."""
        roll = self.rng.random()
        after = dict(self.model)
        existing = list(self.model)
        if roll < 0.65 or len(existing) < 100:
            n = int(self.rng.integers(20, 80))
            fresh = [self.next_id + i for i in range(n)]
            self.next_id += n
            if existing and self.rng.random() < 0.5:  # replace some points: tombstones, compaction
                fresh[: n // 3] = [existing[int(i)] for i in self.rng.integers(0, len(existing), n // 3)]
                fresh = list(dict.fromkeys(fresh))
            ids: list[Any] = [f"s{i}" if isinstance(i, int) and i % 5 == 0 else i for i in fresh]
            vectors = self.rng.standard_normal((len(ids), DIM)).astype(np.float32)
            # half unit length, as real embeddings are: a seal drops their vectors from RocksDB
            # (the segment holds the one copy); the others stay there (see Segment.stored_vectors)
            unit = self.rng.random(len(ids)) < 0.5
            vectors[unit] /= np.linalg.norm(vectors[unit], axis=1, keepdims=True)
            payloads = [
                {"batch": self.acked, "tag": TAGS[int(self.rng.integers(0, 3))], "n": {"i": j}}
                for j in range(len(ids))
            ]
            for pid, vec, pay in zip(ids, vectors, payloads, strict=True):
                after[pid] = (vec.tobytes(), pay)
            return lambda: self.col.upsert(ids, vectors, payloads), after
        if roll < 0.8:
            victims = [existing[int(i)] for i in self.rng.integers(0, len(existing), 15)]
            for pid in victims:
                after.pop(pid, None)
            return lambda: self.col.delete(ids=list(dict.fromkeys(victims))), after
        if roll < 0.9:
            batch = int(self.model[existing[int(self.rng.integers(0, len(existing)))]][1]["batch"])
            flt = {"batch": batch, "tag": {"$in": ["red", "blue"]}}
            for pid, (_, pay) in self.model.items():
                if pay["batch"] == batch and pay["tag"] in ("red", "blue"):
                    after.pop(pid)
            return lambda: self.col.delete(filter=flt), after
        return lambda: self.col.optimize(timeout=30.0), after  # seal now, compact, merge

    def _run(self) -> None:
        while True:
            send, after = self._step()
            self.pending = after
            try:
                send()
            except BaseException as exc:  # any failure stops it: judged by the harness
                # after the kill the server is gone and ``pending`` may or may not have been applied;
                # a failure before the kill is a bug the harness reports (see ``check_stopped_by_kill``)
                self.error, self.stopped_at = exc, time.monotonic()
                return
            self.model.clear()
            self.model.update(after)
            self.pending = None
            self.acked += 1


def check_stopped_by_kill(
    name: str, thread: threading.Thread, error: BaseException | None, stopped_at: float, killed_at: float
) -> None:
    """A client thread must have run until the kill and stopped because of it."""
    if thread.is_alive():
        raise AssertionError(f"the {name} was still running 60 s after the kill")
    if error is None or stopped_at < killed_at:
        raise AssertionError(f"the {name} stopped before the kill: {error!r}")


def kill_during_snapshot(server: ServerProcess, acked: list[Any], timeout: float = 20.0) -> float | None:
    """Once a snapshot of this cycle was acknowledged (``acked`` not empty, so one can be
    restored), SIGKILL the server as soon as its log shows another started and not finished,
    and return when; None if none was seen in ``timeout`` seconds (the server still runs)."""
    return kill_during(server, "snapshot", lambda: bool(acked), timeout)


def kill_during(
    server: ServerProcess, doing: str, ready: Any = lambda: True, timeout: float = 20.0
) -> float | None:
    """SIGKILL the server as soon as its log shows ``doing`` (a name ``in_progress`` gives,
    or part of one: "snapshot", "graph growth") started and not finished, once ``ready()``;
    return when, or None if it was not seen in ``timeout`` seconds (the server still runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready() and doing in in_progress(server.log.read_text()):
            killed_at = time.monotonic()
            server.kill(group=True)  # the server and its processes, if any
            return killed_at
        time.sleep(0.0005)
    return None


def read_state(col: lamina.Collection) -> Model:
    state: Model = {}
    offset = None
    while True:
        points, offset = col.scroll(limit=2000, offset=offset, with_vector=True)
        for p in points:
            state[p.id] = (p.vector.tobytes(), p.payload)  # type: ignore[union-attr]
        if offset is None:
            return state


def in_progress(log: str) -> str:
    """What the server was doing when it was killed, from the start and end lines it logs."""
    last: dict[str, int] = {}
    growing = False  # the last seal grows a segment's graph (see engine/optimizer/build.py)
    for n, line in enumerate(log.splitlines()):
        message = line.split(": ", 1)[-1]
        for marker in (
            "sealing ",
            "sealed ",
            "compacting ",
            "rewrote ",
            "merging ",
            "merged ",
            "taking snapshot ",
            "snapshot ",
        ):
            if message.startswith(marker):
                last[marker] = n
                growing = " into segment " in message if marker == "sealing " else growing
    doing = [
        name
        for name, start, end in (
            ("seal + graph growth" if growing else "seal + index build", "sealing ", "sealed "),
            ("compaction", "compacting ", "rewrote "),
            ("merge (graph growth)", "merging ", "merged "),
            ("snapshot", "taking snapshot ", "snapshot "),
        )
        if last.get(start, -1) > last.get(end, -1)
    ]
    return " + ".join(doing) or "ingest (optimizer idle)"


def verify(
    address: str, model: Model, pending: Model | None, tally: Tally, workdir: Path, snapshot: Any
) -> None:
    with lamina.connect(address, timeout=120) as client:
        col = client.get_collection(COLLECTION)
        state = read_state(col)
        if state == model:
            tally.in_flight_not_applied += pending is not None
        elif pending is not None and state == pending:
            tally.in_flight_applied += 1
            model.clear()
            model.update(pending)
        else:
            missing = [pid for pid in model if pid not in state][:5]
            changed = [pid for pid in model if pid in state and state[pid] != model[pid]][:5]
            extra = [pid for pid in state if pid not in model][:5]
            raise AssertionError(
                f"state after restart matches neither the acknowledged writes nor them plus the request "
                f"in flight: missing {missing}, changed {changed}, unexpected {extra}"
            )
        assert col.count() == len(model), "count disagrees with the stored points"
        for tag in TAGS:  # payload indexes agree with the payloads
            want = sum(1 for _, pay in model.values() if pay["tag"] == tag)
            assert col.count(filter={"tag": tag}) == want, f"filtered count of tag={tag} is wrong"
        ids = list(model)
        sample = ids if len(ids) <= 400 else random.Random(len(ids)).sample(ids, 400)
        if sample:
            queries = np.stack([np.frombuffer(model[pid][0], dtype=np.float32) for pid in sample])
            for exact in (False, True):
                results = col.search_batch(queries, k=1, with_payload=False, exact=exact)
                wrong = [
                    pid for pid, hits in zip(sample, results, strict=True) if not hits or hits[0].id != pid
                ]
                assert len(wrong) <= (0 if exact else len(sample) // 100), (
                    f"self-query ({'exact' if exact else 'index'}) did not return {wrong[:5]} first"
                )
        tally.points_checked += len(state)
        col.upsert(["after-restart"], np.ones((1, DIM), np.float32), [{"batch": -1, "tag": "none", "n": {}}])
        assert col.get(["after-restart"])[0].payload == {"batch": -1, "tag": "none", "n": {}}
        col.delete(ids=["after-restart"])
    leftovers = list((workdir / "data" / "snapshots").glob("*/.tmp-*"))
    assert not leftovers, f"an interrupted snapshot was not cleaned up at restart: {leftovers}"
    if snapshot is not None:
        target = workdir / f"restore-{tally.cycles}"
        info = lamina.restore_snapshot(snapshot.path, target)
        assert info.count == snapshot.points, "a restored snapshot lost points"
        tally.snapshots_restored += 1


def through_reader(run: Path, stack: contextlib.ExitStack, timeout: float = 60.0) -> Client:
    """A client of the first reader process of ``lamina serve --processes N`` alone (its unix
    socket in the run directory), once it serves."""
    deadline = time.monotonic() + timeout
    while not (run / "process-1.ready").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"reader process not ready in {timeout:.0f} s")
        time.sleep(0.05)
    client = Client(GrpcTransport(f"unix:{run / 'process-1.sock'}", timeout=30.0), DEFAULT_LIMITS)
    stack.callback(client.close)
    return client


def run(
    cycles: int, seed: int = 0, workdir: Path | None = None, log: Any = print, processes: int = 1
) -> Tally:
    """Run ``cycles`` start / write / SIGKILL / restart / verify cycles against ``lamina serve
    --processes processes`` (each kill takes every process, as a machine going down does);
    raise on the first failure."""
    rng = random.Random(seed)
    tmp = tempfile.TemporaryDirectory(prefix="lamina-crash-") if workdir is None else None
    root = Path(tmp.name) if tmp is not None else workdir
    assert root is not None
    data = root / "data"
    flags: tuple[str, ...] = ("--processes", str(processes))
    if processes > 1:
        flags += ("--run-dir", str(root / "run"))
    model: Model = {}
    tally = Tally()
    next_id = 0
    last_snapshot: Any = None  # the last acknowledged snapshot, of any cycle so far
    try:
        for cycle in range(cycles):
            server = ServerProcess(data, *flags)
            try:
                with lamina.connect(server.address, timeout=30) as client, contextlib.ExitStack() as stack:
                    if COLLECTION not in client.list_collections():
                        client.create_collection(
                            COLLECTION,
                            dim=DIM,
                            metric="cosine",
                            segment_rows=300,
                            payload_index={"tag": "keyword", "batch": "int"},
                        )
                    col = client.get_collection(COLLECTION)
                    if processes > 1:  # write through a reader: it forwards every write to the writer
                        col = through_reader(root / "run", stack).get_collection(COLLECTION)
                    writer = Writer(col, model, seed * 1000 + cycle, next_id)
                    snapshots: list[Any] = []
                    snap_failure: list[Any] = [None, 0.0]  # (error, when) that stopped the snapshot taker

                    def take_snapshots(
                        col: lamina.Collection = col,
                        snapshots: list[Any] = snapshots,
                        snap_failure: list[Any] = snap_failure,
                    ) -> None:
                        while True:
                            time.sleep(rng.uniform(0.2, 0.8))
                            try:
                                snapshots.append(col.snapshot())
                            except BaseException as exc:  # judged by the harness
                                snap_failure[:] = [exc, time.monotonic()]
                                return

                    snapper = threading.Thread(target=take_snapshots, daemon=True)
                    writer.thread.start()
                    snapper.start()
                    time.sleep(rng.uniform(0.5, 3.0))
                    # every 4th cycle, from the second on, aims at a snapshot: the kill lands while one runs
                    killed_at = kill_during_snapshot(server, snapshots) if cycle % 4 == 1 else None
                    if cycle % 4 == 2:  # and every 4th from the third at a merge growing a graph
                        killed_at = kill_during(server, "graph growth")
                    if killed_at is None:
                        killed_at = time.monotonic()
                        server.kill(group=True)
                    server.proc.wait(30)
                    writer.thread.join(60)
                    snapper.join(60)
                    check_stopped_by_kill("writer", writer.thread, writer.error, writer.stopped_at, killed_at)
                    check_stopped_by_kill("snapshot taker", snapper, *snap_failure, killed_at)
                    if snapshots:
                        last_snapshot = snapshots[-1]
            finally:
                if server.proc.poll() is None:
                    server.kill(group=True)
            tally.kills += 1
            tally.events[in_progress(server.log.read_text())] += 1
            tally.acked_requests += writer.acked
            next_id = writer.next_id
            restarted = ServerProcess(data, *flags)
            try:
                verify(
                    restarted.address,
                    model,
                    writer.pending,
                    tally,
                    root,
                    last_snapshot,  # this cycle's last, or an earlier cycle's: one is restored each cycle
                )
            finally:
                restarted.terminate()
            tally.cycles += 1
            log(
                f"cycle {cycle + 1}/{cycles}: {len(model)} points, {writer.acked} requests acknowledged; {tally.line()}"
            )
        return tally
    finally:
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench crash", description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the tally here as JSON")
    parser.add_argument("--processes", type=int, default=1, help="lamina serve --processes (default 1)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    tally = run(args.cycles, args.seed, processes=args.processes)
    print(f"\nsurvived: {tally.line()} ({time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({**tally.__dict__, "events": dict(tally.events)}, indent=2))
    return 0
