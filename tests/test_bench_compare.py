"""``python -m bench compare`` end to end at a small size (the peers are optional: not in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench import compare


def test_compare_measures_each_system_against_exact_ground_truth(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--dataset", "synthetic", "--rows", "3000", "--dim", "48", "--queries", "30"]
    assert compare.main([*argv, "--systems", "lamina,hnswlib,faiss", "--out", str(out)]) == 0
    report = json.loads(next(out.glob("*-synthetic.json")).read_text())
    assert report["params"] == {"dataset": "synthetic", "rows": 3000, "dim": 48, "queries": 30}
    results = {r["system"]: r for r in report["results"]}
    assert set(results) == {"lamina", "hnswlib", "faiss"}
    for name, r in results.items():
        assert "error" not in r, r
        assert r["chosen"]["recall"] >= compare.TARGET_RECALL, name  # the width sweep reached the target
        assert all(0 <= c["recall"] <= 1 and c["qps1"] > 0 for c in r["curve"])
        assert r["build_s"] > 0 and r["disk_mb"] > 0
    assert results["lamina"]["durable"] and not results["hnswlib"]["durable"]
    # Lamina plans a 1%-selective filter exactly; its filtered answers are the exact ones
    assert results["lamina"]["filtered"]["recall"] == 1.0
    table = next(out.glob("*.md")).read_text()
    assert all(f"| {name} |" in table for name in results)
    assert {p.name.split("-synthetic-")[1] for p in out.glob("*.png")} == {"recall-qps.png", "memory.png"}


def test_ground_truth_is_exact_with_and_without_the_filter(tmp_path: Path) -> None:
    params = compare.prepare(tmp_path, "synthetic", 2000, 16, 10)
    assert params == {"dataset": "synthetic", "rows": 2000, "dim": 16, "queries": 10}
    base, queries = np.load(tmp_path / "base.npy"), np.load(tmp_path / "queries.npy")
    gt, gt_f = np.load(tmp_path / "gt.npy"), np.load(tmp_path / "gt_filtered.npy")
    for q, top, top_f in zip(queries, gt, gt_f, strict=True):
        scores = base @ q
        assert np.allclose(np.sort(scores)[::-1][: compare.K], scores[top])
        assert (top_f % 100 == compare.FILTER_BUCKET).all()
        allowed = np.flatnonzero(np.arange(2000) % 100 == compare.FILTER_BUCKET)
        assert np.allclose(np.sort(scores[allowed])[::-1][: compare.K], scores[top_f])


def test_a_system_that_cannot_finish_is_reported_not_dropped(tmp_path: Path) -> None:
    compare.prepare(tmp_path, "synthetic", 500, 8, 5)
    result = compare.run_one("lamina", tmp_path, limit=0.05)
    assert result == {"system": "lamina", "error": "did not finish within the 0 s limit"}
