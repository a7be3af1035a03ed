"""Adapters for RAG frameworks; each needs its extra (``laminadb[langchain]``)."""

from __future__ import annotations

from typing import Any

from lamina.client.api import Client, Collection
from lamina.errors import InvalidArgument, NotFound
from lamina.types import Metric


class LazyCollection:
    """The collection a framework store writes to: looked up when first needed, and
    created on the first write with the embedding's dimension (multi-tenant when the
    store acts for a tenant), so that an empty store needs no knowledge of the model."""

    def __init__(
        self,
        client: Client,
        name: str,
        metric: Metric,
        tenant: str | None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.metric: Metric = metric
        self.tenant = tenant
        self.options = dict(options or {})
        self._collection: Collection | None = None

    def existing(self) -> Collection | None:
        """The collection, or None while it has not been created."""
        if self._collection is None:
            try:
                self._collection = self.client.get_collection(self.name)
            except NotFound:
                return None
        return self._collection

    def for_text(self) -> Collection:
        """The collection, created now with an embedding model (``options["embedding"]``,
        default ``minilm``) if it does not exist yet; InvalidArgument if it has no model."""
        col = self.existing()
        if col is None:
            options = {"multi_tenant": self.tenant is not None, "embedding": "minilm", **self.options}
            col = self.client.create_collection(self.name, metric=self.metric, **options)
            self._collection = col
        if col.config.embedding is None:
            raise InvalidArgument(
                f"collection {self.name!r} has no embedding model: give the store an embedding object, "
                "or use a collection created with embedding="
            )
        return col

    def for_writing(self, dim: int) -> Collection:
        """The collection, created now with ``dim`` if it does not exist yet."""
        col = self.existing()
        if col is None:
            options = {"multi_tenant": self.tenant is not None, **self.options}
            col = self.client.create_collection(self.name, dim=dim, metric=self.metric, **options)
            self._collection = col
        return col
