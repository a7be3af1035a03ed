"""Administration of a collection: payload-index schema changes (sealed segments are
indexed by engine/optimizer/payload_indexes.py), info and index status, snapshots."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import orjson

from lamina.errors import InvalidArgument
from lamina.storage.rocks import CONFIG
from lamina.storage.vectorfile import link_tree
from lamina.types import CollectionInfo, IndexStatus, check_payload_field

from .manifest import degraded_error
from .payload import MutableIndexes
from .state import SEGMENT_DIR, CollectionState

log = logging.getLogger("lamina.engine")


class Admin(CollectionState):
    """Schema, status and snapshots of a collection."""

    def create_payload_index(self, field: str, kind: str) -> bool:
        """Index a payload field (``keyword``, ``int``, ``float``, ``bool``, ``datetime`` or
        ``text``). The mutable segment is indexed now; sealed segments in the background
        (``optimize()`` waits for them); filters are exact meanwhile. Returns False when
        the field already has this index."""
        check_payload_field(field, kind)
        with self._lock:
            self._check_open()
            current = self.config.payload_index.get(field)
            if current == kind:
                return False
            if current is not None:
                raise InvalidArgument(
                    f"field {field!r} already has a {current} index: drop_payload_index({field!r}) first"
                )
            built = MutableIndexes()  # built first: a request stopped midway changes nothing
            self._index_mutable({field: kind}, built)
            config = replace(self.config, payload_index={**self.config.payload_index, field: kind})
            self._store.put_meta({CONFIG: orjson.dumps(config.to_dict())})
            self.config = config
            self._mut_pidx.parts[field] = built.parts.get(field, [])
        self._wake.set()
        log.info("added %s payload index on %r of %r", kind, field, self.name)
        return True

    def drop_payload_index(self, field: str) -> bool:
        """Remove a payload index; False when the field had none."""
        with self._lock:
            self._check_open()
            if field not in self.config.payload_index:
                return False
            config = replace(
                self.config, payload_index={k: v for k, v in self.config.payload_index.items() if k != field}
            )
            self._store.put_meta({CONFIG: orjson.dumps(config.to_dict())})
            self.config = config
            self._mut_pidx.drop_field(field)
            for segment in self._segments:
                segment.drop_payload_index(field)
        return True

    def info(self) -> CollectionInfo:
        """Settings, live point count and the state of the index tier."""
        with self._lock:
            self._check_open()
            mutable = self._mutable_count()
            segments = list(self._segments)
            payload_bytes = self._mut_pidx.nbytes() + sum(
                index.nbytes() for s in segments for index in s.payload.values()
            )
            error = self._error
            busy = self._busy
            partitions = [p for parts in self._partitions.values() for p in parts]
            tenants = len(self._tenants.codes)
        notes = sorted({s.note for s in segments if s.note} | ({error} if error else set()))
        if self._damaged:
            notes.insert(0, str(degraded_error(self.name, self._damaged)))
        status = IndexStatus(
            segments=len(segments),
            indexed_points=sum(s.live_count for s in segments),
            mutable_points=mutable,
            index_bytes=sum(s.index_bytes() for s in segments)
            + payload_bytes
            + sum(p.nbytes() for p in partitions),
            note="; ".join(notes),
            optimizing=busy,
            tenants=tenants,
            tenant_partitions=len({p.code for p in partitions}),
            write_stall=self._store.write_stall(self._fault),
        )
        return CollectionInfo(self.name, self.config, status.indexed_points + mutable, status)

    def snapshot(self, dest: Path) -> int:
        """Write a consistent copy of the collection into the new folder ``dest``: a RocksDB
        checkpoint and hard links to the sealed segment files its manifest names. Writers
        wait while it is taken (links, no data copied); searches do not. Returns the
        number of live points the copy holds."""
        with self._lock:
            self._check_open()
            self._store.checkpoint(dest)
            segments = dest / SEGMENT_DIR
            segments.mkdir(exist_ok=True)
            for segment in self._segments:
                link_tree(segment.folder, segments / segment.folder.name)
            return self._mutable_count() + sum(s.live_count for s in self._segments)
