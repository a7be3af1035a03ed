"""Limits that protect the engine and the server, with their documented defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Request bounds; a request past one is rejected with a message naming the limit.

    Defaults: 10,000 points per write batch, 1,000 query vectors per batch search,
    k up to 10,000, 65,536 dimensions, 1 MiB of JSON payload per point, filters
    nested 32 levels deep, ids and strings up to 1,024 bytes, 64 MiB gRPC messages.
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


DEFAULT_LIMITS = Limits()
