"""STARTTLS in the core (RFC 3207): what it refuses, what it forgets, what it never runs."""

from __future__ import annotations

import pytest

from kittiwake.protocol import (
    CoreSettings,
    LocalProtocolError,
    ServerConnection,
    StartTLS,
    State,
    replies,
)

from .transcripts import HOSTNAME, Session, split_replies


def tls_session(**kw: object) -> Session:
    s = Session(CoreSettings(HOSTNAME, starttls=True, **kw))  # type: ignore[arg-type]
    s.lines("EHLO client.test")
    return s


def test_starttls_is_refused_after_auth() -> None:
    """The hook point for AUTH (issue 5): once the application marks the session
    authenticated, STARTTLS is refused and nothing changes."""
    s = tls_session()
    s.conn.authenticated = True
    assert s.lines("STARTTLS") == [[str(replies.STARTTLS_AFTER_AUTH)]]
    assert s.conn.state is State.GREETED and not s.conn.tls
    assert "StartTLS" not in s.app.events


def test_injected_commands_in_the_same_read_are_never_run() -> None:
    s = tls_session()
    got = s.feed(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@local.test>\r\n")
    assert got == [[str(replies.READY_TLS)], [str(replies.STARTTLS_INJECTION)]]
    assert s.conn.closed
    assert "MailFrom" not in s.app.events and "RcptTo" not in s.app.events


def test_injected_octets_in_a_later_read_close_the_connection() -> None:
    s = tls_session()
    assert s.lines("STARTTLS") == [[str(replies.READY_TLS)]]
    assert s.conn.state is State.TLS_HANDSHAKE
    assert s.feed(b"R") == [[str(replies.STARTTLS_INJECTION)]]
    assert s.conn.closed
    with pytest.raises(LocalProtocolError):
        s.conn.tls_started()  # nothing to start: the connection is closed


def test_nothing_is_read_while_the_handshake_is_pending() -> None:
    s = tls_session()
    s.lines("STARTTLS")
    assert s.feed(b"") == []  # EOF: the client gave up
    assert s.conn.closed


def test_handshake_forgets_everything() -> None:
    s = tls_session()
    s.lines("STARTTLS")
    s.conn.tls_started()
    assert s.conn.state is State.CONNECTED and s.conn.tls
    assert "STARTTLS" not in s.conn.keywords()
    assert s.lines("MAIL FROM:<a@remote.test>") == [[str(replies.NEED_HELO)]]
    [ehlo] = s.lines("EHLO client.test")
    assert not any("STARTTLS" in line for line in ehlo)
    assert s.lines("STARTTLS") == [[str(replies.TLS_ALREADY_ACTIVE)]]


def test_a_refusal_by_the_application_changes_nothing() -> None:
    conn = ServerConnection(CoreSettings(HOSTNAME, starttls=True))
    conn.greeting()
    conn.receive_data(b"EHLO client.test\r\n")
    next(conn.events())
    conn.send(replies.OK)
    conn.receive_data(b"STARTTLS\r\nNOOP\r\n")
    events = conn.events()
    assert isinstance(next(events), StartTLS)
    conn.send(replies.TLS_NOT_AVAILABLE)  # no certificate loaded, say
    assert list(events) == []  # NOOP answered by the core, no decision
    out = split_replies(conn.data_to_send())
    assert out[-2:] == [[str(replies.TLS_NOT_AVAILABLE)], ["250 2.0.0 Ok"]]
    assert conn.state is State.GREETED and not conn.tls


def test_tls_started_without_starttls_is_a_local_error() -> None:
    s = tls_session()
    with pytest.raises(LocalProtocolError):
        s.conn.tls_started()


def test_implicit_tls_offers_no_starttls() -> None:
    conn = ServerConnection(CoreSettings(HOSTNAME, starttls=True), tls=True)
    assert "STARTTLS" not in conn.keywords()
    s = Session(CoreSettings(HOSTNAME))
    s.conn = conn
    s.lines("EHLO client.test")
    assert s.lines("STARTTLS") == [[str(replies.TLS_ALREADY_ACTIVE)]]


def test_disabled_starttls_is_neither_offered_nor_run() -> None:
    s = tls_session(disabled_keywords=frozenset({"STARTTLS"}))
    assert "STARTTLS" not in s.conn.keywords()
    assert s.lines("STARTTLS") == [[str(replies.NOT_IMPLEMENTED)]]
