"""Faults beyond kill -9, each injected many times, with a table: fault, trials, detected,
acknowledged writes lost, reads served during the fault, recovery time.

* disk full: a size-limited tmpfs filled by a ballast file while points are written;
  detected = the write was refused ``DiskFull``; recovery = from freeing the space to the
  next acknowledged write (no restart).
* read-only remount: an ext4 image on a loop device the kernel turns read-only under the
  open database (``trigger_fs_error`` with ``errors=remount-ro``); acknowledged writes are
  counted after unmounting and mounting the image again.
* EIO on a segment read: the storage/faults.py seam; detected = searches refused
  ``DataLoss`` naming the segment.
* corruption: random byte flips and truncations over every kind of file of a data
  directory (RocksDB tables, log, manifest, options; segment vectors, rows, ids, graph,
  payload indexes, manifest); detected = ``lamina check --deep`` names a problem; the
  acknowledged writes lost column counts, over undetected trials only, points a normal
  open no longer returns (silent loss). Recovery = ``lamina check --repair`` when it
  applies (a rebuilt segment), else a snapshot restore (not timed).

The mounting faults need root; without it their rows say so.

    python -m bench faults [--trials 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, machine
from lamina.engine.check import check_data_directory
from lamina.engine.database import Database
from lamina.errors import DataLoss, DiskFull, LaminaError, ReadOnly
from lamina.storage import faults
from lamina.types import CollectionConfig

DIM = 32


@dataclass
class FaultRow:
    fault: str
    trials: int = 0
    detected: int = 0
    acked_lost: int = 0
    reads_served: str = "-"
    recovery_s: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _mount(args: list[str]) -> str:
    """ "" when mounted, else why not."""
    if os.geteuid() != 0:
        return "needs root to mount a test file system"
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    return "" if done.returncode == 0 else f"mount failed: {done.stderr.strip()}"


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 65536, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def disk_full(trials: int, work: Path) -> FaultRow:
    row = FaultRow("disk full (ENOSPC, 32 MiB tmpfs)")
    mnt = work / "tmpfs"
    mnt.mkdir()
    why = _mount(["-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)])
    if why:
        row.note = why
        return row
    reads = served = 0
    recoveries = []
    try:
        for t in range(trials):
            data = mnt / f"d{t}"
            acked: dict[int, np.ndarray] = {}
            with Database(data) as db:
                col = db.create_collection("docs", CollectionConfig(dim=DIM, metric="l2", segment_rows=2048))
                _fill(mnt / "ballast")
                next_id = 0
                refused = False
                for b in range(400):
                    vecs = _vectors(256, t * 1000 + b)
                    try:
                        col.upsert(list(range(next_id, next_id + 256)), vecs)
                    except DiskFull:
                        refused = True
                        break
                    acked.update(zip(range(next_id, next_id + 256), vecs, strict=True))
                    next_id += 256
                row.trials += 1
                row.detected += refused
                for q in range(20):
                    reads += 1
                    try:
                        col.search(_vectors(1, q)[0], k=5)
                        served += 1
                    except LaminaError:
                        pass
                (mnt / "ballast").unlink()
                freed = time.perf_counter()
                vecs = _vectors(1, 7)
                col.upsert([next_id], vecs)
                recoveries.append(time.perf_counter() - freed)
                acked[next_id] = vecs[0]
            with Database(data) as db:
                col = db.get_collection("docs")
                got = {p.id for p in col.get(sorted(acked), with_vector=False, with_payload=False)}
                row.acked_lost += len(set(acked) - got)
            shutil.rmtree(data)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    row.reads_served = f"{served}/{reads}"
    row.recovery_s = float(np.median(recoveries)) if recoveries else None
    row.note = "recovery: space freed -> next write acknowledged, no restart"
    return row


def read_only_remount(trials: int, work: Path, sync: bool) -> FaultRow:
    row = FaultRow(f"file system turned read-only (ext4 errors=remount-ro), sync_writes={sync}")
    reads = served = 0
    for t in range(trials):
        image, mnt = work / f"ext4-{t}-{sync}.img", work / f"ext4-{t}-{sync}"
        mnt.mkdir()
        with open(image, "wb") as fh:
            fh.truncate(32 << 20)
        subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
        why = _mount(["-o", "loop,errors=remount-ro", str(image), str(mnt)])
        if why:
            row.note = why
            return row
        try:
            source = subprocess.run(
                ["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True, text=True
            )
            trigger = Path("/sys/fs/ext4") / Path(source.stdout.strip()).name / "trigger_fs_error"
            acked: list[int] = []
            with Database(mnt / "data", sync_writes=sync) as db:
                col = db.create_collection("docs", CollectionConfig(dim=DIM, metric="l2"))
                for b in range(5):
                    col.upsert(list(range(b * 100, b * 100 + 100)), _vectors(100, b))
                    acked.extend(range(b * 100, b * 100 + 100))
                trigger.write_text("bench\n")
                try:
                    col.upsert([10_000], _vectors(1, 9))
                    acked.append(10_000)
                except ReadOnly:
                    row.detected += 1
                row.trials += 1
                for q in range(20):
                    reads += 1
                    with contextlib.suppress(LaminaError):
                        col.search(_vectors(1, q)[0], k=5)
                        served += 1
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        if not _mount(["-o", "loop", str(image), str(mnt)]):  # after the "reboot": what survived
            try:
                with Database(mnt / "data") as db:
                    got = {p.id for p in db.get_collection("docs").get(acked, with_payload=False)}
                    row.acked_lost += len(set(acked) - got)
            finally:
                subprocess.run(["umount", str(mnt)], capture_output=True)
        image.unlink()
    row.reads_served = f"{served}/{reads}"
    row.note = (
        "acknowledged writes counted after unmount + mount (the page cache is gone, as after a power loss)"
    )
    return row


def _seed(data: Path, n: int = 6000, image: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Collection "docs" in ``data``; ``image``: also a copy taken while it is open, as a
    kill -9 leaves it (a write-ahead log with the last write in it)."""
    vecs = _vectors(n, 1)
    with Database(data) as db:
        col = db.create_collection(
            "docs",
            CollectionConfig(dim=DIM, metric="l2", segment_rows=2048, payload_index={"tag": "keyword"}),
        )
        for lo in range(0, n, 500):
            col.upsert(
                list(range(lo, min(n, lo + 500))),
                vecs[lo : lo + 500],
                [{"tag": f"t{i % 5}"} for i in range(lo, min(n, lo + 500))],
            )
        col.optimize()
        col._store._db.flush()  # tables on disk, so that every kind of file exists
        col.upsert([n], _vectors(1, 2))  # and a write-ahead log with a record in it
        if image is not None:
            shutil.copytree(data, image)
        vecs = np.vstack([vecs, _vectors(1, 2)])
    segments = sorted(p.name for p in (data / "collections/docs/segments").iterdir())
    return vecs, segments


