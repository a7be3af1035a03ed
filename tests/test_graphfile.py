"""index/graphfile.py: a saved hnswlib graph rewritten in label order serves as the
segment's vector store (real hnswlib, no stand-ins)."""

from __future__ import annotations

from pathlib import Path

import hnswlib
import numpy as np
import pytest

from lamina.index import graphfile


def test_relabel_keeps_the_graph_and_exposes_its_vectors_by_label(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n, dim = 3_000, 20
    data = rng.standard_normal((n, dim)).astype(np.float32)
    index = hnswlib.Index(space="l2", dim=dim)
    index.init_index(max_elements=n + 100, M=8, ef_construction=64, random_seed=1)
    # inserted in reverse: internal id i holds label n - 1 - i, so every record must move
    index.add_items(data[::-1], np.arange(n)[::-1], num_threads=1)
    index.mark_deleted(17)
    index.save_index(str(tmp_path / "raw"))
    graphfile.relabel(tmp_path / "raw", tmp_path / "graph")
    vectors = graphfile.vectors(tmp_path / "graph", dim)
    assert vectors.shape == (n, dim) and np.array_equal(vectors, data)
    loaded = hnswlib.Index(space="l2", dim=dim)
    loaded.load_index(str(tmp_path / "graph"))
    queries = rng.standard_normal((200, dim)).astype(np.float32)
    index.set_ef(40)
    loaded.set_ef(40)
    want, got = index.knn_query(queries, k=10)[0], loaded.knn_query(queries, k=10)[0]
    assert np.array_equal(want, got)  # the same walks: links and entry point renumbered
    assert 17 not in set(loaded.knn_query(data[17:18], k=5)[0][0].tolist())  # still marked deleted
    # the relabelled graph grows like any other, and relabels again
    loaded.resize_index(n + 50)
    loaded.add_items(data[:50] + 1, np.arange(n, n + 50), num_threads=2)
    loaded.save_index(str(tmp_path / "raw2"))
    graphfile.relabel(tmp_path / "raw2", tmp_path / "graph2")
    assert np.array_equal(graphfile.vectors(tmp_path / "graph2", dim), np.vstack([data, data[:50] + 1]))


def test_relabel_refuses_labels_that_are_not_row_numbers(tmp_path: Path) -> None:
    index = hnswlib.Index(space="ip", dim=4)
    index.init_index(max_elements=10, M=8, ef_construction=16)
    index.add_items(np.eye(4, dtype=np.float32), [0, 1, 2, 7])
    index.save_index(str(tmp_path / "raw"))
    with pytest.raises(ValueError, match=r"labels are not 0\.\.3"):
        graphfile.relabel(tmp_path / "raw", tmp_path / "graph")
