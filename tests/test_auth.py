"""API keys, roles and collection scopes, checked against every RPC over a real TLS connection."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trustme

import lamina
from lamina.client.transport import Op
from lamina.config import ServerConfig
from lamina.engine.database import Database
from lamina.server.app import LaminaServer
from lamina.server.auth import REQUIRED_ROLE, ApiKey, hash_key, new_key
from tests.conftest import ServerProcess, ServerThread
from tests.test_cli import lamina_cmd

DIM = 4
ROLES = ("read", "write", "admin")


class Secured:
    """A TLS server with one key per role, a read key limited to collection ``kb``, and
    keys limited to tenant ``acme`` (of the multi-tenant collection ``mt``) with each role."""

    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.keys = {name: new_key() for name in (*ROLES, "scoped", *(f"acme-{r}" for r in ROLES))}
        configured = [ApiKey(r, hash_key(self.keys[r]), r) for r in ROLES]
        configured.append(ApiKey("scoped", hash_key(self.keys["scoped"]), "read", frozenset({"kb"})))
        configured += [
            ApiKey(f"acme-{r}", hash_key(self.keys[f"acme-{r}"]), r, tenants=frozenset({"acme"}))
            for r in ROLES
        ]
        tls = (cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes())
        self.server = ServerThread(tmp / "data", keys=configured, tls=tls)
        self.address = f"localhost:{self.server.port}"

    def client(self, key: str | None) -> lamina.Client:
        return lamina.connect(self.address, api_key=key, ca_cert=self.ca_file, timeout=30)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    srv = Secured(tmp_path)
    with srv.client(srv.keys["admin"]) as admin:
        for name in ("kb", "other"):
            col = admin.create_collection(name, dim=DIM)
            col.upsert([1, 2], np.eye(2, DIM), [{"t": "a"}, {"t": "b"}])
        mt = admin.create_collection("mt", dim=DIM, multi_tenant=True)
        for tenant in ("acme", "beta", "gone"):  # the same ids in every tenant
            mt.upsert([1, 2], np.eye(2, DIM), [{"owner": tenant}] * 2, tenant=tenant)
    yield srv
    srv.server.stop()


def _embed(client: lamina.Client) -> None:
    """Search/Embed on ``kb``: let through, the engine answers that kb has no model."""
    with contextlib.suppress(lamina.InvalidArgument):
        client.get_collection("kb").embed(["text"])


# every RPC, as an SDK call on collection ``kb`` (the ``Service/Method`` it sends)
CALLS: dict[str, Callable[[lamina.Client], Any]] = {
    "Collections/Create": lambda c: c.create_collection("fresh", dim=DIM),
    "Collections/Get": lambda c: c.get_collection("kb"),
    "Collections/List": lambda c: c.list_collections(),
    "Collections/Delete": lambda c: c.delete_collection("kb"),
    "Collections/Optimize": lambda c: c.get_collection("kb").optimize(),
    "Collections/CreatePayloadIndex": lambda c: c.get_collection("kb").create_payload_index("t", "keyword"),
    "Collections/DropPayloadIndex": lambda c: c.get_collection("kb").drop_payload_index("t"),
    "Collections/CreateSnapshot": lambda c: c.get_collection("kb").snapshot(),
    "Collections/ListSnapshots": lambda c: c.list_snapshots("kb"),
    "Collections/DeleteSnapshot": lambda c: c.delete_snapshot("kb", "kb-none"),
    "Points/Upsert": lambda c: c.get_collection("kb").upsert([9], np.ones((1, DIM))),
    "Points/Get": lambda c: c.get_collection("kb").get([1]),
    "Points/Delete": lambda c: c.get_collection("kb").delete(ids=[2]),
    "Points/Count": lambda c: c.get_collection("kb").count(),
    "Points/Scroll": lambda c: c.get_collection("kb").scroll(),
    "Points/ListTenants": lambda c: c.get_collection("mt").list_tenants(),
    "Points/DeleteTenant": lambda c: c.get_collection("mt").delete_tenant("gone"),
    "Search/Search": lambda c: c.get_collection("kb").search(np.ones(DIM), k=1),
    "Search/SearchBatch": lambda c: c.get_collection("kb").search_batch(np.ones((2, DIM)), k=1),
    "Search/Query": lambda c: c.get_collection("kb").query(np.ones(DIM), k=1),
    "Search/Embed": _embed,
    "Info/GetInfo": lambda c: c.server_info(),
}


def test_the_matrix_covers_every_rpc() -> None:
    from lamina.proto.lamina.v1 import collections_pb2, info_pb2, points_pb2, search_pb2

    rpcs = {
        f"{service.name}/{method.name}"
        for module in (collections_pb2, points_pb2, search_pb2, info_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert rpcs == set(CALLS)
    assert set(REQUIRED_ROLE) <= rpcs


@pytest.mark.parametrize("role", ROLES)
def test_each_role_against_each_rpc(secured: Secured, role: str) -> None:
    needed = {rpc: REQUIRED_ROLE.get(rpc, "admin") for rpc in CALLS}
    with secured.client(secured.keys[role]) as client:
        # Delete last: it drops the collection the other calls use
        for rpc in sorted(CALLS, key=lambda r: r == "Collections/Delete"):
            allowed = ROLES.index(role) >= ROLES.index(needed[rpc])
            try:
                CALLS[rpc](client)
            except lamina.PermissionDenied as exc:
                assert not allowed, f"{role} was refused {rpc}: {exc}"
                assert f"needs {needed[rpc]}" in str(exc)
                continue
            except lamina.NotFound:
                pass  # allowed through, then the engine answered (an unknown snapshot name)
            assert allowed, f"{role} may not call {rpc}, but it went through"
    with secured.client(secured.keys["admin"]) as admin:  # what was refused changed nothing
        names = admin.list_collections()
        if role != "admin":
            assert names == ["kb", "mt", "other"]
            assert len(admin.get_collection("mt").list_tenants()) == 3  # "gone" was not deleted
            ids = {p.id for p in admin.get_collection("kb").scroll()[0]}
            assert ids == ({1, 9} if role == "write" else {1, 2})  # write upserted 9 and deleted 2


def test_a_collection_scoped_key_sees_only_its_collections(secured: Secured) -> None:
    with secured.client(secured.keys["scoped"]) as client:
        assert client.list_collections() == ["kb"]
        assert client.get_collection("kb").count() == 2
        for call in (
            lambda: client.get_collection("other"),
            lambda: client._transport.run(Op("count", ("other", None, None))),
            lambda: client._transport.run(
                Op("search", ("other", np.ones(DIM, np.float32), 1, None, True, False, None, None))
            ),
            lambda: client.list_snapshots(),
        ):
            with pytest.raises(lamina.PermissionDenied):
                call()
        with pytest.raises(lamina.PermissionDenied, match="needs write"):
            client.get_collection("kb").upsert([5], np.ones((1, DIM)))


#: what a tenant-scoped key may call, as (rpc, call on collection mt for a tenant)
def _tenant_calls(tenant: str | None) -> dict[str, Callable[[lamina.Client], Any]]:
    def mt(c: lamina.Client) -> Any:
        return c.get_collection("mt")

    q = np.ones(DIM)
    calls: dict[str, Callable[[lamina.Client], Any]] = {
        "Points/Upsert": lambda c: mt(c).upsert([7], np.ones((1, DIM)), [{"owner": tenant}], tenant=tenant),
        "Points/Get": lambda c: mt(c).get([1, 2], tenant=tenant),
        "Points/Delete": lambda c: mt(c).delete(ids=[2], tenant=tenant),
        "Points/Count": lambda c: mt(c).count(tenant=tenant),
        "Points/Scroll": lambda c: mt(c).scroll(tenant=tenant),
        "Points/DeleteTenant": lambda c: mt(c).delete_tenant(tenant or ""),
        "Search/Search": lambda c: mt(c).search(q, k=5, tenant=tenant),
        "Search/SearchBatch": lambda c: mt(c).search_batch(np.ones((2, DIM)), k=5, tenant=tenant),
        "Search/Query": lambda c: mt(c).query(q, k=5, tenant=tenant),
    }
    if tenant is None:  # a tenant's deletion always names it
        del calls["Points/DeleteTenant"]
    return calls


@pytest.mark.parametrize("role", ROLES)
def test_a_tenant_scoped_key_acts_only_for_its_tenant(secured: Secured, role: str) -> None:
    with secured.client(secured.keys[f"acme-{role}"]) as client:
        mt = client.get_collection("mt")
        assert [t.name for t in mt.list_tenants()] == ["acme"]  # beta and gone stay unseen
        assert mt.info().count == 0 and mt.info().status.tenants == 0  # totals span every tenant
        for hits in (
            mt.search(np.ones(DIM), k=10, tenant="acme"),
            mt.query(np.ones(DIM), k=10, tenant="acme"),
        ):
            assert {h.payload["owner"] for h in hits} == {"acme"}
        for other in ("beta", None):  # another tenant, or none named
            for rpc, call in _tenant_calls(other).items():
                with pytest.raises(lamina.PermissionDenied) as denied:
                    call(client)
                assert "tenant" in str(denied.value) or "needs" in str(denied.value), rpc
        CALLS["Search/Embed"](client)  # text to vectors touches no tenant's data: allowed to every role
        for rpc in sorted(set(CALLS) - set(_tenant_calls("x")) - {"Points/ListTenants", "Info/GetInfo"}):
            if rpc in ("Collections/Get", "Collections/List", "Search/Embed"):
                continue
            with pytest.raises(lamina.PermissionDenied, match=r"spans every tenant|limited to tenants"):
                CALLS[rpc](client)
        for rpc, call in _tenant_calls("acme").items():  # its own tenant: as its role allows
            allowed = ROLES.index(role) >= ROLES.index(REQUIRED_ROLE.get(rpc, "admin"))
            try:
                call(client)
            except lamina.PermissionDenied as exc:
                assert not allowed and "needs" in str(exc), rpc
                continue
            assert allowed, rpc
    with secured.client(secured.keys["admin"]) as admin:  # beta and the collections are untouched
        mt = admin.get_collection("mt")
        assert admin.list_collections() == ["kb", "mt", "other"]
        assert sorted(p.payload["owner"] for p in mt.scroll(tenant="beta")[0]) == ["beta", "beta"]
        tenants = {t.name for t in mt.list_tenants()}
        assert tenants == ({"beta", "gone"} if role == "admin" else {"acme", "beta", "gone"})


def test_missing_and_wrong_keys_are_unauthenticated_and_never_echoed(
    secured: Secured, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lamina")
    wrong = new_key()
    with (
        secured.client(None) as anonymous,
        pytest.raises(lamina.Unauthenticated, match="requires an API key"),
    ):
        anonymous.list_collections()
    with secured.client(wrong) as stranger, pytest.raises(lamina.Unauthenticated) as info:
        stranger.list_collections()
    assert wrong not in str(info.value)
    with secured.client(secured.keys["read"]) as reader, pytest.raises(lamina.PermissionDenied) as denied:
        reader.delete_collection("kb")
    assert secured.keys["read"] not in str(denied.value)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "denied Collections/Delete to key 'read'" in logged
    assert all(key not in logged for key in (*secured.keys.values(), wrong))


def test_plaintext_client_cannot_talk_to_a_tls_server(secured: Secured) -> None:
    with (
        lamina.connect(secured.address, api_key=secured.keys["admin"], timeout=3) as plain,
        pytest.raises((lamina.Unavailable, lamina.DeadlineExceeded)),
    ):
        plain.list_collections()


def test_without_keys_the_server_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    import asyncio

    with Database(tmp_path / "data") as db:
        server = LaminaServer(db, "0.0.0.0", 0)
        with pytest.raises(lamina.FailedPrecondition, match="without API keys"):
            asyncio.run(server.start())
    with pytest.raises(lamina.InvalidArgument, match="api_key, tls and ca_cert are for servers"):
        lamina.connect(str(tmp_path / "embedded"), api_key="x")


def test_key_config_is_validated(tmp_path: Path) -> None:
    good = {"name": "a", "hash": hash_key("k"), "role": "read"}
    for bad, words in [
        ({**good, "hash": "lam_plainkey"}, "never put the key itself"),
        ({**good, "role": "root"}, "role must be one of read, write, admin"),
        ({**good, "collections": []}, "non-empty list"),
        ({**good, "tenants": []}, "tenants must be a non-empty list"),
        ({**good, "tenants": ["ok", "bad\n"]}, "invalid tenant"),
        ({**good, "colections": ["x"]}, "unknown settings"),
    ]:
        with pytest.raises(lamina.InvalidArgument, match=words):
            ServerConfig.from_dict({"keys": [bad]})
    with pytest.raises(lamina.InvalidArgument, match="same hash"):
        ServerThread(
            tmp_path / "d", keys=[ApiKey("a", hash_key("k"), "read"), ApiKey("b", hash_key("k"), "admin")]
        )
    with pytest.raises(lamina.InvalidArgument, match="not a readable file"):
        ServerConfig.from_dict(
            {"tls": {"cert": str(tmp_path / "nope.pem"), "key": str(tmp_path / "nope.key")}}
        )


def test_cli_key_and_config_file_end_to_end(tmp_path: Path, server_process: type[ServerProcess]) -> None:
    made = lamina_cmd("keys", "create", "--name", "ops", "--role", "admin")
    assert made.returncode == 0, made.stderr
    key = made.stdout.split()[made.stdout.split().index("secret):") + 1]
    stanza = made.stdout[made.stdout.index("[[keys]]") :]
    assert key not in stanza and hash_key(key) in stanza
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = tmp_path / "lamina.toml"
    config.write_text(
        f'[tls]\ncert = "{tmp_path / "server.crt"}"\nkey = "{tmp_path / "server.key"}"\n\n{stanza}'
    )
    proc = server_process(tmp_path / "data", "--config", str(config), ca_cert=tmp_path / "ca.pem")
    target = ["-t", proc.address, "--ca-cert", str(tmp_path / "ca.pem")]
    refused = lamina_cmd("collections", *target)
    assert refused.returncode == 2 and "requires an API key" in refused.stderr
    listed = lamina_cmd("collections", *target, "--api-key", key)
    assert listed.returncode == 0 and "no collections" in listed.stdout, listed.stderr
    log = proc.log.read_text()
    assert "over TLS" in log and "API keys required (1 configured)" in log and key not in log
