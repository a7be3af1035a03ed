"""Limits that protect the engine and the server, and the server's config file.

Every limit has a documented default (``docs/configuration.md`` lists them) and can
be changed in the ``[limits]`` table of the file given to ``lamina serve --config``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.errors import InvalidArgument

if TYPE_CHECKING:
    from lamina.server.auth import ApiKey


@dataclass(frozen=True)
class Limits:
    """Request bounds; a request past one is rejected with a message naming the limit.

    Defaults: 10,000 points per write batch, 1,000 query vectors per batch search,
    k up to 10,000, 65,536 dimensions, 1 MiB of JSON payload per point, filters
    nested 32 levels deep, ids and strings up to 1,024 bytes, 64 MiB gRPC messages,
    10,000 points per scroll page, and 64 requests running or queued in a server at
    once (more are answered RESOURCE_EXHAUSTED), 32 of them from one caller (an API key,
    or a connection when the server has no keys). A filter may hold 10,000 conditions and
    ``$in``/``$nin`` values, and may check 1,000,000 (rows x conditions) against stored
    payloads where no payload index decides (more: RESOURCE_EXHAUSTED naming the field to
    index). An answer estimated larger than ``max_message_bytes`` is refused before any
    work is done. 20,000 texts may wait for an embedding model per process (more are
    answered RESOURCE_EXHAUSTED).
    """

    max_batch: int = 10_000
    max_query_batch: int = 1_000
    max_k: int = 10_000
    max_dim: int = 65_536
    max_payload_bytes: int = 1 << 20
    max_filter_depth: int = 32
    max_id_bytes: int = 1_024
    max_message_bytes: int = 64 << 20
    max_scroll_limit: int = 10_000
    max_concurrent_requests: int = 64
    max_requests_per_caller: int = 32
    max_filter_terms: int = 10_000
    max_filter_checks: int = 1_000_000
    max_embed_queue: int = 20_000

    @classmethod
    def from_dict(cls, data: object, where: str = "limits") -> Limits:
        """Limits from a mapping of field name to positive integer; the rest keep their defaults."""
        if not isinstance(data, dict):
            raise InvalidArgument(f"{where} must be a table of limit names to integers")
        known = {f.name for f in fields(cls)}
        values: dict[str, int] = {}
        for key, value in data.items():
            if key not in known:
                raise InvalidArgument(
                    f"{where}.{key} is not a limit; known limits: {', '.join(sorted(known))}"
                )
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{where}.{key} must be a positive integer, got {value!r}")
            values[key] = value
        if values.get("max_message_bytes", 1) > (1 << 31) - 1:
            raise InvalidArgument(f"{where}.max_message_bytes must be below 2 GiB (a gRPC limit)")
        return replace(cls(), **values)


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class ServerConfig:
    """Settings of ``lamina serve``: from a TOML file, then overridden by command-line flags.

    ::

        data = "./lamina-data"
        host = "127.0.0.1"
        port = 6334
        workers = 8
        processes = 2              # server processes on one port: 1 writer + readers (default: a core each)
        sync_server = true         # grpc's thread-pool server, plain searches on its threads (false: grpc.aio)
        sync_writes = true         # fsync the write-ahead log before each reply (false: kill -9 safe only)
        metrics_port = 9464        # Prometheus /metrics (left out: no endpoint); TLS as [tls]
        metrics_key = "sha256:..." # optional: scrapes send Authorization: Bearer <key>
        metrics_names = false      # true: per-collection metrics labelled by name
        grace_seconds = 5.0        # shutdown: time for requests in flight, then they are stopped
        metrics_port = 9464        # Prometheus /metrics (left out: no endpoint)
        http_port = 6335           # the web console (docs/console.md)
        console = true             # false: no console

        [limits]
        max_batch = 10000
        max_concurrent_requests = 64

        [tls]                      # serve TLS with this certificate chain and key (PEM)
        cert = "server.crt"
        key = "server.key"

        [[keys]]                   # API keys by hash (``lamina keys create`` prints one)
        name = "ingest"
        hash = "sha256:..."
        role = "write"             # read | write | admin
        collections = ["docs"]     # optional: only these collections
    """

    data: str = "./lamina-data"
    host: str = "127.0.0.1"
    port: int = 6334
    workers: int = 8
    processes: int | None = (
        None  # server processes sharing the port: one writer, the rest readers (None: a core each)
    )
    #: grpc's sync (thread-pool) server, a plain search answered on the gRPC thread that took it;
    #: False: grpc.aio's, every call on the event loop (server/app.py; docs/architecture.md, "Server")
    sync_server: bool = True
    sync_writes: bool = True
    limits: Limits = field(default_factory=Limits)
    metrics_port: int | None = None  # serve Prometheus metrics on this port (same host)
    metrics_key: str | None = None  # sha256:... hash of the key a scrape must send (None: no key)
    metrics_names: bool = False  # label collection metrics with names (default: totals only)
    grace_seconds: float = 5.0  # on SIGTERM: time requests in flight get before their work is stopped
    http_port: int = 6335  # the web console's port (same host as gRPC, same TLS)
    console: bool = True  # serve the web console on http_port
    keys: tuple[ApiKey, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> ServerConfig:
        """Read a TOML config file; InvalidArgument says which setting is wrong."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise InvalidArgument(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"config file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> ServerConfig:
        types: dict[str, type] = {
            "data": str,
            "host": str,
            "port": int,
            "workers": int,
            "processes": int,
            "sync_server": bool,
            "sync_writes": bool,
            "metrics_port": int,
            "metrics_key": str,
            "metrics_names": bool,
            "grace_seconds": float,
            "http_port": int,
            "console": bool,
        }
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "limits":
                values["limits"] = Limits.from_dict(value, f"{where}: limits")
                continue
            if key == "keys":
                from lamina.server.auth import ApiKey

                if not isinstance(value, list):
                    raise InvalidArgument(f"{where}: keys must be an array of tables ([[keys]])")
                values["keys"] = tuple(
                    ApiKey.from_dict(k, f"{where}: keys[{i}]") for i, k in enumerate(value)
                )
                continue
            if key == "tls":
                if not isinstance(value, dict) or set(value) != {"cert", "key"}:
                    raise InvalidArgument(f"{where}: [tls] needs exactly cert and key (PEM file paths)")
                for part in ("cert", "key"):
                    if not isinstance(value[part], str) or not Path(value[part]).is_file():
                        raise InvalidArgument(f"{where}: tls.{part} {value[part]!r} is not a readable file")
                values["tls_cert"], values["tls_key"] = value["cert"], value["key"]
                continue
            if key not in types:
                raise InvalidArgument(
                    f"{where}: unknown setting {key!r}; known: {', '.join([*types, 'limits', 'tls', 'keys'])}"
                )
            want = types[key]
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise InvalidArgument(f"{where}: {key} must be a {want.__name__}, got {value!r}")
            values[key] = value
        config = cls(**values)
        if not 0 <= config.port <= 65535:
            raise InvalidArgument(f"{where}: port must be in 0..65535, got {config.port}")
        if not 0 <= config.http_port <= 65535:
            raise InvalidArgument(f"{where}: http_port must be in 0..65535, got {config.http_port}")
        if config.workers < 1:
            raise InvalidArgument(f"{where}: workers must be at least 1, got {config.workers}")
        if config.processes is not None and config.processes < 1:
            raise InvalidArgument(f"{where}: processes must be at least 1, got {config.processes}")
        if config.metrics_key is not None and (
            not config.metrics_key.startswith("sha256:") or len(config.metrics_key) != 71
        ):
            raise InvalidArgument(
                f"{where}: metrics_key must be 'sha256:' and 64 hex digits (lamina keys create prints a hash); "
                "never put the key itself in the config"
            )
        if not 0 <= config.grace_seconds <= 3600:
            raise InvalidArgument(f"{where}: grace_seconds must be in 0..3600, got {config.grace_seconds}")
        return config