def eio(trials: int, work: Path) -> FaultRow:
    row = FaultRow("EIO reading a segment file (storage seam)")
    data = work / "eio"
    vecs, segments = _seed(data, 4000)
    reads = served = 0
    recoveries = []
    with Database(data) as db:
        col = db.get_collection("docs")
        col.optimize()  # the background scrub of the opened segments is done before the disk fails
        segments = sorted(p.name for p in (data / "collections/docs/segments").iterdir())
        rng = np.random.default_rng(3)
        for t in range(trials):
            bad = segments[t % len(segments)]
            faults.inject(bad)
            try:
                col.search(vecs[int(rng.integers(len(vecs)))], k=5)
            except DataLoss as exc:
                row.detected += bad in str(exc)
            row.trials += 1
            for i in rng.integers(0, len(vecs), 5).tolist():  # reads by id go on
                reads += 1
                served += len(col.get([i])) == 1
            faults.clear()
            started = time.perf_counter()
            col.search(vecs[0], k=5)
            recoveries.append(time.perf_counter() - started)
    row.reads_served = f"{served}/{reads}"
    row.recovery_s = float(np.median(recoveries))
    row.note = "served: get by id during the fault; recovery: first search once reads succeed again"
    return row


def _kind(path: Path) -> str:
    name = path.name
    if path.parent.name == "docs" or path.parent.parent.name == "collections":
        for prefix, kind in (("MANIFEST", "rocksdb MANIFEST"), ("OPTIONS", "rocksdb OPTIONS")):
            if name.startswith(prefix):
                return kind
        return f"rocksdb {name.rsplit('.', 1)[-1] if '.' in name else name}"
    return "segment " + ("pidx .npz" if name.startswith("pidx-") else name)


