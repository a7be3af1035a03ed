"""The Prometheus endpoint: request counts and latencies per RPC, and engine gauges."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import lamina
from tests.conftest import ServerThread
from tests.test_cli import lamina_cmd


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_metrics_count_requests_and_describe_collections(tmp_path: Path) -> None:
    srv = ServerThread(tmp_path / "data", metrics_port=0, metrics_names=True)
    try:
        port = srv.server.metrics_port
        assert port
        with lamina.connect(srv.address) as db:
            col = db.create_collection("docs", dim=4, segment_rows=256)
            for lo in range(0, 600, 50):
                col.upsert(list(range(lo, lo + 50)), np.random.default_rng(lo).random((50, 4)) + 0.1)
            col.optimize()
            for _ in range(7):
                col.search(np.ones(4), k=3)
            with pytest.raises(lamina.NotFound):
                db.get_collection("ghost")
            m = scrape(port)
            assert m[("lamina_requests_total", (("code", "OK"), ("method", "Points/Upsert")))] == 12
            assert m[("lamina_requests_total", (("code", "OK"), ("method", "Search/Search")))] == 7
            assert m[("lamina_requests_total", (("code", "NOT_FOUND"), ("method", "Collections/Get")))] == 1
            assert m[("lamina_request_seconds_count", (("method", "Search/Search"),))] == 7
            assert m[("lamina_request_seconds_bucket", (("le", "30.0"), ("method", "Search/Search")))] == 7
            assert m[("lamina_collection_points", (("collection", "docs"),))] == 600
            assert (
                m[("lamina_collection_segments", (("collection", "docs"),))]
                == col.info().status.segments
                >= 2
            )
            assert m[("lamina_collection_mutable_points", (("collection", "docs"),))] == 0
            assert m[("lamina_collection_index_bytes", (("collection", "docs"),))] > 0
            assert m[("lamina_requests_in_flight", ())] == 0
            assert ("lamina_requests_rejected_total", ()) in m
            info = lamina_cmd("info", "-t", srv.address)
            assert info.returncode == 0, info.stderr
            assert "collection docs: 600 points" in info.stdout and "requests_served:" in info.stdout
    finally:
        srv.stop()
    with pytest.raises(OSError):  # the endpoint closes with the server
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
