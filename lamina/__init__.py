"""Lamina: a vector search database for Python teams.

>>> import numpy as np, lamina, tempfile
>>> db = lamina.connect(tempfile.mkdtemp())
>>> col = db.create_collection("docs", dim=3, metric="cosine")
>>> col.upsert(ids=[1, 2], vectors=np.eye(3, dtype="float32")[:2], payloads=[{"lang": "en"}, {"lang": "de"}])
2
>>> col.search([1, 0, 0], k=1)[0].id
1
>>> db.close()
"""

from __future__ import annotations

__version__ = "0.1.0"

from lamina.client.api import (
    AsyncClient,
    AsyncCollection,
    Client,
    Collection,
    connect,
    connect_async,
    restore_snapshot,
)
from lamina.config import Limits
from lamina.engine.embedding import register_embedding
from lamina.errors import (
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    DiskFull,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LaminaError,
    NotFound,
    PermissionDenied,
    ReadOnly,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from lamina.types import CollectionConfig, CollectionInfo, EmbeddingConfig, Hit, Point, PointId, SnapshotInfo

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "AsyncCollection",
    "Cancelled",
    "Client",
    "Collection",
    "CollectionConfig",
    "CollectionInfo",
    "DataLoss",
    "DeadlineExceeded",
    "DiskFull",
    "EmbeddingConfig",
    "FailedPrecondition",
    "Hit",
    "Internal",
    "InvalidArgument",
    "LaminaError",
    "Limits",
    "NotFound",
    "PermissionDenied",
    "Point",
    "PointId",
    "ReadOnly",
    "ResourceExhausted",
    "SnapshotInfo",
    "Unauthenticated",
    "Unavailable",
    "__version__",
    "connect",
    "connect_async",
    "register_embedding",
    "restore_snapshot",
]