def corruption(trials: int, work: Path, seed: int, truncate: bool) -> FaultRow:
    row = FaultRow(f"corruption: random {'truncation' if truncate else 'byte flip'}, every kind of file")
    pristine = work / "pristine"
    if not pristine.exists():
        _seed(work / "seeded", image=pristine)
    vecs_n = 6001
    files = sorted(
        p
        for p in (pristine / "collections/docs").rglob("*")
        if p.is_file()
        and p.stat().st_size
        and p.name not in ("LOCK", "rocksdict-config.json")
        and not p.name.startswith("LOG")
    )
    rng = np.random.default_rng(seed + truncate)
    missed: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    repairs = []
    for t in range(trials):
        data = work / f"c{t}"
        shutil.copytree(pristine, data)
        victim = data / files[int(rng.integers(len(files)))].relative_to(pristine)
        raw = bytearray(victim.read_bytes())
        if truncate:
            del raw[int(rng.integers(len(raw))) :]
        else:
            raw[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
        victim.write_bytes(bytes(raw))
        kind = _kind(victim)
        by_kind[kind] += 1
        row.trials += 1
        try:
            report = check_data_directory(data, deep=True)
            found = bool(report.problems)
        except LaminaError:
            found = True
        row.detected += found
        if not found:
            missed[kind] += 1
            with contextlib.suppress(LaminaError), Database(data) as db:  # served without a word?
                got = db.get_collection("docs").get(list(range(vecs_n)), with_payload=False)
                row.acked_lost += vecs_n - len(got)
        elif "segment" in kind:
            started = time.perf_counter()
            with contextlib.suppress(LaminaError):
                fixed = check_data_directory(data, repair=True)
                if fixed.repaired and not check_data_directory(data, deep=True).problems:
                    repairs.append(time.perf_counter() - started)
        shutil.rmtree(data)
    row.recovery_s = float(np.median(repairs)) if repairs else None
    row.reads_served = "refused, never wrong"
    row.extra = {
        "by_kind": dict(by_kind),
        "undetected_by_kind": dict(missed),
        "segment_repairs": len(repairs),
    }
    row.note = (
        f"undetected: {', '.join(f'{k} x{v}' for k, v in sorted(missed.items())) or 'none'}; "
        f"recovery: check --repair of a damaged segment ({len(repairs)} rebuilt), RocksDB damage: restore a snapshot"
    )
    return row


def table(rows: list[FaultRow]) -> str:
    lines = [
        "| fault | trials | detected | acked writes lost | reads served during fault | recovery s | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rec = "-" if r.recovery_s is None else f"{r.recovery_s:.3f}"
        lines.append(
            f"| {r.fault} | {r.trials} | {r.detected} | {r.acked_lost} | {r.reads_served} | {rec} | {r.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench faults", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="byte flips and truncations (each)")
    parser.add_argument("--mount-trials", type=int, default=5, help="disk-full and read-only trials")
    parser.add_argument("--eio-trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the faults are expected: keep the table readable
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lamina-faults-") as tmp:
        work = Path(tmp)
        rows = []
        for name, run in (
            ("disk full", lambda: disk_full(args.mount_trials, work)),
            ("read-only", lambda: read_only_remount(args.mount_trials, work, sync=False)),
            ("read-only, sync", lambda: read_only_remount(args.mount_trials, work, sync=True)),
            ("eio", lambda: eio(args.eio_trials, work)),
            ("flips", lambda: corruption(args.trials, work, args.seed, truncate=False)),
            ("truncations", lambda: corruption(args.trials, work, args.seed, truncate=True)),
        ):
            t0 = time.perf_counter()
            rows.append(run())
            print(
                f"{name}: {rows[-1].detected}/{rows[-1].trials} detected ({time.perf_counter() - t0:.0f} s)"
            )
    markdown = table(rows)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    payload = {
        "benchmark": "faults",
        "params": vars(args),
        "machine": machine(),
        "rows": [asdict(r) for r in rows],
    }
    (RESULTS / f"{stamp}-faults.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{stamp}-faults.md").write_text(markdown + "\n")
    print(f"({time.perf_counter() - started:.0f} s) -> {RESULTS / f'{stamp}-faults.json'}")
    return 0
