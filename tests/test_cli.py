"""The ``lamina`` command: ingest (.npy and JSON Lines) and collections."""

from __future__ import annotations

import subprocess
import sys
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
    assert "ingested 2500 points" in result.stderr
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
