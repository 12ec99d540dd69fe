"""The recipient rewrite table: address, domain, forward and regex mappings, loops."""

from __future__ import annotations

import pytest

from kittiwake.policy.names import InvalidName
from kittiwake.policy.rewrite import (
    EMPTY_TABLE,
    MappingKind,
    RewriteTable,
    expand,
    normalize_mapping,
    senders_for,
)

A, D, F, X = MappingKind.ADDRESS, MappingKind.DOMAIN, MappingKind.FORWARD, MappingKind.REGEX


def table(*rows: tuple[MappingKind, str, str]) -> RewriteTable:
    return RewriteTable(normalize_mapping(k, s, t) for k, s, t in rows)


T = table(
    (A, "sales@a.test", "alice@a.test"),
    (A, "team@a.test", "alice@a.test"),
    (A, "team@a.test", "bob@a.test"),
    (F, "bob@a.test", "bob@a.test"),
    (F, "bob@a.test", "Bob.Out@Remote.Test"),
    (D, "@alias.test", "@a.test"),
    (D, "alias2.test", "alias.test"),
    (X, r"(.*)\+.*@a\.test", "${1}@a.test"),
    (A, "chain0@a.test", "chain1@a.test"),
    *[(A, f"chain{i}@a.test", f"chain{i + 1}@a.test") for i in range(1, 10)],
    (A, "deep0@a.test", "deep1@a.test"),
    *[(A, f"deep{i}@a.test", f"deep{i + 1}@a.test") for i in range(1, 11)],
    (A, "ping@a.test", "pong@a.test"),
    (A, "pong@a.test", "ping@a.test"),
)


@pytest.mark.parametrize(
    "address, want, loop",
    [
        ("alice@a.test", ("alice@a.test",), False),
        ("Alice@A.TEST", ("Alice@A.TEST",), False),  # not rewritten: kept as written
        ("sales@a.test", ("alice@a.test",), False),
        ("SALES@A.test", ("alice@a.test",), False),
        ("team@a.test", ("alice@a.test", "bob@a.test", "Bob.Out@remote.test"), False),
        ("bob@a.test", ("bob@a.test", "Bob.Out@remote.test"), False),  # forward keeps a copy
        ("alice@alias.test", ("alice@a.test",), False),  # domain alias
        ("sales@alias2.test", ("alice@a.test",), False),  # domain alias of a domain alias
        ("alice+lists@a.test", ("alice@a.test",), False),  # regex
        ("chain0@a.test", ("chain10@a.test",), False),  # 10 levels: allowed
        ("deep0@a.test", (), True),  # 11 levels: a loop for James's mappingLimit 10
        ("ping@a.test", (), True),
        ("nobody@remote.test", ("nobody@remote.test",), False),
        ("x@[192.0.2.1]", ("x@[192.0.2.1]",), False),
    ],
)
def test_expand(address: str, want: tuple[str, ...], loop: bool) -> None:
    got = expand(address, T)
    assert sorted(got.addresses) == sorted(want)  # order: the table's, not insertion
    assert got.loop is loop
    assert got.rewritten is (want != (address,))


def test_empty_table_is_identity() -> None:
    assert expand("a@b.test", EMPTY_TABLE).addresses == ("a@b.test",)
    assert not EMPTY_TABLE


def test_exact_mapping_wins_over_domain_alias() -> None:
    t = table((D, "alias.test", "a.test"), (A, "boss@alias.test", "carol@a.test"))
    assert expand("boss@alias.test", t).addresses == ("carol@a.test",)
    assert expand("dave@alias.test", t).addresses == ("dave@a.test",)
    assert t.is_alias_domain("alias.test") and not t.is_alias_domain("a.test")
    assert t.has_mapping("boss@alias.test") and not t.has_mapping("carol@a.test")


def test_fan_out_is_bounded() -> None:
    rows = [(A, "wide@a.test", f"u{i}@a.test") for i in range(1001)]
    assert expand("wide@a.test", table(*rows)).loop


def test_senders_for() -> None:
    assert senders_for("alice@a.test", T) == {
        "alice@a.test",
        "sales@a.test",
        "team@a.test",
        "alice@alias.test",
        "sales@alias.test",
        "team@alias.test",
        "alice@alias2.test",
        "sales@alias2.test",
        "team@alias2.test",
    }
    # a forward gives no right to send as its source; regex neither
    assert senders_for("bob.out@remote.test", T) == {"bob.out@remote.test"}
    assert "alice+x@a.test" not in senders_for("alice@a.test", T)


@pytest.mark.parametrize(
    "kind, source, target, stored",
    [
        (A, "Sales@A.Test", "Alice@Bücher.Test", ("sales@a.test", "Alice@xn--bcher-kva.test")),
        (D, "@Alias.Test", "@a.test", ("alias.test", "a.test")),
        (D, "alias.test", "a.test", ("alias.test", "a.test")),
        (X, r"(.*)@old\.test", "${1}@a.test", (r"(.*)@old\.test", "${1}@a.test")),
    ],
)
def test_normalize(kind: MappingKind, source: str, target: str, stored: tuple[str, str]) -> None:
    m = normalize_mapping(kind, source, target)
    assert (m.source, m.target) == stored


@pytest.mark.parametrize(
    "kind, source, target",
    [
        (A, "nodomain", "alice@a.test"),
        (A, "sales@a.test", "nodomain"),
        (D, "a.test", "A.TEST"),
        (D, "[192.0.2.1]", "a.test"),
        (X, "(", "x@a.test"),
        (X, "(.*)@a.test", "${2}@b.test"),
    ],
)
def test_normalize_refuses(kind: MappingKind, source: str, target: str) -> None:
    with pytest.raises(InvalidName):
        normalize_mapping(kind, source, target)
