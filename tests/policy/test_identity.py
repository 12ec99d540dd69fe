"""verifyIdentity (strict, relaxed, disabled) as tables, and the From: header check."""

from __future__ import annotations

import pytest

from kittiwake.policy.identity import (
    IdentityMode,
    SenderFacts,
    from_header_reply,
    looks_like_mx,
    parse_identity_mode,
    sender_reply,
)
from kittiwake.protocol import replies as R

S, X, D = IdentityMode.STRICT, IdentityMode.RELAXED, IdentityMode.DISABLED


def facts(
    sender: str = "alice@a.test",
    local: bool = True,
    user: str | None = None,
    trusted: bool = False,
    owned: bool = False,
    helo: str | None = "client",
) -> SenderFacts:
    return SenderFacts(sender, local, user, trusted, owned, helo)


# (case, facts, strict, relaxed, disabled)
TABLE = [
    ("null sender, anonymous", facts(sender=""), None, None, None),
    ("null sender, authenticated", facts(sender="", user="bob@a.test"), None, None, None),
    ("remote sender, anonymous", facts("x@remote.test", local=False), None, None, None),
    ("local sender, anonymous", facts(), R.AUTH_REQUIRED, R.AUTH_REQUIRED, None),
    ("local sender, anonymous MX", facts(helo="mx.remote.test"), R.AUTH_REQUIRED, None, None),
    ("local sender, trusted", facts(trusted=True), None, None, None),
    ("own address", facts(user="alice@a.test", owned=True), None, None, None),
    ("alias of the user", facts("sales@a.test", user="alice@a.test", owned=True), None, None, None),
    (
        "someone else's",
        facts("bob@a.test", user="alice@a.test"),
        R.NOT_YOUR_ADDRESS,
        R.NOT_YOUR_ADDRESS,
        None,
    ),
    (
        "remote address, authenticated",
        facts("alice@gmail.test", local=False, user="alice@a.test", owned=True),
        R.NOT_YOUR_ADDRESS,
        R.NOT_YOUR_ADDRESS,
        None,
    ),
    (
        "someone else's, trusted and authenticated",
        facts("bob@a.test", user="alice@a.test", trusted=True),
        R.NOT_YOUR_ADDRESS,
        R.NOT_YOUR_ADDRESS,
        None,
    ),
]


@pytest.mark.parametrize(
    "f, strict, relaxed, disabled", [r[1:] for r in TABLE], ids=[r[0] for r in TABLE]
)
def test_sender_reply(f: SenderFacts, strict: object, relaxed: object, disabled: object) -> None:
    assert sender_reply(S, f) == strict
    assert sender_reply(X, f) == relaxed
    assert sender_reply(D, f) == disabled


def test_mismatch_is_550_5_7_1() -> None:
    assert (R.NOT_YOUR_ADDRESS.code, R.NOT_YOUR_ADDRESS.status) == (550, "5.7.1")


@pytest.mark.parametrize(
    "text, mode",
    [("strict", S), ("TRUE", S), ("Relaxed", X), ("disabled", D), (" false ", D)],
)
def test_parse_mode(text: str, mode: IdentityMode) -> None:
    assert parse_identity_mode(text) is mode


def test_parse_mode_refuses() -> None:
    with pytest.raises(ValueError, match="strict"):
        parse_identity_mode("yes")


@pytest.mark.parametrize(
    "helo, want",
    [
        ("mx.remote.test", True),
        ("a.b", True),
        ("MX.Remote.Test.", True),
        ("client", False),
        ("[192.0.2.1]", False),
        ("192.0.2.1", False),
        ("-bad.test", False),
        (None, False),
        ("", False),
        ("a..b", False),
    ],
)
def test_looks_like_mx(helo: str | None, want: bool) -> None:
    assert looks_like_mx(helo) is want


OWNED = {"alice@a.test", "sales@a.test"}


@pytest.mark.parametrize(
    "mode, sender, user, froms, want",
    [
        (S, "alice@a.test", "alice@a.test", ["alice@a.test"], None),
        (S, "alice@a.test", "alice@a.test", ["sales@a.test", "alice@a.test"], None),
        (S, "alice@a.test", "alice@a.test", ["bob@a.test"], R.NOT_YOUR_ADDRESS),
        (S, "alice@a.test", "alice@a.test", ["alice@a.test", "bob@a.test"], R.NOT_YOUR_ADDRESS),
        (S, "alice@a.test", "alice@a.test", [], R.MISSING_FROM),
        (S, "alice@a.test", "alice@a.test", None, R.MISSING_FROM),
        (X, "alice@a.test", "alice@a.test", ["bob@a.test"], R.NOT_YOUR_ADDRESS),
        (D, "alice@a.test", "alice@a.test", ["bob@a.test"], None),
        # never applied to the null sender
        (S, "", "alice@a.test", ["mailer-daemon@a.test"], None),
        (S, "", "alice@a.test", None, None),
        # inbound mail (no AUTH): the header is not checked
        (S, "x@remote.test", None, ["alice@a.test"], None),
        (S, "x@remote.test", None, None, None),
    ],
)
def test_from_header_reply(
    mode: IdentityMode, sender: str, user: str | None, froms: list[str] | None, want: object
) -> None:
    got = from_header_reply(
        mode,
        envelope_sender=sender,
        authenticated_user=user,
        from_addresses=froms,
        may_send_as=OWNED.__contains__,
    )
    assert got == want
