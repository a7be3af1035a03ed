"""Writes and reads over replicas: each shard's writes are numbered and sent to every
replica in order, acknowledged when all applied them; a read goes to one replica of
each shard in turn, with the shard's acknowledged write number, and moves to another
replica when one is dead or behind. A read carries what is left of its request's
deadline: the replicas stop their work with it, as one node's engine does."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from lamina.errors import DeadlineExceeded, LaminaError, Unavailable
from lamina.types import PointId

from .. import bounds
from .catch_up import CatchUp
from .routing import Behind, Sent, lamina_error_of, split_by_shard

#: seconds past a read's deadline allowed for the replicas to report that they stopped
DEADLINE_GRACE = 2.0


class Replication(CatchUp):
    """Numbered writes and routed reads of a sharded collection."""

    def _write(self, parts: dict[int, tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Apply one write per shard on every replica; the answers (one per shard, in the
        order of ``parts``) once every replica applied its part."""
        sent = [
            self._send(shard, "write", method, args, kwargs)
            for shard, (method, args, kwargs) in parts.items()
        ]
        return [self._settle(*one) for one in sent]

    def _send(self, shard: int, method: str, *args: Any) -> Sent:
        """Number the next write of ``shard`` and send it to every replica as
        ``method(number, *args)``; under the shard's lock, so replicas receive writes in
        the order of their numbers."""
        self._check_open()
        with self._locks[shard]:
            self._next[shard] += 1
            seq = self._next[shard]
            refs = [
                (j, s.handle, getattr(s.handle, method).remote(seq, *args))
                for j, s in enumerate(self._slots[shard])
            ]
        return shard, seq, refs

    def write_parts(self, parts: Sequence[Any], tenant: str | None) -> list[Sent]:
        """Send the parts of one block of a bulk load (Ray object refs, one per shard, made
        by a reading task) to their shards as numbered upserts; ``settle`` each answer."""
        self._check_tenant(tenant, write=True)
        return [self._send(shard, "upsert_part", ref, tenant) for shard, ref in enumerate(parts)]

    def learn(self, names: Sequence[str], tenant: str | None = None) -> None:
        """Tell every shard of payload keys it may not have seen (numbered writes), so that
        every shard checks filters against the same keys as one node would."""
        new = sorted({(tenant or "", n) for n in names} - self._fields)
        if new:
            fresh = [n for _, n in new]
            self._write({s: ("learn_fields", (fresh, tenant), {}) for s in range(self.config.shards)})
            self._fields.update(new)

    def settle(self, sent: Sent) -> int:
        """Points a sent bulk write wrote, once every replica of its shard applied it."""
        return int(self._settle(*sent) or 0)

    def _settle(self, shard: int, seq: int, refs: list[tuple[int, Any, Any]]) -> Any:
        """Wait for write ``seq`` on every replica of ``shard``: a replica that died for good
        or fell behind is caught up from a peer that applied it."""
        ray = self._ray
        answers: list[Any] = []
        error: BaseException | None = None
        for j, handle, ref in refs:
            try:
                answers.append(ray.get(ref))
            except ray.exceptions.ActorDiedError:
                self._catch_up(shard, j, dead=handle)
            except ray.exceptions.RayActorError:  # restarting: it is waited for
                self._catch_up(shard, j)
            except Exception as exc:
                cause = lamina_error_of(exc)
                if isinstance(cause, Behind):
                    self._catch_up(shard, j)
                elif isinstance(cause, LaminaError):
                    error = cause  # rejected, the same way on every replica
                else:
                    raise
        self._ack(shard, seq)  # a rejected write is numbered and done too
        if error is not None:
            raise error
        return next((a for a in answers if a is not None), 0)

    def _read(self, method: str, calls: list[tuple[int, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Send each (shard, args, kwargs) read to one replica of its shard, taking turns, all
        at once; a read whose replica is dead or behind goes to the next replica."""
        self._check_open()
        ray = self._ray
        self._turn += 1

        def send(
            shard: int, args: tuple[Any, ...], kwargs: dict[str, Any], attempt: int
        ) -> tuple[int, Any, Any]:
            slots = self._slots[shard]
            j = (self._turn + attempt) % len(slots)
            handle = slots[j].handle
            # no retry on this replica: another one answers now
            return (
                j,
                handle,
                handle.read.options(max_task_retries=0).remote(
                    self._acked[shard], method, args, kwargs, deadline and deadline.remaining()
                ),
            )

        deadline = bounds.current()
        answers = []
        pending = [send(s, a, kw, 0) for s, a, kw in calls]
        for (shard, args, kwargs), (j, handle, ref) in zip(calls, pending, strict=True):
            attempt = 0
            while True:
                try:
                    answers.append(self._answer(ref, deadline, [r for _, _, r in pending]))
                    break
                except Exception as exc:
                    cause = lamina_error_of(exc)
                    unreachable = isinstance(exc, ray.exceptions.RayActorError)  # dead, or Ray restarts it
                    if not unreachable and not isinstance(cause, Behind):
                        raise cause from None
                    if isinstance(exc, ray.exceptions.ActorDiedError):  # gone for good: replace it
                        self._db.repair_later(self, shard, j, handle)
                    elif not unreachable:  # behind: catch it up
                        self._db.repair_later(self, shard, j, None)
                    attempt += 1
                    if attempt == len(self._slots[shard]):
                        raise Unavailable(
                            f"collection {self.name!r} shard {shard}: no replica can answer now ({cause}); retry"
                        ) from None
                    j, handle, ref = send(shard, args, kwargs, attempt)
        return answers

    def _answer(self, ref: Any, deadline: bounds.Deadline | None, refs: list[Any]) -> Any:
        """The answer of one read. With a deadline, the replicas stop their own work when it
        passes and say so (their DeadlineExceeded is raised here); should they not answer
        within ``DEADLINE_GRACE`` after it, or should the client cancel, the reads still out
        are cancelled and the request stops here."""
        ray = self._ray
        if deadline is None:
            return ray.get(ref)
        while True:
            try:
                return ray.get(ref, timeout=0.1)
            except ray.exceptions.GetTimeoutError:
                pass
            late = deadline.at is not None and time.monotonic() > deadline.at + DEADLINE_GRACE
            if deadline.why is not None or late:
                for other in refs:
                    with contextlib.suppress(Exception):  # best effort: one already done cannot be
                        ray.cancel(other)
                deadline.check()  # Cancelled when the client went
                raise DeadlineExceeded("the request's deadline passed; the shards did not stop in time")

    def _every(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return self._read(method, [(s, args, kwargs) for s in range(self.config.shards)])

    def _split(self, ids: Sequence[PointId]) -> dict[int, list[int]]:
        """Positions of ``ids`` per shard."""
        return split_by_shard(ids, self.config.shards)
