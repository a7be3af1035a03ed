"""Prometheus metrics of one server: per-RPC request counts and latency histograms,
requests in flight, turned away and abandoned, and per-collection points, segments,
index memory and background work (read from the engine at scrape time).

``lamina serve --metrics-port 9464`` serves them at ``http://<host>:9464/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lamina.engine.protocol import DatabaseProtocol
from lamina.engine.sharded import ShardedCollection
from lamina.errors import LaminaError
from lamina.types import CollectionInfo

if TYPE_CHECKING:
    from lamina.server.app import Gate

#: request latency buckets, seconds (0.5 ms .. 30 s)
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


#: per-collection gauges: name, help, and the value read from the collection's info
COLLECTION_GAUGES: tuple[tuple[str, str, Callable[[CollectionInfo], float]], ...] = (
    ("lamina_collection_points", "Live points", lambda i: i.count),
    ("lamina_collection_segments", "Sealed segments", lambda i: i.status.segments),
    (
        "lamina_collection_mutable_points",
        "Live points not yet sealed (searched exactly)",
        lambda i: i.status.mutable_points,
    ),
    (
        "lamina_collection_index_bytes",
        "Memory of the index tier and payload indexes",
        lambda i: i.status.index_bytes,
    ),
    (
        "lamina_collection_optimizing",
        "1 while a seal, compaction or index build runs",
        lambda i: int(i.status.optimizing),
    ),
    ("lamina_collection_tenants", "Tenants of a multi-tenant collection", lambda i: i.status.tenants),
    (
        "lamina_collection_tenant_partitions",
        "Tenants with an HNSW partition of their own",
        lambda i: i.status.tenant_partitions,
    ),
)


class _EngineCollector(Collector):
    """Gauges read from the database and the admission gate when Prometheus scrapes."""

    def __init__(self, db: DatabaseProtocol, gate: Gate) -> None:
        self.db = db
        self.gate = gate

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        gate = self.gate
        yield GaugeMetricFamily(
            "lamina_requests_in_flight", "Requests running or waiting for a worker", gate.in_flight
        )
        yield CounterMetricFamily(
            "lamina_requests_rejected", "Requests turned away (max_concurrent_requests)", gate.rejected
        )
        yield CounterMetricFamily(
            "lamina_requests_abandoned", "Requests stopped because the client left", gate.abandoned
        )
        families = [
            (GaugeMetricFamily(name, text, labels=["collection"]), value)
            for name, text, value in COLLECTION_GAUGES
        ]
        try:
            names = self.db.list_collections()
        except LaminaError:
            names = []  # closed meanwhile
        up = GaugeMetricFamily(
            "lamina_replica_up",
            "Sharded: 1 if the replica answered within 2 s",
            labels=["collection", "shard", "replica"],
        )
        behind = GaugeMetricFamily(
            "lamina_replica_behind_writes",
            "Sharded: acknowledged writes the replica has not applied (catching up)",
            labels=["collection", "shard", "replica"],
        )
        for name in names:
            try:
                col = self.db.get_collection(name)
                info = col.info()
            except LaminaError:
                continue  # dropped meanwhile
            for family, value in families:
                family.add_metric([name], value(info))
            if isinstance(col, ShardedCollection):
                for shard, replica, answering, lag in col.health():
                    labels = [name, str(shard), str(replica)]
                    up.add_metric(labels, 1.0 if answering else 0.0)
                    behind.add_metric(labels, float(lag))
        yield from (family for family, _ in families)
        yield up
        yield behind


class Metrics:
    """The metrics of one server, in a registry of its own (several servers may share a process)."""

    def __init__(self, db: DatabaseProtocol, gate: Gate) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lamina_requests", "Requests by RPC and status code", ["method", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "lamina_request_seconds",
            "Request latency by RPC",
            ["method"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(db, gate))
        self._http: object | None = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP on ``host:port`` (0 picks a port); returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()  # type: ignore[attr-defined]
            self._http.server_close()  # type: ignore[attr-defined]
            self._http = None
