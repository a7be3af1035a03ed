"""Sharded, replicated collections on Ray, behind the same interface as ``Database``.

A collection created with ``shards=N, replicas=R`` is split by id hash (``shard_of``)
into N shards; each shard is kept by R Ray actors (``_Replica``), each an engine
``Database`` over its own data directory::

    <root>/sharded.json                                  the catalog: name -> config
    <root>/collections/<name>/shard-<i>/replica-<j>/     one replica's data directory
        applied                                          the last write it applied

This process (the front end: ``lamina serve --ray`` or ``lamina.distributed.connect``)
routes writes by id, scatters searches to one replica of every shard and merges their
top-k. Ray places the actors, restarts a crashed one and re-sends its pending calls;
there is no protocol of our own between actors.

Consistency. The front end numbers each shard's writes (1, 2, 3, ...); a replica
applies write ``s`` only after ``s - 1`` and records ``s`` in ``applied`` after the
data is durable, so replicas apply the same writes in the same order and a write sent
again after a restart is applied once. A write is acknowledged when every replica of
its shard applied it. A read carries the highest sequence acknowledged on its shard and
a replica behind it refuses (``Behind``): the front end reads from another replica, so
every read sees every acknowledged write. A replica that comes back behind (its data
directory lost, or an actor replaced on another node) catches up: writes to that shard
wait while it copies its peer's points page by page (actor to actor, through Ray's
object store), then it carries on from the peer's sequence.

Modules: ``routing`` (shard_of, parts, errors), ``replica`` (the actor), ``shards`` (the
front end's slots and write numbers), ``catch_up``, ``replication`` (numbered writes,
routed reads), ``snapshots``, ``collection`` (the Collection interface), ``database``.
"""

from .collection import ShardedCollection
from .database import ShardedDatabase
from .routing import Behind, Part, Sent, lamina_error_of, shard_of

__all__ = ["Behind", "Part", "Sent", "ShardedCollection", "ShardedDatabase", "lamina_error_of", "shard_of"]
