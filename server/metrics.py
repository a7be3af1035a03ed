"""Prometheus metrics of one server: per-RPC request counts and latency histograms,
requests in flight, turned away and abandoned, and points, segments, index memory and
background work of the collections (read from the engine at scrape time): totals over
all collections, or per collection (labelled with its name) when ``metrics_names`` is set,
since names and sizes of collections are themselves information.

``lamina serve --metrics-port 9464`` serves them at ``http://<host>:9464/metrics``, over
TLS with the gRPC port's certificate when the server has one (``https://``), and only to
scrapes that carry ``Authorization: Bearer <key>`` when ``metrics_key`` (the key's
``sha256:`` hash, as ``lamina keys create`` prints it) is set. Binding it to an address
other machines reach without a key or TLS logs a warning.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import math
import os
import socket
import ssl
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from lamina.engine.protocol import DatabaseProtocol
from lamina.engine.sharded import ShardedCollection
from lamina.errors import LaminaError
from lamina.server.auth import hash_key
from lamina.server.network import bare_host, host_port, is_loopback
from lamina.types import CollectionInfo

if TYPE_CHECKING:
    from lamina.server.admission import Gate

log = logging.getLogger("lamina.server")

#: the folder where each process of ``lamina serve --processes N`` keeps its request counts
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
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
    (
        "lamina_collection_write_stalled",
        "1 while writes are refused: disk full, read-only file system or --read-only (info() says why)",
        lambda i: int(bool(i.status.write_stall)),
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

    def __init__(self, db: DatabaseProtocol, gate: Gate, names: bool) -> None:
        self.db = db
        self.gate = gate
        self.names = names

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
        try:
            names = self.db.list_collections()
        except LaminaError:
            names = []  # closed meanwhile
        by_name = ["collection"] if self.names else []  # without names: totals over the collections
        families = [
            (
                GaugeMetricFamily(name, text + ("" if self.names else " (all collections)"), labels=by_name),
                value,
            )
            for name, text, value in COLLECTION_GAUGES
        ]
        totals = [0.0] * len(families)
        up = GaugeMetricFamily(
            "lamina_replica_up",
            "Sharded: 1 if the replica answered within 2 s" + ("" if self.names else " (replicas answering)"),
            labels=[*by_name, "shard", "replica"] if self.names else [],
        )
        behind = GaugeMetricFamily(
            "lamina_replica_behind_writes",
            "Sharded: acknowledged writes the replica has not applied (catching up)",
            labels=[*by_name, "shard", "replica"] if self.names else [],
        )
        replicas_up = lag_total = 0.0
        sharded = False
        collections = 0
        for name in names:
            try:
                col = self.db.get_collection(name)
                info = col.info()
            except LaminaError:
                continue  # dropped meanwhile
            collections += 1
            for i, (family, value) in enumerate(families):
                if self.names:
                    family.add_metric([name], value(info))
                else:
                    totals[i] += value(info)
            if isinstance(col, ShardedCollection):
                sharded = True
                for shard, replica, answering, lag in col.health():
                    if self.names:
                        labels = [name, str(shard), str(replica)]
                        up.add_metric(labels, 1.0 if answering else 0.0)
                        behind.add_metric(labels, float(lag))
                    replicas_up += 1.0 if answering else 0.0
                    lag_total += float(lag)
        if not self.names:
            for (family, _), total in zip(families, totals, strict=True):
                family.add_metric([], total)
            if sharded:
                up.add_metric([], replicas_up)
                behind.add_metric([], lag_total)
        yield GaugeMetricFamily("lamina_collections", "Collections", collections)
        yield from (family for family, _ in families)
        yield up
        yield behind


class Metrics:
    """The metrics of one server, in a registry of its own (several servers may share a process)."""

    def __init__(self, db: DatabaseProtocol, gate: Gate, names: bool = False) -> None:
        self.registry = CollectorRegistry()
        # lamina serve --processes N: every process counts into files of this folder, and the
        # writer's endpoint sums them (prometheus_client's multiprocess mode)
        shared = os.environ.get(MULTIPROCESS_ENV)
        own = None if shared else self.registry
        self.requests = Counter(
            "lamina_requests", "Requests by RPC and status code", ["method", "code"], registry=own
        )
        self.latency = Histogram(
            "lamina_request_seconds", "Request latency by RPC", ["method"], buckets=BUCKETS, registry=own
        )
        if shared:
            MultiProcessCollector(self.registry, path=shared)
        self.registry.register(_EngineCollector(db, gate, names))
        self._counters: dict[tuple[str, str], Any] = {}  # (method, code) -> its series of requests
        self._timers: dict[str, Any] = {}  # method -> its latency series
        self._http: WSGIServer | None = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        """Count one request and its latency (the labelled series are looked up once each)."""
        counter = self._counters.get((method, code))
        if counter is None:
            counter = self._counters[(method, code)] = self.requests.labels(method, code)
        timer = self._timers.get(method)
        if timer is None:
            timer = self._timers[method] = self.latency.labels(method)
        counter.inc()
        timer.observe(seconds)

    def serve(
        self, host: str, port: int, tls: tuple[bytes, bytes] | None = None, key_hash: str | None = None
    ) -> int:
        """Serve ``/metrics`` on ``host:port`` (0 picks a port), over TLS with ``tls``
        (certificate chain, private key: the gRPC port's), to scrapes carrying the key of
        ``key_hash`` when given; returns the port."""
        app = make_wsgi_app(self.registry)
        if key_hash is not None:
            app = _with_key(app, key_hash)

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in bare_host(host) else socket.AF_INET

        httpd = make_server(bare_host(host), port, app, Server, handler_class=_Quiet)
        if tls is not None:
            httpd.socket = _tls_context(*tls).wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, name="lamina-metrics", daemon=True).start()
        self._http = httpd
        bound = int(httpd.server_port)
        log.info(
            "metrics on %s://%s/metrics%s",
            "https" if tls else "http",
            host_port(host, bound),
            " (key required)" if key_hash else "",
        )
        for warning in exposure_warnings(host, tls is not None, key_hash is not None):
            log.warning(warning)
        return bound

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def exposure_warnings(host: str, tls: bool, key: bool) -> list[str]:
    """What to warn about when the metrics endpoint binds ``host`` (with TLS, with a key):
    nothing on loopback; elsewhere, a missing key and plaintext."""
    if is_loopback(host):
        return []
    warnings = []
    if not key:
        warnings.append(
            f"the metrics endpoint on {host} needs no key: anyone who reaches it can read request rates "
            "and collection sizes. Set metrics_key (lamina keys create prints a hash) or bind 127.0.0.1"
        )
    if not tls:
        warnings.append(f"the metrics endpoint on {host} is plaintext: configure [tls] to encrypt it")
    return warnings


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not logged
        pass


def _with_key(app: Callable[..., Iterable[bytes]], key_hash: str) -> Callable[..., Iterable[bytes]]:
    """``app`` for requests carrying ``Authorization: Bearer <key>`` of ``key_hash``; 401 otherwise."""

    def checked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "")
        token = given[len("Bearer ") :].strip() if given.startswith("Bearer ") else ""
        if token and hmac.compare_digest(hash_key(token), key_hash):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
        )
        return [b"this metrics endpoint needs a key: send Authorization: Bearer <key>\n"]

    return checked


def _tls_context(cert: bytes, key: bytes) -> ssl.SSLContext:
    """A server TLS context from PEM bytes (ssl loads files: they live in a private temp dir
    for the moment it reads them)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="lamina-tls-") as folder:
        cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_file.write_bytes(cert)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key)
        context.load_cert_chain(cert_file, key_file)
    return context


