"""Plain Python types of the public API: configuration, points and hits.

These are what user code sees in both transports; protobuf messages never leak
past ``lamina.proto.convert``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeAlias, cast, get_args

import numpy as np
import numpy.typing as npt

from lamina.errors import InvalidArgument

#: A point id: an unsigned 64-bit integer or a non-empty string.
PointId: TypeAlias = int | str
#: A JSON object of metadata stored beside a vector.
Payload: TypeAlias = dict[str, Any]
#: A Mongo-style filter, e.g. ``{"lang": "en", "year": {"$gte": 2020}}``.
Filter: TypeAlias = dict[str, Any]
Metric: TypeAlias = Literal["cosine", "dot", "l2"]
METRICS: tuple[str, ...] = get_args(Metric)
FloatMatrix: TypeAlias = npt.NDArray[np.float32]

COLLECTION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class CollectionConfig:
    """Settings fixed when a collection is created.

    >>> CollectionConfig(dim=384, metric="cosine").dim
    384
    """

    dim: int
    metric: Metric = "cosine"

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise InvalidArgument(f"dim must be an integer, got {type(self.dim).__name__}")
        if self.metric not in METRICS:
            raise InvalidArgument(f"unknown metric {self.metric!r}: use one of {', '.join(METRICS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionConfig:
        known = {k: data[k] for k in ("dim", "metric") if k in data}
        return cls(dim=int(known["dim"]), metric=cast(Metric, known.get("metric", "cosine")))


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's name, settings and live point count."""

    name: str
    config: CollectionConfig
    count: int

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def metric(self) -> Metric:
        return self.config.metric


@dataclass(frozen=True)
class Point:
    """A stored point: id, float32 vector (None when not requested) and payload."""

    id: PointId
    vector: FloatMatrix | None = field(default=None, compare=False)
    payload: Payload | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Point):
            return NotImplemented
        same_vec = (self.vector is None and other.vector is None) or (
            self.vector is not None and other.vector is not None and np.array_equal(self.vector, other.vector)
        )
        return self.id == other.id and self.payload == other.payload and same_vec

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Hit:
    """One search result.

    ``score`` is the cosine similarity or dot product (higher is better) or the
    euclidean distance for ``l2`` (lower is better); hits always come best first.
    """

    id: PointId
    score: float
    payload: Payload | None = None
    vector: FloatMatrix | None = field(default=None, compare=False)
