"""The Received header's with-clause and TLS comment (RFC 3848, issue 4 point 3)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from kittiwake.hooks.api import SessionInfo
from kittiwake.protocol import replies
from kittiwake.server.session import Session


def session(protocol: str = "SMTP", **info: Any) -> Session:
    ctx: Any = SimpleNamespace(
        protocol=protocol, hostname="mx.test", auth_required=False, access=None
    )
    base = SessionInfo("l", protocol, "192.0.2.1", 25, "1.1", helo="c.test", esmtp=True)
    for key, value in info.items():
        setattr(base, key, value)
    return Session(ctx, base)


@pytest.mark.parametrize(
    ("protocol", "info", "want"),
    [
        ("SMTP", {}, "ESMTP"),
        ("SMTP", {"esmtp": False}, "SMTP"),
        ("SMTP", {"tls": True}, "ESMTPS"),
        ("SMTP", {"authenticated_user": "alice@local.test"}, "ESMTPA"),
        ("SMTP", {"tls": True, "authenticated_user": "alice@local.test"}, "ESMTPSA"),
        ("SMTP", {"tls": True, "smtputf8": True}, "UTF8SMTPS"),
        ("SMTP", {"tls": True, "smtputf8": True, "authenticated_user": "a@b.c"}, "UTF8SMTPSA"),
        ("LMTP", {"tls": True}, "LMTPS"),
    ],
)
def test_with_clause(protocol: str, info: dict[str, Any], want: str) -> None:
    assert session(protocol, **info)._with_protocol() == want


def test_received_records_protocol_and_cipher() -> None:
    s = session()
    s.encrypted("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)
    header = s._trace_headers("QID").decode()
    assert "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n" in header
    assert " with ESMTPS id QID" in header
    assert "using" not in session()._trace_headers("QID").decode()


def test_starttls_forgets_what_was_said_in_clear_text() -> None:
    s = session(sender="a@example.net", recipients=["b@local.test"], authenticated_user=None)
    s.tls_started("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", 128)
    info = s.info
    assert (info.helo, info.esmtp, info.sender, info.recipients) == (None, False, None, [])
    assert info.tls and info.tls_version == "TLSv1.2" and info.tls_bits == 128


def test_starttls_refused_after_auth_by_the_session() -> None:
    assert session(authenticated_user="alice@local.test")._starttls() == (
        replies.STARTTLS_AFTER_AUTH
    )
    assert session()._starttls() == replies.READY_TLS
