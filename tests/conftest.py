"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kw_dns import TestDns


@pytest.fixture(scope="session")
def dns_server() -> Iterator[TestDns]:
    """One DNS server on loopback for the whole run; tests use names of their own."""
    server = TestDns()
    yield server
    server.stop()
