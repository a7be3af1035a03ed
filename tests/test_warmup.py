"""Memory-mapped index files paged in on a background thread (index/warmup.py): after ``warm``,
reading rows all over a map takes no page faults; before, it takes one per few pages."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import pytest

from lamina.index import warmup
from lamina.storage.vectorfile import map_matrix, write_matrix

DIM = 64


def _faults_reading(vectors: np.ndarray, rows: np.ndarray) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    total = 0.0
    for r in rows.tolist():
        total += float(vectors[r, 0])  # one float per row: a page each, all over the file
    assert np.isfinite(total)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_warmed_map_is_read_without_page_faults(tmp_path: Path) -> None:
    data = np.random.default_rng(1).standard_normal((160_000, DIM)).astype(np.float32)  # 40 MiB
    path = tmp_path / "vectors.f32"
    write_matrix(path, data)
    rows = np.random.default_rng(2).permutation(data.shape[0])[:10_000]
    cold = map_matrix(path, DIM)  # two maps of one file: each process map faults on its own
    warmed = map_matrix(path, DIM)
    thread = warmup.warm(warmed, "test")
    assert thread is not None
    thread.join(60)
    cold_faults = _faults_reading(cold, rows)
    warm_faults = _faults_reading(warmed, rows)
    assert cold_faults >= 50, cold_faults  # a fault per few pages (the kernel maps neighbours too)
    assert warm_faults <= cold_faults // 10, (warm_faults, cold_faults)
    np.testing.assert_array_equal(warmed[rows], data[rows])  # reading is all it did


def test_small_and_oversized_maps_are_left_to_page_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = tmp_path / "small.f32"
    write_matrix(small, np.ones((100, DIM), np.float32))
    assert warmup.warm(map_matrix(small, DIM), "small") is None
    big = tmp_path / "big.f32"
    write_matrix(big, np.ones((8_192, DIM), np.float32))  # 2 MiB
    monkeypatch.setattr(warmup, "available_bytes", lambda: 3 << 20)  # more than half of what is free
    assert warmup.warm(map_matrix(big, DIM), "big") is None
    monkeypatch.setattr(warmup, "available_bytes", lambda: 1 << 30)
    thread = warmup.warm(map_matrix(big, DIM), "big")
    assert thread is not None
    thread.join(60)


def test_a_graph_view_pages_its_file_in_as_it_opens(tmp_path: Path) -> None:
    """``GraphView`` warms its map: once its thread is done, searches walk it without faults."""
    import hnswlib

    from lamina.index import graphfile
    from lamina.index.graphview import GraphView
    from lamina.index.kernels import METRIC_IP

    dim, n = 128, 12_000  # a ~7 MiB graph file
    base = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, M=16, ef_construction=40, random_seed=1)
    index.add_items(base, np.arange(n), num_threads=2)
    index.save_index(str(tmp_path / "raw"))
    graphfile.relabel(tmp_path / "raw", tmp_path / "graph.hnsw")
    view = GraphView(tmp_path / "graph.hnsw", dim, METRIC_IP)
    assert view.warming is not None
    view.warming.join(60)
    queries = np.random.default_rng(4).standard_normal((300, dim)).astype(np.float32)
    live = np.ones(n, np.bool_)
    view.search(queries[:1], 10, 64, live)  # the marks and output arrays of a first search
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    view.search(queries[1:], 10, 64, live)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before <= 10
