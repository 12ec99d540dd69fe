"""The session's AUTH side (server/access.py) on the memory store: the order of the
refusals, the announce matrix, failures, the store failing, hooks, re-hashing."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import sqlite3
from pathlib import Path

import pytest

from kittiwake.auth.james_hashes import to_stored
from kittiwake.auth.passwords import hash_password
from kittiwake.config.model import AuthAnnounce, AuthConfig, UsersRepositoryConfig
from kittiwake.hooks.api import SessionInfo
from kittiwake.policy.rewrite import MappingKind, normalize_mapping
from kittiwake.protocol import Auth, AuthResponse, Reply
from kittiwake.protocol import replies as R
from kittiwake.server.access import Access, Authenticator
from kittiwake.storage import AuthFailureStore, MemoryStore, SqliteAuthFailureStore

TRUSTED = (ipaddress.ip_network("192.0.2.0/24"),)


def store() -> MemoryStore:
    s = MemoryStore()
    s.add_domain("a.test")
    s.add_user("alice@a.test", hash_password("pw"))
    s.add_user("admin@a.test", hash_password("root"))
    s.add_user("bob@a.test", None)
    s.add_mapping(normalize_mapping(MappingKind.ADDRESS, "sales@a.test", "alice@a.test"))
    return s


def make(
    *,
    tls: bool = True,
    ip: str = "198.51.100.1",
    users: MemoryStore | None = None,
    budget: AuthFailureStore | None = None,
    **cfg: object,
) -> Authenticator:
    s = users or store()
    access = Access(
        config=AuthConfig(**cfg),  # type: ignore[arg-type]
        domains=s,
        users=s,
        rewrites=s,
        repository=UsersRepositoryConfig(administrators=frozenset({"admin@a.test"})),
        default_domain="a.test",
        failures=budget,
    )
    return Authenticator(access, SessionInfo("l", "SMTP", ip, 1, "s1", tls=tls))


async def no_hook(mechanism: str, user: str | None, success: bool) -> Reply | None:
    return None


def plain(authcid: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


def run(a: Authenticator, mechanism: str, initial: str | None = None) -> Reply:
    return asyncio.run(a.start(Auth(mechanism, initial), no_hook))


@pytest.mark.parametrize(
    "cfg, tls, mechanism, want",
    [
        ({}, True, "CRAM-MD5", R.AUTH_UNKNOWN_MECHANISM),
        ({"plain_enabled": False}, True, "PLAIN", R.AUTH_TOO_WEAK),
        ({"plain_enabled": False}, False, "CRAM-MD5", R.AUTH_UNKNOWN_MECHANISM),
        ({}, False, "PLAIN", R.AUTH_ENCRYPTION_REQUIRED),
        ({}, False, "LOGIN", R.AUTH_ENCRYPTION_REQUIRED),
        ({"require_ssl": False}, False, "LOGIN", Reply(334, "", "VXNlcm5hbWU6")),
        ({}, True, "PLAIN", Reply(334, "", "")),
    ],
)
def test_refusal_order(cfg: dict[str, object], tls: bool, mechanism: str, want: Reply) -> None:
    assert run(make(tls=tls, **cfg), mechanism) == want


def test_success_and_identity() -> None:
    a = make()
    assert run(a, "PLAIN", plain("Alice@A.TEST", "pw")) == R.AUTH_OK
    assert a.user == "alice@a.test" and a.relay_allowed
    assert a.may_send_as("sales@a.test") and a.may_send_as("ALICE@a.test")
    assert not a.may_send_as("bob@a.test")
    assert a.ehlo_lines() == []  # nothing left to announce


def test_login_exchange() -> None:
    a = make()
    assert run(a, "LOGIN") == Reply(334, "", "VXNlcm5hbWU6")
    user = base64.b64encode(b"alice@a.test").decode()
    assert asyncio.run(a.respond(AuthResponse(user), no_hook)) == Reply(334, "", "UGFzc3dvcmQ6")
    password = base64.b64encode(b"pw").decode()
    assert asyncio.run(a.respond(AuthResponse(password), no_hook)) == R.AUTH_OK


@pytest.mark.parametrize(
    "authcid, password, authzid, want, user",
    [
        ("alice@a.test", "pw", "bob@a.test", R.AUTH_FAILED, None),
        ("admin@a.test", "root", "bob@a.test", R.AUTH_OK, "bob@a.test"),
        ("admin@a.test", "root", "Admin@a.test", R.AUTH_OK, "admin@a.test"),
        ("bob@a.test", "", "", R.AUTH_FAILED, None),  # no password: cannot log in
        ("nobody@a.test", "pw", "", R.AUTH_FAILED, None),
        ("alice", "pw", "", R.AUTH_FAILED, None),  # virtual hosting: a full address
    ],
)
def test_credentials(
    authcid: str, password: str, authzid: str, want: Reply, user: str | None
) -> None:
    a = make()
    assert run(a, "PLAIN", plain(authcid, password, authzid)) == want
    assert a.user == user


def test_third_failure_is_421() -> None:
    a = make()
    assert run(a, "PLAIN", plain("alice@a.test", "x")) == R.AUTH_FAILED
    assert run(a, "PLAIN", plain("alice@a.test", "y")) == R.AUTH_FAILED
    assert run(a, "PLAIN", plain("alice@a.test", "z")) == R.AUTH_TOO_MANY_FAILURES


def test_budget(tmp_path: Path) -> None:
    budget = SqliteAuthFailureStore(tmp_path / "f.db")
    a = make(budget=budget, ip_failure_limit=2)
    assert run(a, "PLAIN", plain("alice@a.test", "x")) == R.AUTH_FAILED
    assert run(a, "PLAIN", plain("alice@a.test", "y")) == R.AUTH_FAILED
    b = make(budget=budget, ip_failure_limit=2)  # another connection, same address
    assert run(b, "PLAIN", plain("alice@a.test", "pw")) == R.AUTH_BLOCKED
    c = make(budget=budget, ip_failure_limit=2, ip="198.51.100.2")
    assert run(c, "PLAIN", plain("alice@a.test", "pw")) == R.AUTH_OK
    budget.close()


@pytest.mark.parametrize(
    "error", [sqlite3.OperationalError("database is locked"), OSError(5, "I/O error")]
)
def test_store_failure_is_temporary(error: Exception) -> None:
    class Broken(MemoryStore):
        def get_password_hash(self, username: str) -> str | None:
            raise error

    broken = Broken()
    broken.add_domain("a.test")
    a = make(users=broken)
    assert run(a, "PLAIN", plain("alice@a.test", "pw")) == R.AUTH_TEMPORARY


def test_hook_refuses_a_success() -> None:
    async def refuse(mechanism: str, user: str | None, success: bool) -> Reply | None:
        return R.DENY if success else None

    a = make()
    assert asyncio.run(a.start(Auth("PLAIN", plain("alice@a.test", "pw")), refuse)) == R.DENY
    assert a.user is None


def test_james_hash_rehashed() -> None:
    s = store()
    james = "VBPuJHI7uixaa6LQGWx4s+5GKNE="  # James: SHA-1 of "myPassword" (plain)
    s.add_user("salt@a.test", to_stored("SHA-1", "salt", james))
    a = make(users=s)
    assert run(a, "PLAIN", plain("salt@a.test", "myPassword")) == R.AUTH_OK
    stored = s.get_password_hash("salt@a.test")
    assert stored is not None and stored.startswith("$argon2id$")


def test_no_virtual_hosting() -> None:
    s = store()
    access = Access(
        config=AuthConfig(),
        domains=s,
        users=s,
        repository=UsersRepositoryConfig(virtual_hosting=False),
        default_domain="a.test",
    )
    a = Authenticator(access, SessionInfo("l", "SMTP", "198.51.100.1", 1, "s1", tls=True))
    assert run(a, "PLAIN", plain("alice", "pw")) == R.AUTH_OK
    assert a.user == "alice@a.test"


A, F, N = AuthAnnounce.ALWAYS, AuthAnnounce.FOR_UNAUTHORIZED_ADDRESSES, AuthAnnounce.NEVER


@pytest.mark.parametrize(
    "announce, tls, ip, extra, shown",
    [
        (N, True, "198.51.100.1", {}, False),
        (A, True, "198.51.100.1", {}, True),
        (A, True, "192.0.2.9", {}, True),  # always: trusted clients too
        (F, True, "198.51.100.1", {}, True),
        (F, True, "192.0.2.9", {}, False),  # a trusted client is not offered AUTH
        (A, False, "198.51.100.1", {}, False),  # requireSSL, clear text
        (A, False, "198.51.100.1", {"require_ssl": False}, True),
        (A, True, "198.51.100.1", {"plain_enabled": False}, False),
        (A, True, "198.51.100.1", {"command": False}, False),  # NoAuthCmdHandlerLoader
    ],
)
def test_announce_matrix(
    announce: AuthAnnounce, tls: bool, ip: str, extra: dict[str, object], shown: bool
) -> None:
    a = make(tls=tls, ip=ip, announce=announce, trusted_networks=TRUSTED, **extra)
    assert a.announced() is shown
    assert (a.ehlo_lines() == ["AUTH PLAIN LOGIN"]) is shown
    assert a.trust().auth_announced is shown
    assert a.trusted is (ip == "192.0.2.9") and a.relay_allowed is a.trusted
