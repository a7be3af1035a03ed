"""Byte encodings of RocksDB keys.

Point ids sort integers first (numerically: 8-byte big-endian), then strings
(by UTF-8 bytes), which is the order ``scroll`` pages in. Rows are 8-byte
big-endian so that iteration follows insertion order.
"""

from __future__ import annotations

import struct

from lamina.types import PointId

_U64 = struct.Struct(">Q")
_INT_TAG = b"\x00"
_STR_TAG = b"\x01"


def id_key(point_id: PointId) -> bytes:
    if isinstance(point_id, str):
        return _STR_TAG + point_id.encode("utf-8")
    return _INT_TAG + _U64.pack(point_id)


def id_from_key(key: bytes) -> PointId:
    if key[:1] == _INT_TAG:
        return int(_U64.unpack(key[1:])[0])
    return key[1:].decode("utf-8")


def row_key(row: int) -> bytes:
    return _U64.pack(row)


def row_from_key(key: bytes) -> int:
    return int(_U64.unpack(key)[0])
