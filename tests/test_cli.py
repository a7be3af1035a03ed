"""The ``lamina`` command: ingest (.npy and JSON Lines) and collections."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

import lamina
from tests.conftest import ServerProcess


def lamina_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina", *args], capture_output=True, text=True, timeout=300
    )


def test_ingest_npy_then_list(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((2500, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    data = str(tmp_path / "data")
    result = lamina_cmd(
        "ingest", str(tmp_path / "v.npy"), "-c", "vecs", "-t", data, "--metric", "l2", "--id-start", "100"
    )
    assert result.returncode == 0, result.stderr
    assert "ingested 2,500 points" in result.stderr
    listing = lamina_cmd("collections", "-t", data)
    assert listing.returncode == 0
    assert "vecs" in listing.stdout and "2,500" in listing.stdout and "l2" in listing.stdout
    with lamina.connect(data) as db:
        col = db.get_collection("vecs")
        point = col.get([100 + 1234])[0]
        assert point.vector.tobytes() == vectors[1234].tobytes()  # type: ignore[union-attr]
        col.create_payload_index("lang", "keyword")
    listing = lamina_cmd("collections", "-t", data)
    assert "payload indexes: lang (keyword)" in listing.stdout


def test_ingest_jsonl_over_grpc(tmp_path: Path, server_process: type[ServerProcess]) -> None:
    rows = [
        {"id": f"p{i}" if i % 2 else i, "vector": [float(i), 1.0, 2.0], "payload": {"i": i}}
        for i in range(30)
    ]
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    proc = server_process(tmp_path / "data")
    result = lamina_cmd("ingest", str(path), "-c", "recs", "-t", proc.address, "--batch-size", "7")
    assert result.returncode == 0, result.stderr
    with lamina.connect(proc.address) as db:
        col = db.get_collection("recs")
        assert col.count() == 30
        assert col.get(["p3"])[0].payload == {"i": 3}


def test_ingest_reports_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1, "vector": [1, 2]}\n{"id": 2, "vector": [1, 2]}\n{not json}\n')
    result = lamina_cmd("ingest", str(path), "-c", "x", "-t", str(tmp_path / "data"), "-q")
    assert result.returncode == 2
    assert "bad.jsonl:3" in result.stderr and "not valid JSON" in result.stderr


def test_ingest_reports_wrong_dimension_by_line(tmp_path: Path) -> None:
    path = tmp_path / "dim.jsonl"
    path.write_text('{"id": 1, "vector": [1, 2]}\n{"id": 2, "vector": [1, 2, 3]}\n')
    result = lamina_cmd("ingest", str(path), "-c", "x", "-t", str(tmp_path / "data"), "-q")
    assert result.returncode == 2
    assert "dim.jsonl:2" in result.stderr and "list of 2 numbers" in result.stderr


def test_ingest_reports_rejected_batch_by_record_range(tmp_path: Path) -> None:
    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": 1, "vector": [1, 2]}\n{"id": -2, "vector": [1, 2]}\n')
    result = lamina_cmd("ingest", str(path), "-c", "x", "-t", str(tmp_path / "data"), "-q")
    assert result.returncode == 2
    assert "records 1..2" in result.stderr and "invalid id -2" in result.stderr


def write_vecs(path: Path, matrix: np.ndarray) -> None:
    """TEXMEX layout: per vector an int32 dimension, then its components."""
    n, dim = matrix.shape
    header = np.full((n, 1), dim, dtype="<i4").view(np.uint8)
    body = np.ascontiguousarray(matrix).view(np.uint8).reshape(n, -1)
    path.write_bytes(np.hstack([header, body]).tobytes())


def test_ingest_fvecs_and_bvecs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    floats = rng.standard_normal((300, 12)).astype("<f4")
    bytes_ = rng.integers(1, 255, (200, 16), dtype=np.uint8)
    write_vecs(tmp_path / "base.fvecs", floats)
    write_vecs(tmp_path / "base.bvecs", bytes_)
    data = str(tmp_path / "data")
    for name, coll in (("base.fvecs", "f"), ("base.bvecs", "b")):
        result = lamina_cmd("ingest", str(tmp_path / name), "-c", coll, "-t", data, "-q", "--metric", "l2")
        assert result.returncode == 0, result.stderr
    with lamina.connect(data) as db:
        f, b = db.get_collection("f"), db.get_collection("b")
        assert (f.count(), f.dim, b.count(), b.dim) == (300, 12, 200, 16)
        assert f.get([123])[0].vector.tobytes() == floats[123].tobytes()  # type: ignore[union-attr]
        assert np.array_equal(b.get([7])[0].vector, bytes_[7].astype(np.float32))  # type: ignore[arg-type]
    (tmp_path / "cut.fvecs").write_bytes((tmp_path / "base.fvecs").read_bytes()[:-3])
    cut = lamina_cmd("ingest", str(tmp_path / "cut.fvecs"), "-c", "x", "-t", data, "-q")
    assert cut.returncode == 2 and "not a .fvecs file" in cut.stderr


def test_dry_run_lists_every_bad_record_and_writes_nothing(tmp_path: Path) -> None:
    lines = [
        {"id": 1, "vector": [1.0, 2.0, 3.0], "payload": {"a": 1}},
        "not json",
        {"id": 2, "vector": [1.0, 2.0]},
        {"id": -5, "vector": [1.0, 2.0, 3.0]},
        {"id": 3, "vector": [0.0, 0.0, 1e39]},
        {"id": 4, "vector": [1.0, 1.0, 1.0], "payload": ["x"]},
        {"id": 5, "vector": [1.0, 1.0, 2.0]},
    ]
    path = tmp_path / "recs.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else orjson.dumps(x).decode() for x in lines) + "\n")
    data = str(tmp_path / "data")
    result = lamina_cmd("ingest", str(path), "-c", "recs", "-t", data, "-q", "--dry-run")
    assert result.returncode == 2
    reported = [line.split(":")[1] for line in result.stdout.splitlines()]
    assert reported == ["2", "3", "4", "5", "6"]  # every bad line, by number
    assert "integer ids must be in" in result.stdout and "NaN or infinity" in result.stdout
    assert "2 of 7 records would be written" in result.stderr
    with lamina.connect(data) as db:
        assert db.list_collections() == []  # nothing written, nothing created
    good = tmp_path / "good.jsonl"
    good.write_text(path.read_text().splitlines()[0] + "\n")
    assert lamina_cmd("ingest", str(good), "-c", "recs", "-t", data, "-q", "--dry-run").returncode == 0


def test_ingest_parquet_with_tenant_and_payload_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    n = 250
    table = pa.table(
        {
            "doc": list(range(n)),
            "emb": [rng.standard_normal(8).astype(np.float32).tolist() for _ in range(n)],
            "lang": ["en" if i % 2 else "de" for i in range(n)],
            "year": [2000 + i % 7 for i in range(n)],
            "org": ["acme" if i < 150 else "globex" for i in range(n)],
        }
    )
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=64)  # streamed by row group
    data = str(tmp_path / "data")
    args = ("-c", "kb", "-t", data, "--id-field", "doc", "--vector-field", "emb", "--tenant-field", "org")
    done = lamina_cmd("ingest", str(tmp_path / "docs.parquet"), *args)
    assert done.returncode == 0, done.stderr
    assert "ingested 250 points into 'kb' for 2 tenants" in done.stderr
    with lamina.connect(data) as db:
        kb = db.get_collection("kb")
        assert kb.config.multi_tenant
        assert [(t.name, t.points) for t in kb.list_tenants()] == [("acme", 150), ("globex", 100)]
        (p,) = kb.get([151], tenant="globex")
        assert p.payload == {"lang": "en", "year": 2000 + 151 % 7}
        assert np.allclose(p.vector, table.column("emb")[151].as_py())
        assert kb.get([151], tenant="acme") == []
    # a JSON payload column, and a bad row reported by its row number
    bad = pa.table(
        {"id": [1, 2, 3], "vector": [[0.1] * 4, [0.2] * 3, [0.3] * 4], "payload": ['{"a": 1}', "{}", "null"]}
    )
    pq.write_table(bad, tmp_path / "bad.parquet")
    checked = lamina_cmd("ingest", str(tmp_path / "bad.parquet"), "-c", "x", "-t", data, "--dry-run")
    assert checked.returncode == 2 and "bad.parquet:2: 'vector' must be a list of 4 numbers" in checked.stdout
    missing = lamina_cmd("ingest", str(tmp_path / "bad.parquet"), "-c", "x", "-t", data, "--id-field", "doc")
    assert missing.returncode != 0 and "no column 'doc'" in missing.stderr
    pq.write_table(bad.slice(0, 1), tmp_path / "one.parquet")
    assert lamina_cmd("ingest", str(tmp_path / "one.parquet"), "-c", "x", "-t", data).returncode == 0
    with lamina.connect(data) as db:
        assert db.get_collection("x").get([1])[0].payload == {"a": 1}


def test_ingest_ann_benchmarks_hdf5_and_jsonl_tenants(tmp_path: Path) -> None:
    import h5py

    rng = np.random.default_rng(4)
    with h5py.File(tmp_path / "glove.hdf5", "w") as fh:
        fh["train"] = rng.standard_normal((300, 8)).astype(np.float32)
        fh["test"] = rng.standard_normal((20, 8)).astype(np.float32)
    data = str(tmp_path / "data")
    done = lamina_cmd("ingest", str(tmp_path / "glove.hdf5"), "-c", "glove", "-t", data)
    assert done.returncode == 0 and "ingested 300 points" in done.stderr, done.stderr
    queries = lamina_cmd("ingest", str(tmp_path / "glove.hdf5"), "-c", "q", "-t", data, "--dataset", "test")
    assert queries.returncode == 0 and "ingested 20 points" in queries.stderr
    nope = lamina_cmd("ingest", str(tmp_path / "glove.hdf5"), "-c", "q", "-t", data, "--dataset", "nope")
    assert nope.returncode != 0 and "no dataset 'nope' (has test, train)" in nope.stderr
    with (tmp_path / "t.jsonl").open("w") as fh:
        for i in range(10):
            fh.write(
                orjson.dumps({"id": i, "vector": [float(i), 1.0], "who": "a" if i < 4 else "b"}).decode()
                + "\n"
            )
    mixed = lamina_cmd("ingest", str(tmp_path / "t.jsonl"), "-c", "mt", "-t", data, "--tenant-field", "who")
    assert mixed.returncode == 0 and "for 2 tenants" in mixed.stderr, mixed.stderr
    both = lamina_cmd(
        "ingest", str(tmp_path / "t.jsonl"), "-c", "mt", "-t", data, "--tenant-field", "who", "--tenant", "a"
    )
    assert both.returncode != 0 and "not both" in both.stderr
    with lamina.connect(data) as db:
        assert db.get_collection("glove").count() == 300
        assert np.allclose(
            db.get_collection("glove").get([7])[0].vector, h5py.File(tmp_path / "glove.hdf5")["train"][7]
        )
        assert [(t.name, t.points) for t in db.get_collection("mt").list_tenants()] == [("a", 4), ("b", 6)]


def _checkpoint(path: Path) -> dict[str, object]:
    try:
        return dict(orjson.loads(path.read_bytes()))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}


def _low_priority_interruptible() -> None:
    """In the child before exec: the lowest CPU priority, and SIGINT back to its default. A
    shell starts background jobs with SIGINT ignored, Python keeps an ignored SIGINT ignored,
    and then Ctrl-C never reaches the load (why this test failed when run as `pytest &`)."""
    os.nice(19)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_when(cmd: list[str], checkpoint: Path, records: int, sig: int) -> subprocess.Popen[str]:
    """Start ``lamina ingest``, send ``sig`` once its checkpoint passes ``records``. The load
    runs at the lowest CPU priority and is frozen (SIGSTOP) the moment the threshold shows,
    so it cannot finish between the poll and the signal however busy the machine is."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamina", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_low_priority_interruptible,
    )
    deadline = time.monotonic() + 120
    while int(_checkpoint(checkpoint).get("records", 0)) < records:  # type: ignore[call-overload]
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)
    assert proc.poll() is None, "the load finished before it could be interrupted"
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    proc.wait(60)
    return proc


