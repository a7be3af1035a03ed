"""API keys and what each may do.

Keys are configured in the server's config file by their SHA-256 hash (``lamina keys
create`` makes one and prints the stanza), never in clear. Clients send the key as
``authorization: Bearer <key>`` metadata. Keys are random 256-bit tokens, so a plain
hash is as hard to invert as the key is to guess; lookups compare hashes.

Roles are ordered: ``read`` (get, count, scroll, search, describe and list
collections), ``write`` (also upsert, delete points, optimize) and ``admin``
(also create and drop collections, payload indexes and snapshots, delete tenants). A key
may be restricted to some collections: it sees only those in listings and is refused the
rest. A key may be restricted to some tenants: every request it makes must then name one of
them (reads, writes, searches; ``ListTenants`` lists only them), and it may not call what
spans tenants (optimize, payload indexes, snapshots, create or drop collections); the
collections it describes or lists show their settings but not their totals.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from lamina.errors import InvalidArgument, PermissionDenied, Unauthenticated
from lamina.validation import check_collection_name, check_tenant

ROLES = ("read", "write", "admin")
KEY_PREFIX = "lam_"
_HASH_PREFIX = "sha256:"

#: RPCs a tenant-scoped key may call: those acting for one named tenant, and descriptions
TENANT_METHODS = frozenset(
    {
        "Points/Upsert",
        "Points/Delete",
        "Points/Get",
        "Points/Count",
        "Points/Scroll",
        "Points/ListTenants",
        "Points/DeleteTenant",
        "Search/Search",
        "Search/SearchBatch",
        "Search/Query",
        "Search/Embed",  # the collection's model on the caller's text: no tenant's data
        "Collections/Get",
        "Collections/List",
        "Info/GetInfo",
    }
)

#: the least role each RPC needs (service/method); RPCs not listed need admin
REQUIRED_ROLE: dict[str, str] = {
    "Collections/Get": "read",
    "Collections/List": "read",
    "Collections/Optimize": "write",
    "Points/Upsert": "write",
    "Points/Delete": "write",
    "Points/Get": "read",
    "Points/Count": "read",
    "Points/Scroll": "read",
    "Points/ListTenants": "read",
    "Points/DeleteTenant": "admin",
    "Search/Search": "read",
    "Search/SearchBatch": "read",
    "Search/Query": "read",
    "Search/Embed": "read",
    "Info/GetInfo": "read",
}


def new_key() -> str:
    """A fresh random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The form a key is stored in: ``sha256:<hex>``."""
    return _HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One configured key: a name for logs, its hash, a role, and optional collections."""

    name: str
    hash: str
    role: str
    collections: frozenset[str] | None = None  # None: every collection
    tenants: frozenset[str] | None = None  # None: every tenant

    @classmethod
    def from_dict(cls, raw: object, where: str) -> ApiKey:
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{where} must be a table with name, hash and role")
        unknown = set(raw) - {"name", "hash", "role", "collections", "tenants"}
        if unknown:
            raise InvalidArgument(f"{where} has unknown settings {sorted(unknown)}")
        name, digest, role = raw.get("name"), raw.get("hash"), raw.get("role")
        if not isinstance(name, str) or not name or not name.isprintable():
            raise InvalidArgument(f"{where}.name must be a non-empty string of printable characters")
        if not isinstance(digest, str) or not digest.startswith(_HASH_PREFIX) or len(digest) != 71:
            raise InvalidArgument(
                f"{where}.hash must be 'sha256:' and 64 hex digits (lamina keys create prints it); "
                "never put the key itself in the config"
            )
        if role not in ROLES:
            raise InvalidArgument(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
        tenants = raw.get("tenants")
        if tenants is not None:
            if not isinstance(tenants, list) or not tenants:
                raise InvalidArgument(f"{where}.tenants must be a non-empty list of tenant names")
            try:
                tenants = frozenset(check_tenant(t) for t in tenants)
            except InvalidArgument as exc:
                raise InvalidArgument(f"{where}.tenants: {exc}") from None
        collections = raw.get("collections")
        if collections is not None:
            if not isinstance(collections, list) or not collections:
                raise InvalidArgument(f"{where}.collections must be a non-empty list of collection names")
            for c in collections:
                check_collection_name(c)
            collections = frozenset(collections)
        return cls(name, digest, role, collections, tenants)

    def to_toml(self) -> str:
        quote = lambda text: orjson.dumps(text).decode()  # noqa: E731  a TOML basic string, escaped
        lines = [
            "[[keys]]",
            f"name = {quote(self.name)}",
            f"hash = {quote(self.hash)}",
            f"role = {quote(self.role)}",
        ]
        if self.collections is not None:
            lines.append("collections = [" + ", ".join(quote(c) for c in sorted(self.collections)) + "]")
        if self.tenants is not None:
            lines.append(
                "tenants = [" + ", ".join(orjson.dumps(t).decode() for t in sorted(self.tenants)) + "]"
            )
        return "\n".join(lines)

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def sees(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


class Authorizer:
    """Checks a request's key and whether it may make the call. With no keys configured
    every call is allowed (the server then listens on loopback only)."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._by_hash = {k.hash: k for k in keys}
        if len(self._by_hash) != len(keys):
            raise InvalidArgument("two configured API keys have the same hash")

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> ApiKey | None:
        """The key the metadata carries; Unauthenticated if it carries none or an unknown one."""
        if not self.enabled:
            return None
        token = None
        for name, value in metadata or ():
            if name == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[len("Bearer ") :].strip()
            elif name == "x-api-key" and isinstance(value, str):
                token = value.strip()
        if not token:
            raise Unauthenticated("this server requires an API key: pass api_key= to lamina.connect")
        digest = hash_key(token)
        for known, key in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return key
        raise Unauthenticated("the API key is not valid for this server")

    @staticmethod
    def authorize(key: ApiKey | None, method: str, collection: str | None, tenant: str | None = None) -> None:
        """PermissionDenied unless ``key`` may call ``method`` (``Service/Method``) on
        ``collection`` for ``tenant`` (None: the request has no tenant field)."""
        if key is None:
            return
        if key.tenants is not None:
            if method not in TENANT_METHODS:
                raise PermissionDenied(f"key {key.name!r} is limited to tenants; {method} spans every tenant")
            if tenant is not None and tenant not in key.tenants:
                raise PermissionDenied(
                    f"key {key.name!r} is limited to some tenants: name one of them (tenant=...)"
                    if not tenant
                    else f"key {key.name!r} may not act for tenant {tenant!r}"
                )
        role = REQUIRED_ROLE.get(method, "admin")
        if not key.may(role):
            raise PermissionDenied(f"key {key.name!r} has role {key.role!r}; {method} needs {role}")
        if collection is not None and not key.sees(collection):
            raise PermissionDenied(f"key {key.name!r} may not use collection {collection!r}")
        if collection is None and key.collections is not None and method.endswith("Snapshots"):
            raise PermissionDenied(f"key {key.name!r} is limited to some collections: name one")
