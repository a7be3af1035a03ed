"""Input checks shared by the SDK (fail fast, before a round trip) and the engine
(the authority: a server never trusts its clients). One function per kind of input,
one message per mistake, so both transports say the same thing."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import orjson

from lamina.config import Limits
from lamina.errors import InvalidArgument, ResourceExhausted
from lamina.types import COLLECTION_NAME_RE, FloatMatrix, Payload, PointId

U64_MAX = (1 << 64) - 1


def check_collection_name(name: object) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid collection name {name!r}: use 1-128 characters from letters, digits, "
            "'_', '-' and '.', starting with a letter or digit"
        )
    return name


#: longest tenant name, in UTF-8 bytes
MAX_TENANT_BYTES = 256


def check_tenant(tenant: object) -> str:
    """A tenant name: a non-empty string of at most 256 UTF-8 bytes without control characters."""
    if not isinstance(tenant, str) or not tenant:
        raise InvalidArgument(f"invalid tenant {tenant!r}: a tenant is a non-empty string")
    if len(tenant.encode("utf-8", "surrogatepass")) > MAX_TENANT_BYTES or any(
        unicodedata.category(c) in ("Cc", "Cs")
        for c in tenant  # controls (C0, DEL, C1), surrogates
    ):
        raise InvalidArgument(
            f"invalid tenant {tenant[:40]!r}: use at most {MAX_TENANT_BYTES} bytes of printable text"
        )
    return tenant


def check_id(raw: object, limits: Limits) -> PointId:
    """Return the id as ``int`` or ``str``, or raise InvalidArgument saying why not."""
    if isinstance(raw, str):
        if not raw:
            raise InvalidArgument("invalid id '': string ids must be non-empty")
        if len(raw.encode("utf-8", "surrogatepass")) > limits.max_id_bytes:
            raise InvalidArgument(f"invalid id: string ids are limited to {limits.max_id_bytes} bytes")
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument("invalid id: string ids must be valid UTF-8") from None
        return raw
    if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)):
        raise InvalidArgument(
            f"invalid id {raw!r} of type {type(raw).__name__}: ids are unsigned 64-bit integers or strings"
        )
    value = int(raw)
    if not 0 <= value <= U64_MAX:
        raise InvalidArgument(f"invalid id {value}: integer ids must be in [0, 2**64 - 1]")
    return value


def check_ids(ids: Iterable[object], limits: Limits, *, unique: bool = True) -> list[PointId]:
    if isinstance(ids, (str, bytes, int)):
        raise InvalidArgument("ids must be a sequence of ids, e.g. [1, 2] or ['a'], not a single value")
    given = list(ids)
    ints = cast(list[int], given) if all(type(i) is int for i in given) else None
    if ints and min(ints) >= 0 and max(ints) <= U64_MAX:
        out = cast(list[PointId], ints)  # plain in-range ints, the common case: no per-id call
    else:
        out = [check_id(i, limits) for i in given]
    if len(out) > limits.max_batch:
        raise ResourceExhausted(
            f"batch of {len(out)} ids exceeds the limit of {limits.max_batch} per request"
        )
    if unique and len(set(out)) != len(out):
        seen: set[PointId] = set()
        dup = next(i for i in out if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise InvalidArgument(
            f"id {dup!r} appears more than once in the batch: ids in one request must be unique"
        )
    return out


#: largest vector norm accepted: scores of two such vectors (and their distances) stay finite in float32
MAX_NORM = 1e18


#: a float32 squared norm at most this means every value is finite and the norm is under MAX_NORM
#: (1 % headroom covers float32 rounding in the dot product of up to ~100,000 dimensions)
SAFE_NORM2 = (0.99 * MAX_NORM) ** 2


def plain_vector(vector: object, dim: int) -> bool:
    """Whether ``vector`` is a query that needs no conversion: a C-contiguous float32 (dim,)
    array (its values are checked by the caller's one norm against ``SAFE_NORM2``; anything
    else: ``as_query`` converts it or says what is wrong)."""
    return (
        type(vector) is np.ndarray
        and vector.dtype == np.float32
        and vector.shape == (dim,)
        and vector.flags.c_contiguous
    )


def _check_finite(arr: np.ndarray, what: str) -> None:
    # one query: one dot product answers both checks (NaN or inf make it NaN or inf, which fail
    # the comparison, as does an overflow); only a failure takes the precise path below
    if arr.ndim == 1 and arr.dtype == np.float32 and float(np.dot(arr, arr)) <= SAFE_NORM2:
        return
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise InvalidArgument(f"{what} contains NaN or infinity at index {tuple(int(i) for i in bad)}")
    if arr.size and float(np.abs(arr).max()) > MAX_NORM / np.sqrt(arr.shape[-1]):  # cheap pre-check
        norms = np.sqrt(np.square(arr.reshape(-1, arr.shape[-1]), dtype=np.float64).sum(axis=1))
        if (norms > MAX_NORM).any():
            bad_row = int(np.flatnonzero(norms > MAX_NORM)[0])
            raise InvalidArgument(
                f"{what} row {bad_row} has norm {norms[bad_row]:.3g}, over the limit of {MAX_NORM:.0e}: "
                "scores would overflow float32; scale the vectors down"
            )


def as_matrix(vectors: object, dim: int, what: str = "vectors") -> FloatMatrix:
    """Return a C-contiguous float32 (n, dim) array of finite values."""
    arr = as_rows(vectors, what)
    if arr.shape[1] != dim:
        raise InvalidArgument(f"{what} have dimension {arr.shape[1]} but the collection has dimension {dim}")
    _check_finite(arr, what)
    return np.ascontiguousarray(arr)


def as_vector(vector: object) -> FloatMatrix:
    """Return one vector as a 1-d float32 array (a (1, d) array is accepted too)."""
    if isinstance(vector, np.ndarray) and vector.dtype == np.float32 and vector.ndim == 1:
        return np.ascontiguousarray(vector)  # the common case, without the conversions below
    try:
        with np.errstate(over="ignore"):
            arr = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"query vector must be numeric: {exc}") from None
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InvalidArgument(
            f"query vector must be 1-d, got shape {arr.shape}; use search_batch for many queries"
        )
    return np.ascontiguousarray(arr)


def as_rows(vectors: object, what: str = "vectors") -> FloatMatrix:
    """Return vectors as a 2-d float32 array (a 1-d array is one row), dimension unchecked."""
    try:
        with np.errstate(over="ignore"):  # values past float32 range become inf, rejected later
            arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} must be a numeric (n, dim) array: {exc}") from None
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidArgument(f"{what} must be a 2-d array of shape (n, dim), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def as_query(vector: object, dim: int) -> FloatMatrix:
    """Return a single query as a float32 (dim,) array."""
    arr = as_vector(vector)
    if arr.shape[0] != dim:
        raise InvalidArgument(
            f"query vector has dimension {arr.shape[0]} but the collection has dimension {dim}"
        )
    _check_finite(arr, "query vector")
    return arr


def check_documents(documents: object, n: int | None, limits: Limits, what: str = "document") -> list[str]:
    """``documents`` as a list of non-empty strings (``n`` of them, when given: one per id),
    or InvalidArgument saying which is not."""
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise InvalidArgument(f"{what}s must be a list of strings, got {type(documents).__name__}")
    if n is not None and len(documents) != n:
        raise InvalidArgument(f"got {len(documents)} {what}s for {n} ids: give one id per {what}")
    if len(documents) > limits.max_batch:
        raise ResourceExhausted(
            f"{len(documents)} {what}s in one call; the limit is max_batch={limits.max_batch}"
        )
    for i, text in enumerate(documents):
        if not isinstance(text, str):
            raise InvalidArgument(f"{what} {i} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidArgument(f"{what} {i} is empty: there is nothing to embed")
    return list(cast(Sequence[str], documents))


def check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgument(f"{name} must be an integer, got {type(value).__name__}")
    return int(value)


def check_k(k: object, limits: Limits) -> int:
    k = check_int("k", k)
    if k <= 0:
        raise InvalidArgument(f"k must be positive, got {k}")
    if k > limits.max_k:
        raise InvalidArgument(f"k={k} exceeds the maximum of {limits.max_k}")
    return int(k)


def check_json_value(value: Any, path: str = "payload", depth: int = 0, max_depth: int = 64) -> None:
    """Raise InvalidArgument unless ``value`` is plain JSON (finite numbers, str keys)."""
    if depth > max_depth:
        raise InvalidArgument(f"{path} is nested deeper than {max_depth} levels")
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not -(1 << 63) <= value <= U64_MAX:
            raise InvalidArgument(f"{path} holds integer {value} outside the 64-bit range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{path} holds {value}: JSON has no NaN or infinity")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(f"{path} has key {key!r}: JSON object keys must be strings")
            check_json_value(item, f"{path}.{key}", depth + 1, max_depth)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json_value(item, f"{path}[{i}]", depth + 1, max_depth)
        return
    raise InvalidArgument(f"{path} holds a {type(value).__name__}, which is not JSON")


def encode_payloads(payloads: Sequence[object] | None, n: int, limits: Limits) -> list[bytes]:
    """Validate payloads (one JSON object per point, or None) and encode them as JSON bytes."""
    if payloads is None:
        return [b"{}"] * n
    if isinstance(payloads, dict):
        raise InvalidArgument("payloads must be a list with one dict per point, not a single dict")
    payload_list = list(payloads)
    if len(payload_list) != n:
        raise InvalidArgument(
            f"got {len(payload_list)} payloads for {n} ids: give one payload per id (or none)"
        )
    out = []
    for i, payload in enumerate(payload_list):
        if payload is None:
            out.append(b"{}")
            continue
        if not isinstance(payload, dict):
            raise InvalidArgument(
                f"payloads[{i}] is a {type(payload).__name__}: each payload must be a JSON object (dict)"
            )
        check_json_value(payload, f"payloads[{i}]")
        blob = orjson.dumps(payload)
        if len(blob) > limits.max_payload_bytes:
            raise InvalidArgument(
                f"payloads[{i}] is {len(blob)} bytes of JSON, over the limit of {limits.max_payload_bytes}"
            )
        out.append(blob)
    return out


def decode_object(blob: bytes | str, what: str) -> dict[str, Any]:
    """Parse a JSON object received as ``blob``; InvalidArgument, naming ``what``, if it is
    not valid JSON or not an object."""
    try:
        value = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def decode_payload(blob: bytes | str) -> Payload:
    """Parse a payload received as JSON; InvalidArgument if it is not a JSON object."""
    return decode_object(blob, "payload")


def check_tenant_use(collection: str, multi_tenant: bool, tenant: str | None, *, write: bool = False) -> None:
    """The tenant rule: every request to a multi-tenant collection names a tenant, no
    request to another collection does."""
    if not multi_tenant:
        if tenant is not None:
            raise InvalidArgument(
                f"collection {collection!r} is not multi-tenant: leave tenant out "
                "(create the collection with multi_tenant=True to keep tenants apart)"
            )
        return
    if tenant is None:
        raise InvalidArgument(
            f"collection {collection!r} is multi-tenant: every {'write' if write else 'read'} "
            "names its tenant (tenant=...)"
        )
    check_tenant(tenant)


def check_points(
    ids: Sequence[PointId],
    vectors: object,
    payloads: Sequence[Payload | None] | None,
    dim: int,
    limits: Limits,
) -> tuple[list[PointId], FloatMatrix, list[bytes]]:
    """An upsert's ids, vectors (float32, ``dim`` wide) and encoded payloads, checked."""
    id_list = check_ids(ids, limits)
    if not id_list:
        raise InvalidArgument("upsert needs at least one point: ids is empty")
    matrix = as_matrix(vectors, dim)
    if matrix.shape[0] != len(id_list):
        raise InvalidArgument(f"got {matrix.shape[0]} vectors for {len(id_list)} ids: give one vector per id")
    return id_list, matrix, encode_payloads(payloads, len(id_list), limits)


def check_directions(norms: np.ndarray) -> None:
    """InvalidArgument for the first zero vector among rows of squared ``norms`` (cosine)."""
    if (norms == 0).any():
        bad = int(np.flatnonzero(norms == 0)[0])
        raise InvalidArgument(f"vector {bad} is all zeros: a zero vector has no direction under cosine")