def test_parallel_ingest_resumes_after_an_interrupt_and_a_kill(tmp_path: Path) -> None:
    n = 90_000  # under a segment: no index build to wait for at close
    vectors = np.random.default_rng(3).standard_normal((n, 16)).astype(np.float32)
    np.save(tmp_path / "big.npy", vectors)
    data = str(tmp_path / "data")
    cmd = ["ingest", str(tmp_path / "big.npy"), "-c", "big", "-t", data, "--batch-size", "200"]
    cmd += ["--parallel", "3", "--metric", "l2"]
    checkpoint = tmp_path / "big.npy.big.checkpoint.json"

    # Ctrl-C: the batches in flight finish, the checkpoint is saved, exit 130
    first = _interrupt_when(cmd, checkpoint, 10_000, signal.SIGINT)
    assert first.returncode == 130, first.stderr.read() if first.stderr else ""
    assert "run again with --resume" in (first.stderr.read() if first.stderr else "")
    after_interrupt = int(_checkpoint(checkpoint)["records"])  # type: ignore[call-overload]
    assert 10_000 <= after_interrupt < n

    # killed outright during the resumed run: the checkpoint lags what was written, never leads
    second = _interrupt_when([*cmd, "--resume"], checkpoint, after_interrupt + 10_000, signal.SIGKILL)
    assert second.returncode == -signal.SIGKILL
    after_kill = int(_checkpoint(checkpoint)["records"])  # type: ignore[call-overload]
    assert after_interrupt + 10_000 <= after_kill < n
    with lamina.connect(data) as db:
        assert db.get_collection("big").count() >= after_kill

    third = lamina_cmd(*cmd, "--resume", "-q")
    assert third.returncode == 0, third.stderr
    assert f"resuming after record {after_kill:,} of {n:,}" in third.stderr
    assert f"ingested {n - after_kill:,} points" in third.stderr
    assert not checkpoint.exists()  # a finished load leaves no checkpoint
    with lamina.connect(data) as db:
        col = db.get_collection("big")
        assert col.count() == n
        ids = [0, after_interrupt - 1, after_interrupt, after_kill - 1, after_kill, n - 1]
        got = {p.id: p.vector for p in col.get(ids)}
        assert all(np.array_equal(got[i], vectors[i]) for i in ids)
    again = lamina_cmd(*cmd, "--resume", "-q")
    assert again.returncode == 2 and "no checkpoint" in again.stderr