def _rss_bytes() -> float | None:
    """This process's resident memory (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return float(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return None


def bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The ``q`` quantile of observations counted in cumulative histogram buckets (upper
    ``bounds``, the last +Inf), interpolated within its bucket as Prometheus'
    ``histogram_quantile`` does; None when there are no observations."""
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bucket: its bound is all that is known
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


class MetricsHistory:
    """The last minutes of the server's own metrics, for the console's charts: every
    ``interval`` seconds a background thread reads the request counters and latency
    histogram (the series Prometheus scrapes) and the process's memory, and keeps
    ``keep`` samples in a ring buffer. The engine's gauges (points, index memory) are
    read only while someone watches (``series`` was called in the last minute), so that
    nobody looking costs the engine nothing."""

    WATCHED_FOR = 60.0

    def __init__(
        self, metrics: Metrics, db: DatabaseProtocol, interval: float = 2.0, keep: int = 300
    ) -> None:
        self.metrics = metrics
        self.db = db
        self.interval = interval
        self._samples: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watched_at = -math.inf
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="lamina-metrics-history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except Exception:  # a sample is worth less than the thread taking them
                logging.getLogger("lamina.server").exception("metrics sample failed")

    def _engine_totals(self) -> tuple[float, float] | None:
        if time.monotonic() - self._watched_at > self.WATCHED_FOR:
            return None
        points = index_bytes = 0.0
        try:
            names = self.db.list_collections()
        except LaminaError:
            return None
        for name in names:
            try:
                info = self.db.get_collection(name).info()
            except LaminaError:
                continue  # dropped meanwhile
            points += info.count
            index_bytes += info.status.index_bytes
        return points, index_bytes

    def _sample(self) -> None:
        requests = errors = 0.0
        for metric in self.metrics.requests.collect():
            for s in metric.samples:
                if s.name.endswith("_total"):
                    requests += s.value
                    if s.labels.get("code") != "OK":
                        errors += s.value
        buckets: dict[float, float] = {}
        for metric in self.metrics.latency.collect():
            for s in metric.samples:
                if s.name.endswith("_bucket"):
                    bound = float(s.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + s.value
        engine = self._engine_totals()
        sample = {
            "time": time.time(),
            "requests": requests,
            "errors": errors,
            "buckets": [buckets.get(b, 0.0) for b in (*BUCKETS, math.inf)],
            "rss_bytes": _rss_bytes(),
            "points": None if engine is None else engine[0],
            "index_bytes": None if engine is None else engine[1],
        }
        with self._lock:
            self._samples.append(sample)

    def series(self) -> dict[str, list[float | None]]:
        """Per interval between two samples: its end time (seconds since the epoch),
        requests per second, errors per second, p50 and p99 latency (seconds, None when
        no request finished in it), resident memory, points and index memory (None while
        nobody watched)."""
        self._watched_at = time.monotonic()
        with self._lock:
            samples = list(self._samples)
        out: dict[str, list[float | None]] = {
            k: [] for k in ("time", "qps", "errors", "p50", "p99", "rss_bytes", "points", "index_bytes")
        }
        bounds = (*BUCKETS, math.inf)
        for before, after in itertools.pairwise(samples):
            seconds = after["time"] - before["time"]
            if seconds <= 0:
                continue
            delta = [a - b for a, b in zip(after["buckets"], before["buckets"], strict=True)]
            out["time"].append(after["time"])
            out["qps"].append((after["requests"] - before["requests"]) / seconds)
            out["errors"].append((after["errors"] - before["errors"]) / seconds)
            out["p50"].append(bucket_quantile(0.5, bounds, delta))
            out["p99"].append(bucket_quantile(0.99, bounds, delta))
            for key in ("rss_bytes", "points", "index_bytes"):
                out[key].append(after[key])
        return out
