"""Where an LMTP recipient goes after the rewrite table, and its one reply
(``server/lmtp_routes.py``)."""

from __future__ import annotations

import pytest

from kittiwake.delivery.base import Outcome, Status, Target
from kittiwake.policy.rewrite import MappingKind, RewriteTable, normalize_mapping
from kittiwake.server.lmtp_routes import combine, route

USERS = {"alice@a.test", "bob@a.test"}
TABLE = RewriteTable(
    [
        normalize_mapping(MappingKind.ADDRESS, "sales@a.test", "alice@a.test"),
        normalize_mapping(MappingKind.ADDRESS, "sales@a.test", "bob@a.test"),
        normalize_mapping(MappingKind.FORWARD, "fwd@a.test", "x@remote.test"),
        normalize_mapping(MappingKind.FORWARD, "fwd@a.test", "fwd@a.test"),
        normalize_mapping(MappingKind.DOMAIN, "alias.test", "a.test"),
    ]
)


def resolve(address: str) -> str | None:
    key = address.lower()
    return key if key in USERS else None


def test_route() -> None:
    routes = route(
        ["sales@a.test", "Bob@alias.test", "fwd@a.test", "ghost@a.test"],
        TABLE,
        resolve,
        lambda d: d == "a.test",
    )
    assert [(r.recipient, r.targets, r.remote) for r in routes] == [
        (
            "sales@a.test",
            [Target(0, "alice@a.test", "alice@a.test"), Target(1, "bob@a.test", "bob@a.test")],
            [],
        ),
        ("Bob@alias.test", [Target(2, "bob@a.test", "bob@a.test")], []),
        ("fwd@a.test", [Target(3, "fwd@a.test", None)], ["x@remote.test"]),
        ("ghost@a.test", [Target(4, "ghost@a.test", None)], []),
    ]


SENT = Outcome(0, "a", Status.SENT, "2.0.0", "/m/a")
SENT2 = Outcome(1, "b", Status.SENT, "2.0.0", "/m/b")
LATER = Outcome(2, "c", Status.DEFERRED, "4.3.0", detail="io")
NEVER = Outcome(3, "d", Status.FAILED, "5.2.2", detail="full")


@pytest.mark.parametrize(
    "parts, remote, want",
    [
        ([SENT, SENT2], None, (Status.SENT, "2.0.0", "/m/a,/m/b")),
        ([SENT, NEVER], None, (Status.FAILED, "5.2.2", "")),
        ([NEVER, LATER], None, (Status.DEFERRED, "4.3.0", "")),  # temporary wins
        ([SENT], LATER, (Status.DEFERRED, "4.3.0", "")),
        ([], SENT2, (Status.SENT, "2.0.0", "/m/b")),
        ([], None, (Status.FAILED, "5.1.1", "")),
    ],
)
def test_combine(
    parts: list[Outcome], remote: Outcome | None, want: tuple[Status, str, str]
) -> None:
    o = combine("r@a.test", parts, remote)
    assert o.recipient == "r@a.test"
    assert (o.status, o.dsn, o.location if o.status is Status.SENT else "") == want
