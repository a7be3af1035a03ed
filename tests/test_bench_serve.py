"""``python -m bench serve`` end to end at a small size: real servers, client processes, ratios."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench import layers, serve


def test_serve_measures_lamina_pgvector_and_the_echo_floor_with_client_processes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--rows", "2000", "--queries", "50", "--clients", "1,2", "--duration", "1", "--out", str(out)]
    argv += ["--rounds", "2"]  # every point measured twice, the systems alternated
    argv += ["--systems", "echo,lamina,pgvector"]  # lamina-processes: tests/test_processes.py covers it
    argv += ["--payloads", "text"]  # every point carries its kernel-docs record; clients fetch it
    assert serve.main(argv) == 0
    report = json.loads(next(out.glob("*-serve.json")).read_text())
    results = {r["system"]: r for r in report["results"]}
    assert set(results) == {"echo", "lamina", "pgvector"}
    for name, r in results.items():
        assert "error" not in r, r
        assert [run["clients"] for run in r["runs"]] == [1, 2]
        assert [(x["round"], x["clients"]) for x in r["rounds"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
        for run in r["runs"]:
            assert run["qps"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"], (name, run)
            assert run["server_mb"] > 1, (name, run)  # the server's memory, not this process's
            each = [x["qps"] for x in r["rounds"] if x["clients"] == run["clients"]]
            assert run["qps_rounds"] == each and run["qps"] == float(np.median(each))
    for name in ("lamina", "pgvector"):  # ef was chosen by recall against exact ground truth
        chosen = next(s for s in results[name]["sweep"] if s["ef"] == results[name]["ef"])
        assert chosen["recall"] >= serve.TARGET_RECALL, results[name]["sweep"]
        assert all(
            s["recall"] < serve.TARGET_RECALL for s in results[name]["sweep"] if s["ef"] < chosen["ef"]
        )
    # the systems alternate: every measurement of round 0 comes before any of round 1
    seqs = {
        r: sorted(x["seq"] for res in results.values() for x in res["rounds"] if x["round"] == r)
        for r in (0, 1)
    }
    assert max(seqs[0]) < min(seqs[1]) and len(seqs[0]) == len(seqs[1]) == 6
    table = next(out.glob("*-serve.md")).read_text()
    assert report["params"]["payloads"] == "text" and "fetched with its payload" in table
    lamina_1 = next(line for line in table.splitlines() if line.startswith("| lamina") and "| 1 |" in line)
    ratio = results["lamina"]["runs"][0]["qps"] / results["pgvector"]["runs"][0]["qps"]
    assert f"| {ratio:.2f}x |" in lamina_1  # the ratio column compares the same client count
    assert next(out.glob("*-serve.png")).stat().st_size > 0
    single = report["embedded"]  # Lamina embedded against the same hnswlib graph walked directly
    assert single["ef"] == results["lamina"]["ef"]
    assert list(single["median_us"]) == list(layers.LAYERS)  # each layer of the search path
    assert set(single["tail_median_us"]) == {
        "hnswlib",
        "engine",
        "lamina",
        "lamina_payload",
        "lamina_payload_rocksdb",
    }
    assert all(v > 0 for v in [*single["median_us"].values(), *single["tail_median_us"].values()])
    sdk = next(line for line in table.splitlines() if line.startswith("| lamina: "))
    assert f"| {single['vs_hnswlib']['lamina']:.2f}x |" in sdk
