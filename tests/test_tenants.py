"""Multi-tenant collections: random tenants, points, deletes and queries checked against
a model, through promotions to HNSW partitions, demotions, tenant deletion and restarts,
embedded and over gRPC. No result may ever belong to another tenant."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lamina
from lamina.types import PointId
from tests.conftest import ServerThread

DIM = 8
TENANTS = ["acme", "beta", "cörp", "d e", "tiny", "ghost"]
WEIGHTS = np.array([0.45, 0.25, 0.15, 0.1, 0.05, 0.0])  # "ghost" never writes: reads of an unknown tenant
Model = dict[str, dict[PointId, tuple[np.ndarray, dict[str, Any]]]]


class Harness:
    """Opens the same data directory embedded or behind a server, and restarts it."""

    def __init__(self, data: Path, remote: bool) -> None:
        self.data, self.remote = data, remote
        self.server: ServerThread | None = None
        self.client = self._open()

    def _open(self) -> lamina.Client:
        if not self.remote:
            return lamina.connect(str(self.data))
        self.server = ServerThread(self.data)
        return lamina.connect(self.server.address, timeout=60)

    def restart(self) -> None:
        self.close()
        self.client = self._open()

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()
            self.server = None


@contextmanager
def harness(tmp_path: Path, remote: bool) -> Iterator[Harness]:
    h = Harness(tmp_path / "data", remote)
    try:
        yield h
    finally:
        h.close()


def truth(
    model: Model, tenant: str, q: np.ndarray, k: int, keep: Callable[[dict[str, Any]], bool]
) -> list[PointId]:
    """Exact top-k ids of a tenant under L2."""
    items = [(pid, vec) for pid, (vec, pay) in model.get(tenant, {}).items() if keep(pay)]
    if not items:
        return []
    dist = np.array([float(np.sum((vec - q) ** 2)) for _, vec in items])
    return [items[i][0] for i in np.argsort(dist, kind="stable")[:k]]


def check_reads(
    col: lamina.Collection, model: Model, tenant: str, rng: np.random.Generator, recall: list[float]
) -> None:
    mine = model.get(tenant, {})
    q = rng.normal(size=DIM).astype(np.float32)
    g = int(rng.integers(0, 3))
    for flt, keep in ((None, lambda p: True), ({"g": g}, lambda p: p["g"] == g)):
        want = truth(model, tenant, q, 10, keep)
        exact = col.search(q, k=10, filter=flt, tenant=tenant, exact=True)
        assert [h.id for h in exact] == want
        hits = col.search(q, k=10, filter=flt, tenant=tenant)
        for h in hits + exact:  # never another tenant's point: ids and payloads are the tenant's own
            assert h.payload is not None and h.payload["owner"] == tenant and h.id in mine
            assert mine[h.id][1] == h.payload and keep(h.payload)
        if want:
            recall.append(len({h.id for h in hits} & set(want)) / len(want))
        assert col.count(flt, tenant=tenant) == sum(1 for _, p in mine.values() if keep(p))
        (batch,) = col.search_batch(q[None, :], k=10, filter=flt, tenant=tenant, exact=True)
        assert [h.id for h in batch] == want
    hybrid = col.query(vector=q, k=10, tenant=tenant)
    assert len(hybrid) == min(10, len(mine))  # not vacuous: the tenant's points are found
    assert all(h.payload["owner"] == tenant and h.id in mine for h in hybrid)
    seen: list[PointId] = []
    offset = None
    while True:
        page, offset = col.scroll(limit=37, offset=offset, tenant=tenant)
        seen += [p.id for p in page]
        assert all(p.payload["owner"] == tenant for p in page)
        if offset is None:
            break
    assert sorted(seen, key=str) == sorted(mine, key=str)
    probe = [*list(mine)[:5], 10_000]
    got = col.get(probe, tenant=tenant)
    assert [p.id for p in got] == probe[:-1] and all(np.allclose(p.vector, mine[p.id][0]) for p in got)


def run_property(h: Harness, seed: int, steps: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    col = h.client.create_collection(
        "kb",
        dim=DIM,
        metric="l2",
        multi_tenant=True,
        tenant_index_rows=40,
        segment_rows=256,
        index={"type": "hnsw", "m": 8, "ef_construction": 64, "ef": 64},
        payload_index={"g": "int"} if seed % 2 else None,
    )
    model: Model = {}
    stats = {"promoted": 0, "restarts": 0, "deleted_tenants": 0, "checks": 0}
    recall: list[float] = []
    for _ in range(steps):
        op = rng.random()
        tenant = str(rng.choice(TENANTS, p=WEIGHTS))
        mine = model.setdefault(tenant, {})
        if op < 0.5:
            n = int(rng.integers(1, 40))
            space = 300 if tenant == "acme" else 80
            ids: list[PointId] = list(
                dict.fromkeys(int(i) if i % 3 else f"doc-{i}" for i in rng.integers(0, space, n))
            )
            vecs = rng.normal(size=(len(ids), DIM)).astype(np.float32)
            pays = [
                {"owner": tenant, "g": int(rng.integers(0, 3)), "n": int(rng.integers(0, 1000))} for _ in ids
            ]
            col.upsert(ids, vecs, pays, tenant=tenant)
            for pid, vec, pay in zip(ids, vecs, pays, strict=True):
                mine[pid] = (vec, pay)
        elif op < 0.6 and mine:
            doomed = list(
                rng.choice(np.array(list(mine), dtype=object), size=min(len(mine), 8), replace=False)
            )
            doomed.append(99_999)  # not there: not counted
            assert col.delete(ids=doomed, tenant=tenant) == len(doomed) - 1
            for pid in doomed[:-1]:
                del mine[pid]
        elif op < 0.65:
            g = int(rng.integers(0, 3))
            gone = [pid for pid, (_, p) in mine.items() if p["g"] == g]
            assert col.delete(filter={"g": g}, tenant=tenant) == len(gone)
            for pid in gone:
                del mine[pid]
        elif op < 0.67 and tenant in model and tenant != "ghost" and mine:
            assert col.delete_tenant(tenant) == len(mine)
            del model[tenant]
            stats["deleted_tenants"] += 1
            with pytest.raises(lamina.NotFound, match="tenant"):
                col.delete_tenant(tenant)
        elif op < 0.72:
            col.optimize()
            stats["promoted"] = max(stats["promoted"], col.info().status.tenant_partitions)
        elif op < 0.75:
            h.restart()
            col = h.client.get_collection("kb")
            stats["restarts"] += 1
        else:
            check_reads(col, model, tenant, rng, recall)
            stats["checks"] += 1
    col.optimize()
    stats["promoted"] = max(stats["promoted"], col.info().status.tenant_partitions)
    listed = {t.name: t.points for t in col.list_tenants()}
    assert listed == {t: len(m) for t, m in model.items() if t in listed}
    assert set(listed) == {t for t, m in model.items() if t != "ghost" and (m or t in listed)}
    for tenant in TENANTS:
        check_reads(col, model, tenant, rng, recall)
    assert recall and float(np.mean(recall)) >= 0.95, np.mean(recall)
    return stats


@pytest.mark.parametrize(("remote", "seed"), [(False, 1), (False, 2), (True, 3)])
def test_tenants_never_see_each_other(tmp_path: Path, remote: bool, seed: int) -> None:
    with harness(tmp_path, remote) as h:
        stats = run_property(h, seed, steps=220)
    assert stats["promoted"] >= 1 and stats["restarts"] >= 1 and stats["checks"] >= 20, stats


def test_every_request_on_a_multi_tenant_collection_names_its_tenant(tmp_path: Path) -> None:
    with lamina.connect(str(tmp_path / "d")) as db:
        mt = db.create_collection("mt", dim=4, multi_tenant=True)
        plain = db.create_collection("plain", dim=4)
        q = np.ones(4)
        for call in (
            lambda: mt.upsert([1], np.ones((1, 4))),
            lambda: mt.search(q),
            lambda: mt.search_batch(q[None, :]),
            lambda: mt.query(q),
            lambda: mt.count(),
            lambda: mt.get([1]),
            lambda: mt.scroll(),
            lambda: mt.delete(ids=[1]),
            lambda: mt.explain(q),
        ):
            with pytest.raises(
                lamina.InvalidArgument, match=r"multi-tenant: every (read|write) names its tenant"
            ):
                call()
        with pytest.raises(lamina.InvalidArgument, match="not multi-tenant"):
            plain.search(q, tenant="acme")
        with pytest.raises(lamina.InvalidArgument, match="not multi-tenant"):
            plain.list_tenants()
        for bad in ("", "a\nb", "x" * 300):
            with pytest.raises(lamina.InvalidArgument, match="invalid tenant"):
                mt.upsert([1], np.ones((1, 4)), tenant=bad)
        assert mt.count(tenant="nobody") == 0 and mt.search(q, tenant="nobody") == []
        with pytest.raises(lamina.NotFound, match="tenant 'nobody'"):
            mt.delete_tenant("nobody")
        assert mt.list_tenants() == []  # nothing above was written


def test_promotion_demotion_and_deletion_free_index_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    with lamina.connect(str(tmp_path / "d")) as db:
        col = db.create_collection(
            "mt", dim=16, metric="cosine", multi_tenant=True, tenant_index_rows=100, segment_rows=256
        )
        big = rng.normal(size=(400, 16)).astype(np.float32)
        col.upsert(list(range(400)), big, [{"i": i} for i in range(400)], tenant="big")
        col.upsert(list(range(50)), rng.normal(size=(50, 16)), tenant="small")
        info = col.optimize()
        assert info.status.tenants == 2 and info.status.tenant_partitions == 1
        assert [(t.name, t.points, t.indexed) for t in col.list_tenants()] == [
            ("big", 400, True),
            ("small", 50, False),
        ]
        plan = col.explain(big[3], k=5, tenant="big")
        assert any(s.method == "hnsw" and s.segment.startswith("tenant-partition") for s in plan.segments)
        assert col.search(big[3], k=1, tenant="big")[0].id == 3
        with_partition = info.status.index_bytes
        # shrinking below half the threshold demotes it: exact again, memory returned
        col.delete(ids=list(range(370)), tenant="big")
        info = col.optimize()
        assert info.status.tenant_partitions == 0 and info.status.index_bytes < with_partition
        assert col.search(big[380], k=1, tenant="big")[0].id == 380
        # grow again, promote again, then delete the tenant: partition and points gone, durably
        col.upsert(list(range(1000, 1300)), rng.normal(size=(300, 16)), tenant="big")
        assert col.optimize().status.tenant_partitions == 1
        assert col.delete_tenant("big") == 330
        info = col.info()
        assert info.status.tenant_partitions == 0 and info.count == 50
    with lamina.connect(str(tmp_path / "d")) as db:
        col = db.get_collection("mt")
        assert [t.name for t in col.list_tenants()] == ["small"]
        assert col.count(tenant="big") == 0 and col.search(big[3], tenant="big") == []
        col.upsert([1], big[:1], tenant="big")  # the name can be used again, as a new tenant
        assert [p.id for p in col.scroll(tenant="big")[0]] == [1]


def test_cli_ingests_for_a_tenant_and_makes_tenant_keys(tmp_path: Path) -> None:
    from lamina.config import ServerConfig
    from tests.test_cli import lamina_cmd

    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32))
    data = str(tmp_path / "data")
    for tenant in ("acme", "globex"):
        done = lamina_cmd("ingest", str(tmp_path / "v.npy"), "-c", "kb", "-t", data, "--tenant", tenant)
        assert done.returncode == 0, done.stderr
        assert (
            f"ingested 300 points into 'kb' for tenant {tenant!r}; it now holds 300 for that tenant"
            in done.stderr
        )
    listing = lamina_cmd("collections", "-t", data)
    assert "multi-tenant: 2 tenants" in listing.stdout, listing.stdout
    bad = lamina_cmd("ingest", str(tmp_path / "v.npy"), "-c", "kb", "-t", data, "--tenant", "")
    assert bad.returncode != 0 and "invalid tenant" in bad.stderr
    made = lamina_cmd("keys", "create", "--name", "acme-app", "--role", "write", "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    stanza = made.stdout[made.stdout.index("[[keys]]") :]
    (tmp_path / "lamina.toml").write_text(stanza)
    (key,) = ServerConfig.load(tmp_path / "lamina.toml").keys
    assert key.tenants == frozenset({"acme"}) and key.role == "write"
    with lamina.connect(data) as db:
        assert [(t.name, t.points) for t in db.get_collection("kb").list_tenants()] == [
            ("acme", 300),
            ("globex", 300),
        ]


def test_bench_tenants_runs_end_to_end_at_small_size(tmp_path: Path) -> None:
    from bench.tenants import SYSTEMS, run, verdict

    report = run(tenants=60, total=6_000, dim=16, per_class=10, zipf=1.0, systems=SYSTEMS, workdir=tmp_path)
    assert set(report["systems"]) == set(SYSTEMS)
    lam = report["systems"]["lamina"]
    assert lam["extra"]["partitions"] >= 1 and lam["rss_mb"] > 0
    for name, c in lam["classes"].items():  # exact for small tenants, a graph for large ones
        assert c["queries"] == 10 and c["recall"] >= 0.9, (name, c)
    assert any("memory lamina / shared index" in line for line in verdict(report))