def test_failed_batch_leaves_a_checkpoint_of_the_records_before_it(tmp_path: Path) -> None:
    path = tmp_path / "recs.jsonl"
    lines = [orjson.dumps({"id": i, "vector": [i, 1.0], "payload": {"i": i}}) for i in range(1, 6001)]
    lines[2499] = b'{"id": -5, "vector": [1, 2]}'  # line 2500: the engine refuses the id
    path.write_bytes(b"\n".join(lines) + b"\n")
    data = str(tmp_path / "data")
    cmd = ["ingest", str(path), "-c", "kb", "-t", data, "-q", "--parallel", "2"]
    failed = lamina_cmd(*cmd)
    assert failed.returncode == 2
    assert "records 2001..3000" in failed.stderr and "invalid id -5" in failed.stderr
    assert "stopped after 2,000 of 6,000 records" in failed.stderr
    checkpoint = tmp_path / "recs.jsonl.kb.checkpoint.json"
    assert _checkpoint(checkpoint)["records"] == 2000
    with lamina.connect(data) as db:
        col = db.get_collection("kb")
        assert len(col.get(list(range(1, 2001)))) == 2000  # every record before the refused batch
        assert col.get([i for i in range(2001, 3001) if i != 2500]) == []  # the refused batch wrote nothing
        later = len(col.get(list(range(3001, 6001))))  # batches already in flight beside it may land
        assert later % 1000 == 0 and col.count() == 2000 + later

    lines[2499] = orjson.dumps({"id": 2500, "vector": [2500, 1.0], "payload": {"i": 2500}})
    path.write_bytes(b"\n".join(lines) + b"\n")  # fixed: a different file now
    stale = lamina_cmd(*cmd, "--resume")
    assert stale.returncode == 2 and "belongs to another load" in stale.stderr
    fresh = lamina_cmd(*cmd)
    assert fresh.returncode == 0, fresh.stderr
    assert "starting over" in fresh.stderr and not checkpoint.exists()
    with lamina.connect(data) as db:
        col = db.get_collection("kb")
        assert col.count() == 6000 and col.get([2500])[0].payload == {"i": 2500}
