"""The relay rule as a table: every address trick of issue 5, point 4, from an
unauthenticated session (AUTH announced or not), an authenticated one and a trusted one."""

from __future__ import annotations

import pytest

from kittiwake.policy.recipients import RcptFacts
from kittiwake.policy.relay import SessionTrust, recipient_reply, relay_reply
from kittiwake.protocol import replies as R

STRANGER = SessionTrust(relay_allowed=False, auth_announced=False)  # port 25, no AUTH
ANNOUNCED = SessionTrust(relay_allowed=False, auth_announced=True)  # may log in
ALLOWED = SessionTrust(relay_allowed=True, auth_announced=True)  # logged in or trusted


def local(lp: str, exists: bool = True, **kw: bool) -> RcptFacts:
    return RcptFacts(lp, "kittiwake.test", True, exists, **kw)


def remote(lp: str = "victim", domain: str | None = "remote.test", **kw: bool) -> RcptFacts:
    return RcptFacts(lp, domain, False, False, **kw)


# (case, facts, stranger, announced, allowed)
TABLE = [
    ("local user", local("alice"), None, None, None),
    ("local unknown user", local("nobody", False), R.NO_SUCH_USER, R.NO_SUCH_USER, R.NO_SUCH_USER),
    ("role account", local("postmaster", False), None, None, None),
    ("bare postmaster", RcptFacts("postmaster", "", False, False), None, None, None),
    ("bare non-postmaster", RcptFacts("alice", "", False, False), *[R.BAD_RECIPIENT_SYNTAX] * 3),
    ("alias loop", local("loop", False, loop=True), *[R.ROUTING_LOOP] * 3),
    ("remote", remote(), R.RELAY_DENIED, R.AUTH_REQUIRED, None),
    # upper case and U-labels arrive canonical: "REMOTE.TEST" is facts.domain "remote.test"
    ("upper-case remote", remote(domain="remote.test"), R.RELAY_DENIED, R.AUTH_REQUIRED, None),
    # invalid IDNA and the like: no canonical form
    (
        "no canonical form",
        remote(domain=None),
        R.RELAY_DENIED,
        R.AUTH_REQUIRED,
        R.BAD_RECIPIENT_SYNTAX,
    ),
    (
        "address literal",
        remote(domain=None, literal=True),
        R.RELAY_DENIED,
        R.AUTH_REQUIRED,
        R.LITERAL_NOT_RELAYED,
    ),
    # percent hack, bang path, quoted @ and % to a local domain: refused unless a mailbox
    (
        "percent hack",
        local("victim%remote.test", False),
        R.RELAY_DENIED,
        R.AUTH_REQUIRED,
        R.NO_SUCH_USER,
    ),
    (
        "bang path",
        local("remote.test!victim", False),
        R.RELAY_DENIED,
        R.AUTH_REQUIRED,
        R.NO_SUCH_USER,
    ),
    (
        "quoted @",
        local('"victim@remote.test"', False),
        R.RELAY_DENIED,
        R.AUTH_REQUIRED,
        R.NO_SUCH_USER,
    ),
    (
        "quoted %",
        local('"victim%remote.test"', False),
        R.RELAY_DENIED,
        R.AUTH_REQUIRED,
        R.NO_SUCH_USER,
    ),
    ("percent, existing mailbox", local("odd%name"), None, None, None),
    # the same tricks aimed at a remote domain: relaying, so only for ALLOWED
    ("percent hack remote", remote("a%b.test"), R.RELAY_DENIED, R.AUTH_REQUIRED, None),
    ("bang path remote", remote("b.test!a"), R.RELAY_DENIED, R.AUTH_REQUIRED, None),
]


@pytest.mark.parametrize(
    "facts, stranger, announced, allowed", [row[1:] for row in TABLE], ids=[r[0] for r in TABLE]
)
def test_recipient_reply(
    facts: RcptFacts,
    stranger: object,
    announced: object,
    allowed: object,
) -> None:
    assert recipient_reply(facts, STRANGER) == stranger
    assert recipient_reply(facts, ANNOUNCED) == announced
    assert recipient_reply(facts, ALLOWED) == allowed


def test_530_is_5_7_0_and_550_is_5_7_1() -> None:
    assert (R.AUTH_REQUIRED.code, R.AUTH_REQUIRED.status) == (530, "5.7.0")
    assert (R.RELAY_DENIED.code, R.RELAY_DENIED.status) == (550, "5.7.1")


def test_local_mail_never_needs_auth() -> None:
    for trust in (STRANGER, ANNOUNCED):
        assert relay_reply(local("alice"), trust) is None
        assert relay_reply(local("nobody", False), trust) is None  # unknown: 5.1.1 later
