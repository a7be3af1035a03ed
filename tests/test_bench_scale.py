"""``python -m bench scale`` end to end at a tiny size (the real runs use the manifold data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench import scale


def test_scale_measures_lamina_defaults_against_one_graph_per_size(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--synthetic", "--sizes", "2000", "--queries", "30", "--ingest-seconds", "1"]
    assert scale.main([*argv, "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    report = json.loads(next(out.glob("*-scale-synthetic.json")).read_text())
    results = {r["system"]: r for r in report["results"]}
    assert set(results) == {"lamina", "hnswlib", "faiss"}
    for name, r in results.items():
        assert "error" not in r, r
        assert r["n"] == 2000 and r["chosen"]["recall"] >= scale.TARGET_RECALL, name
        assert all(0 <= c["recall"] <= 1 and c["qps"] > 0 for c in r["curve"])
        # QPS is the fastest of the timed passes
        assert all(len(c["qps_passes"]) == scale.PASSES for c in r["curve"])
        assert all(abs(c["qps"] - max(c["qps_passes"])) <= 0.1 for c in r["curve"])
        assert r["indexed_s"] > 0 and r["disk_mb"] > 0 and r["reopen_s"] > 0
    lamina = results["lamina"]
    assert lamina["load_s"] > 0 and [g["rate"] for g in lamina["ingest"]] == [1_000, 4_000]
    assert all(
        g["idle_p99_ms"] > 0 and g["rows_per_s"] > 0 and g["ingest_cpu_p99_ms"] > 0 for g in lamina["ingest"]
    )
    table = next(out.glob("*.md")).read_text()
    assert all(f"| {name} |" in table for name in results)
    assert next(out.glob("*-scale-synthetic.png")).stat().st_size > 0


def test_the_ground_truth_of_generated_data_is_exact(tmp_path: Path) -> None:
    folder = scale.dataset(tmp_path, 500, synthetic=True)
    base, queries, gt = (np.load(folder / f"{name}.npy") for name in ("base", "queries", "gt"))
    for q, top in zip(queries, gt, strict=True):
        scores = base @ q
        assert np.allclose(np.sort(scores)[::-1][: scale.K], scores[top])


def test_qps_at_the_target_recall_is_interpolated_between_the_efs_around_it() -> None:
    curve = [
        {"ef": 16, "recall": 0.90, "qps": 8000.0},
        {"ef": 32, "recall": 0.94, "qps": 4000.0},
        {"ef": 64, "recall": 0.96, "qps": 2000.0},
    ]
    # halfway in recall between 4,000 and 2,000 QPS: their geometric mean
    assert abs(scale.qps_at_target(curve) - (4000 * 2000) ** 0.5) < 1e-6  # type: ignore[operator]
    assert scale.qps_at_target(curve[2:]) == 2000.0  # the first point already reaches it
    assert scale.qps_at_target(curve[:2]) is None  # no point reaches it
