"""Memory-mapped index files paged in on a background thread (index/warmup.py): after ``warm``,
reading rows all over a map takes no page faults; before, it takes one per few pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lamina.index import warmup
from lamina.storage.vectorfile import map_matrix, write_matrix

DIM = 64


def _resident(array: np.ndarray) -> int:
    """Bytes of the memory map holding ``array`` that this process has paged in (its page
    table entries: /proc/self/smaps Rss), whatever the page cache holds."""
    import psutil

    at = array.ctypes.data
    for region in psutil.Process().memory_maps(grouped=False):
        lo, hi = (int(x, 16) for x in region.addr.split("-"))
        if lo <= at < hi:
            return int(region.rss)
    raise AssertionError("no memory map holds the array")


def test_a_warmed_map_is_paged_in_and_a_cold_one_is_not(tmp_path: Path) -> None:
    data = np.random.default_rng(1).standard_normal((40_000, DIM)).astype(np.float32)  # 10 MiB
    path = tmp_path / "vectors.f32"
    write_matrix(path, data)
    cold = map_matrix(path, DIM)  # two maps of one file: each is paged in on its own
    warmed = map_matrix(path, DIM)
    thread = warmup.warm(warmed, "test")
    assert thread is not None
    thread.join(60)
    assert _resident(warmed) >= 0.95 * data.nbytes, (_resident(warmed), data.nbytes)
    assert _resident(cold) <= 0.05 * data.nbytes, _resident(cold)
    np.testing.assert_array_equal(warmed, data)  # reading is all it did


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


def test_a_graph_view_pages_its_file_in_as_it_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared ``GraphView`` (the default) warms its map: once its thread is done, searches
    walk it without faults. (A private one copies the file as it opens.)"""
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
    monkeypatch.setenv("LAMINA_GRAPH_MEMORY", "shared")
    view = GraphView(tmp_path / "graph.hnsw", dim, METRIC_IP)
    assert view.warming is not None
    view.warming.join(60)
    assert _resident(view.vectors) >= 0.95 * (tmp_path / "graph.hnsw").stat().st_size
