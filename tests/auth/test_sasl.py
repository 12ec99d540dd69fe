"""PLAIN and LOGIN, sans I/O: every line shape of RFC 4954 4 and RFC 4616."""

from __future__ import annotations

import base64

import pytest

from kittiwake.auth.sasl import (
    Challenge,
    Credentials,
    Failure,
    LoginMechanism,
    PlainMechanism,
    authorize,
    challenge_reply,
    decode,
    new_mechanism,
)
from kittiwake.protocol import replies as R


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "line, initial, want",
    [
        ("", False, b""),
        ("=", True, b""),
        ("=", False, Failure(R.AUTH_BAD_BASE64)),
        ("*", False, Failure(R.AUTH_CANCELLED, cancelled=True)),
        ("*", True, Failure(R.AUTH_BAD_BASE64)),
        ("YWxpY2U=", False, b"alice"),
        ("YWxpY2U", False, Failure(R.AUTH_BAD_BASE64)),  # padding missing
        ("YW=xpY2U", False, Failure(R.AUTH_BAD_BASE64)),  # padding misplaced
        ("YWxp Y2U=", False, Failure(R.AUTH_BAD_BASE64)),  # not in the alphabet
        ("YWxpY2U=\t", False, Failure(R.AUTH_BAD_BASE64)),
        ("YWxpY2U==", False, Failure(R.AUTH_BAD_BASE64)),
        ("éé==", False, Failure(R.AUTH_BAD_BASE64)),
    ],
)
def test_decode(line: str, initial: bool, want: object) -> None:
    assert decode(line, initial=initial) == want


@pytest.mark.parametrize(
    "message, want",
    [
        (b"\0alice@a.test\0pw", Credentials("", "alice@a.test", "pw")),
        (b"boss@a.test\0alice@a.test\0pw", Credentials("boss@a.test", "alice@a.test", "pw")),
        (b"alice@a.test\0pw", Credentials("", "alice@a.test", "pw")),  # James's short form
        (b"\0alice@a.test\0pw\0", Credentials("", "alice@a.test", "pw")),  # trailing NUL
        (b"\0alice@a.test\0p\xc3\xa4ss", Credentials("", "alice@a.test", "päss")),
        (b"\0alice@a.test\0", Credentials("", "alice@a.test", "")),
        (b"\0\0pw", Failure(R.AUTH_BAD_RESPONSE)),  # no authcid
        (b"alice", Failure(R.AUTH_BAD_RESPONSE)),
        (b"a\0b\0c\0d", Failure(R.AUTH_BAD_RESPONSE)),
        (b"\0alice\0\xff", Failure(R.AUTH_BAD_RESPONSE)),  # not UTF-8
    ],
)
def test_plain_initial_response(message: bytes, want: object) -> None:
    assert PlainMechanism().start(b64(message)) == want


def test_plain_without_initial_response() -> None:
    mech = PlainMechanism()
    step = mech.start(None)
    assert step == Challenge(b"")
    assert challenge_reply(step).to_bytes() == b"334 \r\n"  # the space stays (RFC 4954 4)
    assert mech.respond(b64(b"\0alice@a.test\0pw")) == Credentials("", "alice@a.test", "pw")


def test_plain_cancel_and_bad_base64() -> None:
    mech = PlainMechanism()
    mech.start(None)
    assert mech.respond("*") == Failure(R.AUTH_CANCELLED, cancelled=True)
    assert PlainMechanism().start("!!") == Failure(R.AUTH_BAD_BASE64)
    assert PlainMechanism().start("=") == Failure(R.AUTH_BAD_RESPONSE)  # empty message


def test_login_two_steps() -> None:
    mech = LoginMechanism()
    first = mech.start(None)
    assert isinstance(first, Challenge)
    assert challenge_reply(first) == R.Reply(334, "", "VXNlcm5hbWU6")  # "Username:"
    second = mech.respond(b64(b"alice@a.test"))
    assert isinstance(second, Challenge)
    assert challenge_reply(second) == R.Reply(334, "", "UGFzc3dvcmQ6")  # "Password:"
    assert mech.respond(b64(b"pw")) == Credentials("", "alice@a.test", "pw")


def test_login_initial_response_is_the_user() -> None:
    mech = LoginMechanism()
    assert mech.start(b64(b"alice@a.test")) == LoginMechanism.PASSWORD
    assert mech.respond("") == Credentials("", "alice@a.test", "")


def test_login_failures() -> None:
    assert LoginMechanism().start("=") == Failure(R.AUTH_BAD_RESPONSE)
    mech = LoginMechanism()
    mech.start(None)
    assert mech.respond("*") == Failure(R.AUTH_CANCELLED, cancelled=True)
    mech = LoginMechanism()
    mech.start(None)
    mech.respond(b64(b"alice"))
    assert mech.respond("%%") == Failure(R.AUTH_BAD_BASE64)


def test_new_mechanism() -> None:
    assert isinstance(new_mechanism("plain"), PlainMechanism)
    assert isinstance(new_mechanism("LOGIN"), LoginMechanism)
    assert new_mechanism("CRAM-MD5") is None


def test_password_never_in_repr() -> None:
    assert "pw" not in repr(Credentials("", "alice", "pw"))


ADMINS = frozenset({"admin@a.test"})


@pytest.mark.parametrize(
    "authcid, authzid, want",
    [
        ("alice@a.test", "", "alice@a.test"),
        ("alice@a.test", "alice@a.test", "alice@a.test"),
        ("alice@a.test", "bob@a.test", None),  # 535 5.7.8
        ("admin@a.test", "bob@a.test", "bob@a.test"),  # administratorIds may act as anyone
    ],
)
def test_authorize(authcid: str, authzid: str, want: str | None) -> None:
    assert authorize(authcid, authzid, ADMINS) == want
