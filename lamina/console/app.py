"""The web console's HTTP server: static pages and the JSON API they call.

It runs on the gRPC server's event loop (aiohttp) and reaches the engine only through
``lamina.console.transport``: every data call is an SDK operation sent through the server's
``Api`` pipeline, so the console's rules, limits and error messages are the gRPC API's.
The JSON endpoints are documented in docs/console.md and usable without the pages.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, cast

import orjson
from aiohttp import web

from lamina.client.api import AsyncClient, AsyncCollection, _CollectionOps
from lamina.console.transport import InProcessTransport, client_for
from lamina.errors import FailedPrecondition, InvalidArgument, LaminaError, NotFound
from lamina.server.app import LaminaServer
from lamina.server.auth import ApiKey
from lamina.server.metrics import MetricsHistory
from lamina.server.network import is_loopback
from lamina.validation import decode_object

log = logging.getLogger("lamina.console")

DEFAULT_HTTP_PORT = 6335

#: seconds a console call may run before its work is stopped (a filter over stored payloads
#: of a large collection, say); a browser waits no longer than this for a page's data
REQUEST_TIMEOUT = 30.0

#: gRPC status -> HTTP status, as Google's HTTP/JSON mapping of gRPC does
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

#: what the buttons of the pages do, as the RPC each one makes (their visibility follows
#: ``Authorizer.authorize`` for the caller's key: the gRPC API's rules, not a copy of them)
ACTIONS = {
    "create_collection": "Collections/Create",
    "delete_collection": "Collections/Delete",
    "create_snapshot": "Collections/CreateSnapshot",
    "delete_snapshot": "Collections/DeleteSnapshot",
    "list_snapshots": "Collections/ListSnapshots",
}

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".md": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}


def static_files() -> dict[str, bytes]:
    """The console's pages and vendored scripts, by URL path under /static/, read through
    importlib.resources from the installed package (not from a source checkout)."""
    files: dict[str, bytes] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif Path(entry.name).suffix in _CONTENT_TYPES:
                files[prefix + entry.name] = entry.read_bytes()

    walk(resources.files("lamina.console") / "static", "")
    if "index.html" not in files:
        raise FailedPrecondition("the console's files are missing from the installed package (index.html)")
    return files


def _json(data: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(code: str, message: str, status: int | None = None) -> web.Response:
    """The one shape of every error: ``{"error": {"code": <gRPC status name>, "message": ...}}``."""
    return _json({"error": {"code": code, "message": message}}, status or HTTP_STATUS.get(code, 500))


MAX_BYTES = web.AppKey("max_bytes", int)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a short JSON error: Lamina errors with their gRPC status and message,
    HTTP errors (unknown route, wrong method, body too large) likewise, anything else as an
    internal error whose details go to the server log, never to the client."""
    try:
        response = await handler(request)
    except LaminaError as exc:
        response = error_response(exc.code, str(exc))
    except web.HTTPRequestEntityTooLarge:
        response = error_response(
            "RESOURCE_EXHAUSTED",
            f"request body is larger than the limit max_message_bytes={request.app[MAX_BYTES]}",
            413,
        )
    except web.HTTPNotFound:
        response = error_response("NOT_FOUND", f"no such route: {request.method} {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = error_response(
            "INVALID_ARGUMENT", f"{request.method} is not allowed on {request.path}; use {allowed}", 405
        )
    except web.HTTPException as exc:
        response = error_response(
            "INVALID_ARGUMENT" if exc.status < 500 else "INTERNAL", exc.reason, exc.status
        )
    except Exception:
        log.exception("console: internal error on %s %s", request.method, request.path)
        response = error_response("INTERNAL", "internal error in Lamina; the server log has the details")
    response.headers.update(_SECURITY_HEADERS)
    return response


