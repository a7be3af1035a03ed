"""The console's way to the engine: the client API's operations, run through the server's
own request pipeline in-process.

The console builds every call with the SDK (``AsyncClient`` / ``AsyncCollection``: the
same argument checks as ``lamina.connect``), turns it into the gRPC request the remote
transport would send (``GrpcRequests``), and hands that message to the server's ``Api``,
which checks the API key, role, collections and tenants, applies the admission limit and
runs the servicer, exactly as for a gRPC call, without the network hop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from lamina.client.api import AsyncClient
from lamina.client.transport import Call, GrpcRequests, Op
from lamina.config import Limits
from lamina.errors import ERROR_BY_CODE, Internal
from lamina.proto import convert
from lamina.server.app import Api, CallAborted, CallContext
from lamina.types import Hit, QueryPlan

T = TypeVar("T")


class InProcessTransport:
    """An ``AsyncTransport`` whose calls go to ``api`` in this process, carrying ``metadata``
    (the caller's API key) as a gRPC client would; errors are the ``LaminaError`` a remote
    client would raise, with the server's message."""

    def __init__(
        self, api: Api, metadata: Sequence[tuple[str, str]], limits: Limits, timeout: float | None = None
    ) -> None:
        self.api = api
        self.metadata = tuple(metadata)
        self.timeout = timeout  # each call's deadline, in seconds
        self._requests = GrpcRequests("in-process", limits)

    async def _send(self, call: Call[Any]) -> Any:
        path = f"{call.service.capitalize()}/{call.method}"
        try:
            return await self.api.call(path, call.request, CallContext(self.metadata, timeout=self.timeout))
        except CallAborted as exc:
            raise ERROR_BY_CODE.get(exc.code.name, Internal)(exc.details) from None

    async def run(self, op: Op[T]) -> T:
        call = self._requests.build(op)
        return op.finish(call.decode(await self._send(call)))

    async def search_explained(self, explain: Op[QueryPlan]) -> tuple[list[Hit], QueryPlan]:
        """Run an ``explain`` op and answer its hits (with payloads) as well as its plan,
        from one search: the gRPC Search call carries both."""
        call = self._requests.build(explain)
        call.request.with_payload = True
        response = await self._send(call)
        hits = [convert.hit_from_proto(h, False, True) for h in response.hits]
        return hits, convert.plan_from_proto(response.plan)

    async def close(self) -> None:
        """Nothing to release: no connection is held."""


def client_for(
    api: Api, metadata: Sequence[tuple[str, str]], limits: Limits, timeout: float | None = None
) -> AsyncClient:
    """An ``AsyncClient`` for one console request, acting with the key in ``metadata``; each
    of its calls has ``timeout`` seconds (None: no deadline)."""
    return AsyncClient(InProcessTransport(api, metadata, limits, timeout), limits)
