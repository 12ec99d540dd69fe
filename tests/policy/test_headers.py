"""Header reading for the From: identity check and submission's Date/Message-ID."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kittiwake.policy.headers import (
    from_addresses,
    header_complete,
    header_fields,
    submission_fields,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_fields_unfolded_until_the_empty_line() -> None:
    text = b"From: Alice\r\n <alice@a.test>\r\nSubject: hi\r\n\r\nFrom: body@a.test\r\n"
    assert header_fields(text) == [("from", "Alice <alice@a.test>"), ("subject", "hi")]


@pytest.mark.parametrize(
    "text, want",
    [
        (b"From: a@a.test\r\n\r\nbody", ["a@a.test"]),
        (b"FROM: A <a@a.test>, b@a.test\r\n\r\n", ["a@a.test", "b@a.test"]),
        (b"From: a@a.test\r\nFrom: c@a.test\r\n\r\n", ["a@a.test", "c@a.test"]),
        (b"From: undisclosed-recipients:;\r\n\r\n", []),
        (b"From: team: a@a.test, b@a.test;\r\n\r\n", ["a@a.test", "b@a.test"]),
        (b"Subject: none\r\n\r\n", []),
        (b"\r\nFrom: a@a.test\r\n", []),  # no header at all: that is body text
        (b"not a header\r\nFrom: a@a.test\r\n\r\n", []),
        (b"From: \xff\xfe <a@a.test>\r\n\r\n", ["a@a.test"]),
    ],
)
def test_from_addresses(text: bytes, want: list[str]) -> None:
    assert from_addresses(header_fields(text)) == want


def test_header_complete() -> None:
    assert header_complete(b"\r\nbody")
    assert header_complete(b"A: b\r\n\r\n")
    assert not header_complete(b"A: b\r\nC: d\r\n")


def test_submission_fields_added_when_missing() -> None:
    added = submission_fields(header_fields(b"Subject: x\r\n\r\n"), now=NOW, message_id="q@h")
    assert added == b"Date: Fri, 02 Jan 2026 03:04:05 +0000\r\nMessage-ID: <q@h>\r\n"


def test_submission_fields_kept_when_present() -> None:
    text = b"date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-Id: <x@y>\r\n\r\n"
    assert submission_fields(header_fields(text), now=NOW, message_id="q@h") == b""