async def _body(request: web.Request, known: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object; InvalidArgument names what is wrong with it."""
    raw = await request.read()  # bounded by client_max_size (max_message_bytes)
    if not raw:
        return {}
    body = decode_object(raw, "request body")
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise InvalidArgument(f"unknown field(s) {unknown}; known: {', '.join(known)}")
    return body


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be true or false, got {value!r}")
    return value


def _optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise InvalidArgument(f"{name} must be {what}, got {value!r}")
    return value


class Console:
    """The web console of one ``LaminaServer``: ``await console.start(server)`` binds
    ``host:port`` (default: the gRPC host; ``port=0`` picks one) with the server's TLS
    settings; ``await console.stop()`` closes it. ``announce`` prints its address;
    ``sample_every``: seconds between two samples of the metrics charts; ``request_timeout``:
    the deadline of each call a page makes (past it the work stops, as for a gRPC client's
    deadline, and the page shows DEADLINE_EXCEEDED)."""

    def __init__(
        self,
        port: int = DEFAULT_HTTP_PORT,
        host: str | None = None,
        announce: bool = False,
        sample_every: float = 2.0,
        request_timeout: float | None = REQUEST_TIMEOUT,
    ) -> None:
        self.port = port
        self.request_timeout = request_timeout
        self.sample_every = sample_every
        self.host = host
        self.announce = announce
        self.url = ""
        self.history: MetricsHistory | None = None
        self._runner: web.AppRunner | None = None
        self._files: dict[str, bytes] = {}
        self._server: LaminaServer | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self, server: LaminaServer) -> None:
        assert server.api is not None and server.metrics is not None, "start the LaminaServer first"
        self._server = server
        self._files = static_files()
        host = self.host or server.host
        app = web.Application(middlewares=[_errors], client_max_size=server.db.limits.max_message_bytes)
        app[MAX_BYTES] = server.db.limits.max_message_bytes
        self._routes(app)
        ssl_context = _ssl_context(server.tls) if server.tls is not None else None
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, self.port, ssl_context=ssl_context, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise FailedPrecondition(
                f"the console cannot listen on {host}:{self.port} ({exc.strerror}): pick another port "
                "with --http-port, or turn the console off with --no-console"
            ) from None
        self._runner = runner
        if runner.addresses:  # the port bound, when 0 asked for any
            self.port = int(runner.addresses[0][1])
        self.history = MetricsHistory(server.metrics, server.db, self.sample_every)
        self.history.start()
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"{'https' if ssl_context else 'http'}://{shown}:{self.port}/"
        log.info("console on %s", self.url)
        if not is_loopback(host):
            log.warning(
                "the console listens on %s, reachable from other machines%s",
                host,
                "" if ssl_context else ": API keys typed into it travel in plaintext; configure [tls]",
            )
        if self.announce:
            print(f"console: {self.url}", flush=True)

    async def stop(self) -> None:
        if self.history is not None:
            self.history.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self._index)
        r.add_get("/static/{path:.+}", self._static)
        r.add_get("/api/session", self._session)
        r.add_get("/api/info", self._info)
        r.add_get("/api/metrics", self._metrics)
        r.add_get("/api/collections", self._list_collections)
        r.add_post("/api/collections", self._create_collection)
        r.add_get("/api/collections/{name}", self._get_collection)
        r.add_delete("/api/collections/{name}", self._delete_collection)
        r.add_post("/api/collections/{name}/scroll", self._scroll)
        r.add_post("/api/collections/{name}/count", self._count)
        r.add_post("/api/collections/{name}/points", self._get_points)
        r.add_post("/api/collections/{name}/search", self._search)
        r.add_get("/api/collections/{name}/tenants", self._tenants)
        r.add_get("/api/collections/{name}/snapshots", self._list_snapshots)
        r.add_post("/api/collections/{name}/snapshots", self._create_snapshot)
        r.add_delete("/api/collections/{name}/snapshots/{snapshot}", self._delete_snapshot)

    # ------------------------------------------------------------------ helpers
    @property
    def server(self) -> LaminaServer:
        assert self._server is not None
        return self._server

    @staticmethod
    def _metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
        """The caller's API key as gRPC metadata (``Authorization: Bearer`` or ``X-Api-Key``)."""
        return tuple(
            (name.lower(), value)
            for name, value in request.headers.items()
            if name.lower() in ("authorization", "x-api-key")
        )

    def _client(self, request: web.Request) -> AsyncClient:
        api = self.server.api
        assert api is not None  # started with the server
        return client_for(api, self._metadata(request), self.server.db.limits, self.request_timeout)

    def _key(self, request: web.Request) -> ApiKey | None:
        """The caller's key (None: the server has no keys); Unauthenticated as for gRPC."""
        return self.server.auth.authenticate(self._metadata(request))

    def _allowed(self, key: ApiKey | None, collection: str | None) -> dict[str, bool]:
        allowed = {}
        for action, method in ACTIONS.items():
            try:
                self.server.auth.authorize(key, method, collection)
                allowed[action] = True
            except LaminaError:
                allowed[action] = False
        return allowed

    async def _collection(self, request: web.Request) -> AsyncCollection:
        return await self._client(request).get_collection(request.match_info["name"])

    # ------------------------------------------------------------------ pages
    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._files["index.html"], content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = self._files.get(path)
        if body is None:
            raise web.HTTPNotFound()
        content_type = _CONTENT_TYPES[Path(path).suffix]
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ server
    async def _session(self, request: web.Request) -> web.Response:
        """Who the caller is and what the pages may offer them."""
        key = self._key(request)
        return _json(
            {
                "auth_required": self.server.auth.enabled,
                "key": None
                if key is None
                else {
                    "name": key.name,
                    "role": key.role,
                    "collections": None if key.collections is None else sorted(key.collections),
                    "tenants": None if key.tenants is None else sorted(key.tenants),
                },
                "allowed": self._allowed(key, None),
                "limits": vars(self.server.db.limits),
            }
        )

    async def _info(self, request: web.Request) -> web.Response:
        info = await self._client(request).server_info()
        info["address"] = f"{self.server.host}:{self.server.port}"
        return _json(info)

    async def _metrics(self, request: web.Request) -> web.Response:
        """The charts' series; a key limited to some collections or tenants gets the request
        rates and memory but not the point totals, which span every collection and tenant."""
        key = self._key(request)
        self.server.auth.authorize(key, "Info/GetInfo", None)
        assert self.history is not None
        series = self.history.series()
        if key is not None and (key.collections is not None or key.tenants is not None):
            series["points"] = [None] * len(series["points"])
            series["index_bytes"] = [None] * len(series["index_bytes"])
        return _json({"interval_seconds": self.history.interval, **series})

    # ------------------------------------------------------------------ collections
    async def _list_collections(self, request: web.Request) -> web.Response:
        key = self._key(request)
        infos = await self._client(request).collections_info()
        return _json({"collections": [{**_info(i), "allowed": self._allowed(key, i.name)} for i in infos]})

    async def _create_collection(self, request: web.Request) -> web.Response:
        known = (
            "name",
            "dim",
            "metric",
            "index",
            "quantization",
            "segment_rows",
            "max_segment_rows",
            "payload_index",
            "multi_tenant",
            "tenant_index_rows",
            "shards",
            "replicas",
        )
        body = await _body(request, known)
        if "name" not in body or "dim" not in body:
            raise InvalidArgument("name and dim are required")
        for field in ("index", "quantization", "payload_index"):
            _optional(body, field, dict, "a JSON object")
        col = await self._client(request).create_collection(**body)
        return _json(_info(await col.info()), 201)

    async def _get_collection(self, request: web.Request) -> web.Response:
        key = self._key(request)
        col = await self._collection(request)
        return _json({**_info(await col.info()), "allowed": self._allowed(key, col.name)})

    async def _delete_collection(self, request: web.Request) -> web.Response:
        await self._client(request).delete_collection(request.match_info["name"])
        return _json({"deleted": request.match_info["name"]})

    # ------------------------------------------------------------------ points
    async def _scroll(self, request: web.Request) -> web.Response:
        body = await _body(request, ("limit", "offset", "filter", "tenant", "with_vector"))
        col = await self._collection(request)
        points, next_offset = await col.scroll(
            limit=body.get("limit", 20),
            offset=body.get("offset"),
            filter=body.get("filter"),
            with_vector=_flag(body, "with_vector", False),
            tenant=_optional(body, "tenant", str, "a string"),
        )
        return _json({"points": points, "next_offset": next_offset})

    async def _count(self, request: web.Request) -> web.Response:
        body = await _body(request, ("filter", "tenant"))
        col = await self._collection(request)
        count = await col.count(body.get("filter"), tenant=_optional(body, "tenant", str, "a string"))
        return _json({"count": count})

    async def _get_points(self, request: web.Request) -> web.Response:
        body = await _body(request, ("ids", "tenant", "with_vector"))
        ids = body.get("ids")
        if not isinstance(ids, list):
            raise InvalidArgument("ids must be a list of point ids")
        col = await self._collection(request)
        points = await col.get(
            ids,
            with_vector=_flag(body, "with_vector", True),
            tenant=_optional(body, "tenant", str, "a string"),
        )
        return _json({"points": points})

    async def _search(self, request: web.Request) -> web.Response:
        """Search by ``vector``, by the vector of point ``id`` ("more like this": the point
        itself comes first) or by ``text`` (embedded with the collection's model); with
        ``explain`` (default), the plan of each segment too."""
        known = (
            "vector",
            "id",
            "text",
            "k",
            "filter",
            "tenant",
            "ef",
            "oversample",
            "exact",
            "plan",
            "explain",
        )
        body = await _body(request, known)
        if sum(key in body for key in ("vector", "id", "text")) != 1:
            raise InvalidArgument(
                "give one of vector (a list of numbers), id (a point's id) or text (a query, on a "
                "collection with an embedding model)"
            )
        tenant = _optional(body, "tenant", str, "a string")
        col = await self._collection(request)
        vector = body.get("vector")
        if "text" in body:
            vector = _optional(body, "text", str, "a string")
        if "id" in body:
            found = await col.get([body["id"]], with_payload=False, with_vector=True, tenant=tenant)
            if not found:
                raise NotFound(f"point {body['id']!r} is not in collection {col.name!r}")
            vector = found[0].vector
        options: dict[str, Any] = {
            "ef": _optional(body, "ef", int, "an integer"),
            "oversample": _optional(body, "oversample", (int, float), "a number"),
            "exact": _flag(body, "exact", False),
            "plan": body.get("plan", "auto"),
            "tenant": tenant,
        }
        k = body.get("k", 10)
        if _flag(body, "explain", True):
            transport = col._transport
            assert isinstance(transport, InProcessTransport)
            # the client's explain checks the arguments and builds the op, as col.explain does
            op = _CollectionOps.explain(cast(_CollectionOps, col), vector, k, body.get("filter"), **options)
            hits, plan = await transport.search_explained(op)
            return _json({"hits": hits, "plan": plan})
        hits = await col.search(vector, k, body.get("filter"), **options)
        return _json({"hits": hits, "plan": None})

    # ------------------------------------------------------------------ tenants, snapshots
    async def _tenants(self, request: web.Request) -> web.Response:
        col = await self._collection(request)
        return _json({"tenants": await col.list_tenants()})

    async def _list_snapshots(self, request: web.Request) -> web.Response:
        snaps = await self._client(request).list_snapshots(request.match_info["name"])
        return _json({"snapshots": snaps})

    async def _create_snapshot(self, request: web.Request) -> web.Response:
        col = await self._collection(request)
        return _json(await col.snapshot(), 201)

    async def _delete_snapshot(self, request: web.Request) -> web.Response:
        name, snapshot = request.match_info["name"], request.match_info["snapshot"]
        await self._client(request).delete_snapshot(name, snapshot)
        return _json({"deleted": snapshot})


def _info(info: Any) -> dict[str, Any]:
    """A CollectionInfo as JSON-ready data (settings, count, index status)."""
    return {"name": info.name, "config": info.config, "count": info.count, "status": info.status}


def _ssl_context(tls: tuple[bytes, bytes]) -> ssl.SSLContext:
    """A server TLS context from the gRPC server's PEM certificate chain and key (the ssl
    module loads them from files only: written to a private temporary folder, then removed)."""
    cert, key = tls
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="lamina-tls-") as folder:
        cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        context.load_cert_chain(cert_path, key_path)
    return context
