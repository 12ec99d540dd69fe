"""RemoteDelivery's DATA text: what aiosmtplib's SMTP.data would send, made faster,
and what a destination receives for the lines that need dot-stuffing."""

from __future__ import annotations

from pathlib import Path

from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from kittiwake.mailet.remote_smtp import data_text
from kw_dns import TestDns

from .remote_helpers import Context, Destination, deliver, mailet_with, make_mail


def _aiosmtplib(data: bytes) -> bytes:
    """aiosmtplib 5's own DATA text (SMTPProtocol.execute_data_command)."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"


# messages made of the pieces that matter: line ends of every kind, dots, text
_pieces = st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"x y", b"\r\n.\r\n"])


@given(st.lists(_pieces, max_size=40).map(b"".join))
def test_data_text_is_what_aiosmtplib_sends(data: bytes) -> None:
    assert data_text(data) == _aiosmtplib(data)


@given(st.binary(max_size=200))
def test_data_text_is_what_aiosmtplib_sends_for_any_bytes(data: bytes) -> None:
    assert data_text(data) == _aiosmtplib(data)


def test_dot_lines_arrive_as_they_were(tmp_path: Path, dns_server: TestDns) -> None:
    dest = Destination().start()
    try:
        dns_server.add("dots.data.test", "MX", "10 mx.dots.data.test")
        dns_server.add("mx.dots.data.test", "A", "127.0.0.2")
        mailet = mailet_with(Context(tmp_path), **{"mail.smtp.port": str(dest.port)})
        body = b".starts with a dot\r\n..two\r\n.\r\nmiddle\r\nlast line without CRLF"
        mailet.service(make_mail("D1", ["carol@dots.data.test"], body=body))
        assert deliver(mailet, dns_server) == []
        [got] = dest.messages
        assert got.data.endswith(body + b"\r\n")  # the server undid the stuffing
    finally:
        dest.stop()
