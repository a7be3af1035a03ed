"""API keys, roles and collection scopes, checked against every RPC over a real TLS connection."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trustme

import lamina
from lamina.config import ServerConfig
from lamina.engine.database import Database
from lamina.server.app import LaminaServer
from lamina.server.auth import REQUIRED_ROLE, ApiKey, hash_key, new_key
from tests.conftest import ServerProcess, ServerThread
from tests.test_cli import lamina_cmd

DIM = 4
ROLES = ("read", "write", "admin")


class Secured:
    """A TLS server with one key per role, plus a read key limited to collection ``kb``."""

    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.keys = {name: new_key() for name in (*ROLES, "scoped")}
        configured = [ApiKey(r, hash_key(self.keys[r]), r) for r in ROLES]
        configured.append(ApiKey("scoped", hash_key(self.keys["scoped"]), "read", frozenset({"kb"})))
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
    yield srv
    srv.server.stop()


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
    "Search/Search": lambda c: c.get_collection("kb").search(np.ones(DIM), k=1),
    "Search/SearchBatch": lambda c: c.get_collection("kb").search_batch(np.ones((2, DIM)), k=1),
    "Search/Query": lambda c: c.get_collection("kb").query(np.ones(DIM), k=1),
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
            assert names == ["kb", "other"]
            ids = {p.id for p in admin.get_collection("kb").scroll()[0]}
            assert ids == ({1, 9} if role == "write" else {1, 2})  # write upserted 9 and deleted 2


def test_a_collection_scoped_key_sees_only_its_collections(secured: Secured) -> None:
    with secured.client(secured.keys["scoped"]) as client:
        assert client.list_collections() == ["kb"]
        assert client.get_collection("kb").count() == 2
        for call in (
            lambda: client.get_collection("other"),
            lambda: client._transport.count("other", None),
            lambda: client._transport.search("other", np.ones(DIM, np.float32), 1, None, True, False, None),
            lambda: client.list_snapshots(),
        ):
            with pytest.raises(lamina.PermissionDenied):
                call()
        with pytest.raises(lamina.PermissionDenied, match="needs write"):
            client.get_collection("kb").upsert([5], np.ones((1, DIM)))


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
        ({**good, "tenants": ["acme"]}, "tenant-scoped keys"),
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
