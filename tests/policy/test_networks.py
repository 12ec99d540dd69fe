"""authorizedAddresses: every syntax James accepts, and matching clients against it."""

from __future__ import annotations

import ipaddress

import pytest

from kittiwake.policy.networks import (
    InvalidNetwork,
    client_is_trusted,
    parse_network,
    parse_networks,
)

HOSTS = {
    "localhost": ("127.0.0.1", "::1"),
    "relay.example": ("192.0.2.7",),
    "mapped.example": ("::ffff:198.51.100.9",),
}


def resolve(host: str) -> tuple[str, ...]:
    try:
        return HOSTS[host]
    except KeyError:
        raise OSError(f"unknown host {host}") from None


def nets(*specs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(s) for s in specs)


@pytest.mark.parametrize(
    "spec, want",
    [
        ("127.0.0.1", nets("127.0.0.1/32")),
        ("127.*", nets("127.0.0.0/8")),
        ("127.0.*", nets("127.0.0.0/16")),
        ("127.0.0.*", nets("127.0.0.0/24")),
        ("127.0.0.0/8", nets("127.0.0.0/8")),
        ("127.0.0.5/8", nets("127.0.0.0/8")),  # host bits are dropped, as James does
        ("127.0.0.0/255.0.0.0", nets("127.0.0.0/8")),
        ("10.1.0.0/255.255.0.0", nets("10.1.0.0/16")),
        ("localhost", nets("127.0.0.1/32", "::1/128")),
        ("localhost/8", nets("127.0.0.0/8", "::1/128")),  # the v4 mask never widens ::1
        ("localhost/255.0.0.0", nets("127.0.0.0/8", "::1/128")),
        ("relay.example/24", nets("192.0.2.0/24")),
        ("mapped.example", nets("198.51.100.9/32")),
        ("::1", nets("::1/128")),
        ("2001:db8::/32", nets("2001:db8::/32")),
        ("2001:db8::%32", nets("2001:db8::/32")),  # James's % spelling of the mask
        ("::ffff:10.0.0.0/104", nets("10.0.0.0/8")),
    ],
)
def test_every_james_syntax(spec: str, want: tuple[object, ...]) -> None:
    assert parse_network(spec, resolve) == want


@pytest.mark.parametrize(
    "spec, reason",
    [
        ("*", "open relay"),
        ("0.0.0.0/0", "open relay"),
        ("0.0.0.0/0.0.0.0", "open relay"),
        ("::/0", "open relay"),
        ("localhost/0", "open relay"),
        ("127.0.0.0/33", "at most 32"),
        ("127.0.0.0/255.0.255.0", "contiguous"),
        ("127.0.0.0/x", "mask"),
        ("127.*.0.*", "wildcard"),
        ("2001:db8::*", "wildcard"),
        ("2001:db8::/x", "number"),
        ("2001:db8::/129", "2001:db8::"),
        ("256.0.0.1", "256"),
        ("unknown.example", "does not resolve"),
        ("bad/host", "mask"),
        ("a;b", "neither"),
    ],
)
def test_refused(spec: str, reason: str) -> None:
    with pytest.raises(InvalidNetwork, match=reason):
        parse_network(spec, resolve)


def test_list_separators_and_repeats() -> None:
    text = " 127.0.0.0/8, 10.0.0.0/8 ,\n192.168.*  127.0.0.0/255.0.0.0,,"
    assert parse_networks(text, resolve) == nets("127.0.0.0/8", "10.0.0.0/8", "192.168.0.0/16")
    assert parse_networks("", resolve) == ()


@pytest.mark.parametrize(
    "client, want",
    [
        ("127.0.0.1", True),
        ("127.255.1.2", True),
        ("::ffff:127.0.0.1", True),  # IPv4 client on a dual-stack socket
        ("10.0.0.1", False),
        ("::1", True),
        ("::2", False),
        ("2001:db8:1::5", True),
        ("2001:db9::5", False),
        ("fe80::1%eth0", False),
        ("", False),  # a Unix socket has no address
        ("not-an-ip", False),
    ],
)
def test_client_is_trusted(client: str, want: bool) -> None:
    networks = parse_networks("127.0.0.0/8 ::1 2001:db8::/32", resolve)
    assert client_is_trusted(client, networks) is want


def test_nothing_trusted_by_default() -> None:
    assert client_is_trusted("127.0.0.1", ()) is False
