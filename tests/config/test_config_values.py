"""Value syntax: sizes (maxmessagesize), bind lists, booleans, integers."""

from __future__ import annotations

import re

import pytest
from kw_config_helpers import fake_resolve

from kittiwake.config._errors import Invalid
from kittiwake.config._values import parse_binds, parse_bool, parse_int, parse_size
from kittiwake.config.model import Bind

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),  # no limit
        ("1", KIB),  # a plain number is KiB, as James reads maxmessagesize
        ("25600", 25 * MIB),
        ("100B", 100),
        ("100b", 100),
        ("1K", KIB),
        ("1k", KIB),
        ("25M", 25 * MIB),
        ("25m", 25 * MIB),
        ("2G", 2 * GIB),
        ("2g", 2 * GIB),
        ("0M", 0),
        (" 10M ", 10 * MIB),
        ("unlimited", 0),  # James's Size.UNLIMITED
        ("UNLIMITED", 0),
    ],
)
def test_size_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "10 M", "10MB", "1.5M", "10T", "ten", "-1", "-5M"])
def test_size_refused(text: str) -> None:
    with pytest.raises(Invalid):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:25", (Bind("127.0.0.1", 25),)),
        ("0.0.0.0:25", (Bind("0.0.0.0", 25),)),
        (" 0.0.0.0 : 25 ", (Bind("0.0.0.0", 25),)),
        ("[::1]:25", (Bind("::1", 25),)),
        ("[::]:587", (Bind("::", 587),)),
        ("::1:25", (Bind("::1", 25),)),  # split on the last colon
        (":::25", (Bind("::", 25),)),
        ("[2001:db8::1]:2525", (Bind("2001:db8::1", 2525),)),
        ("2001:db8::1:2525", (Bind("2001:db8::1", 2525),)),
        ("[2001:0db8:0000::0001]:25", (Bind("2001:db8::1", 25),)),  # compressed form
        ("127.0.0.1:2525,[::1]:2525", (Bind("127.0.0.1", 2525), Bind("::1", 2525))),
        (
            "0.0.0.0:25, 0.0.0.0:465,0.0.0.0:587",
            (Bind("0.0.0.0", 25), Bind("0.0.0.0", 465), Bind("0.0.0.0", 587)),
        ),
        ("127.0.0.1:25,127.0.0.1:25", (Bind("127.0.0.1", 25),)),  # duplicates folded
        ("127.0.0.1:0", (Bind("127.0.0.1", 0),)),  # any free port (tests)
        ("127.0.0.1:65535", (Bind("127.0.0.1", 65535),)),
        ("localhost:25", (Bind("127.0.0.1", 25), Bind("::1", 25))),  # every address
        ("mail.example.test:25", (Bind("192.0.2.10", 25), Bind("2001:db8::10", 25))),
    ],
)
def test_bind_parsing(text: str, expected: tuple[Bind, ...]) -> None:
    assert parse_binds(text, fake_resolve) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("localhost", "not host:port"),
        (":25", "not host:port"),
        ("127.0.0.1:", "bad port"),
        ("127.0.0.1:smtp", "bad port"),
        ("127.0.0.1:65536", "bad port"),
        ("127.0.0.1:-1", "bad port"),
        ("127.0.0.1:25,", "empty entry"),
        (",127.0.0.1:25", "empty entry"),
        ("[::1:25", "not an IP address"),
        ("[127.0.0.1]:25", "not an IPv6 address"),
        ("[fe80::zz]:25", "not an IPv6 address"),
        ("256.0.0.1:25", "not an IP address"),
        ("010.0.0.1:25", "not an IP address"),  # would be octal to getaddrinfo
        ("127.1:25", "not an IP address"),
        ("no.such.host.test:25", "does not resolve"),
    ],
)
def test_bind_refused(text: str, reason: str) -> None:
    with pytest.raises(Invalid, match=reason):
        parse_binds(text, fake_resolve)


def test_bind_ipv4_without_port_names_the_entry() -> None:
    # "127.0.0.1" splits into host "127.0.0" and port "1": the host is refused.
    with pytest.raises(Invalid, match=re.escape("'127.0.0.1'")):
        parse_binds("127.0.0.1", fake_resolve)


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("TRUE", True), ("False", False), (" false ", False)]
)
def test_bool(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


@pytest.mark.parametrize("text", ["", "yes", "no", "on", "1", "0", "t", "truee"])
def test_bool_refused(text: str) -> None:
    with pytest.raises(Invalid, match="not a boolean"):
        parse_bool(text)


def test_int() -> None:
    assert parse_int("42") == 42
    assert parse_int("+42") == 42
    assert parse_int(" -3 ") == -3
    with pytest.raises(Invalid, match=re.escape("out of range 1..9")):
        parse_int("10", 1, 9)
    with pytest.raises(Invalid, match="less than 0"):
        parse_int("-1", low=0)
    with pytest.raises(Invalid, match="more than 5"):
        parse_int("6", high=5)
    for bad in ("", "1_000", "1e3", "٣", "0x10", "1.0"):
        with pytest.raises(Invalid, match="not an integer"):
            parse_int(bad)
