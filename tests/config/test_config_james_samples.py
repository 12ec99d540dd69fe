"""James's own sample files (tests/config/james-samples/, verbatim), loaded as they are."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from kittiwake.config import Bind, Config, HostLookup, load_config
from kittiwake.config.model import AuthAnnounce

SAMPLES = Path(__file__).parent / "james-samples"
GLOBAL = '<smtpserver name="smtpserver-global">'
TLS = '<smtpserver name="smtpserver-TLS">'
SUBMISSION = '<smtpserver name="smtpserver-authenticated">'

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def edited(app: str, tmp_path: Path, *edits: tuple[str, str]) -> Path:
    """A copy of the sample directory with text replacements in smtpserver.xml."""
    directory = tmp_path / app
    shutil.copytree(SAMPLES / app, directory)
    path = directory / "smtpserver.xml"
    text = path.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return directory


def test_samples_are_kept_verbatim() -> None:
    # Trailing spaces are part of James's spring-app file; an editor must not strip them.
    assert (SAMPLES / "spring-app" / "smtpserver.xml").stat().st_size == 15009
    assert (SAMPLES / "distributed-app" / "smtpserver.xml").stat().st_size == 7683
    assert (SAMPLES / "jpa-smtp-app" / "smtpserver.xml").stat().st_size == 7620
    assert (SAMPLES / "jpa-smtp-app" / "mailetcontainer.xml").stat().st_size == 4948


@pytest.mark.parametrize("app", ["distributed-app", "jpa-smtp-app"])
def test_three_listener_samples_auth(app: str, host: HostLookup) -> None:
    """James's 25/465/587 layout loads as it is, with its AUTH and relay options."""
    mx, smtps, submission = load_config(SAMPLES / app, host=host).listeners
    assert mx.core_handlers == "NoAuthCmdHandlerLoader" and not mx.auth.command
    assert mx.auth.announce is AuthAnnounce.NEVER and not mx.auth.require_ssl
    assert not mx.auth_required
    for listener in (mx, smtps, submission):
        assert listener.auth.trusted_networks == LOOPBACK
        assert listener.auth.verify_identity == "strict"
    for listener in (smtps, submission):
        assert listener.auth.command and listener.auth_required
        assert listener.auth.announce is AuthAnnounce.FOR_UNAUTHORIZED_ADDRESSES
        assert listener.auth.require_ssl and listener.auth.plain_enabled


@pytest.mark.parametrize("app", ["distributed-app", "jpa-smtp-app"])
def test_three_listener_samples_tls(app: str, tmp_path: Path, host: HostLookup) -> None:
    """James's 25/465/587 layout loads with its TLS read as James reads it."""
    directory = edited(app, tmp_path)
    config = load_config(directory, host=host)
    mx, smtps, submission = config.listeners
    assert mx.tls is None and not mx.auth_required
    assert smtps.binds == (Bind("0.0.0.0", 465),) and smtps.auth_required
    assert submission.binds == (Bind("0.0.0.0", 587),) and submission.auth_required
    assert smtps.tls is not None and submission.tls is not None
    assert smtps.tls.implicit and not smtps.tls.starttls
    assert submission.tls.starttls and not submission.tls.implicit
    for tls in (smtps.tls, submission.tls):
        assert tls.keystore == str(directory / "keystore")  # file://conf/keystore
        assert tls.keystore_type == "PKCS12"
        assert tls.secret == "james72laBalle"
        assert "james72laBalle" not in repr(tls)
        assert tls.private_key is None and not tls.client_auth
    assert f"smtpserver.xml: {TLS}/<tls>/<provider> (James does not read it either)" in (
        config.unimplemented
    )


def test_spring_app_sample_loads(host: HostLookup) -> None:
    config = load_config(SAMPLES / "spring-app", host=host)
    (listener,) = config.listeners
    assert listener.auth.trusted_networks == LOOPBACK
    assert listener.auth.verify_identity == "strict"
    # <authRequired> is commented out, and so is <announce>: AUTH is never announced
    assert listener.auth.announce is AuthAnnounce.NEVER
    assert listener.name == "smtpserver"
    assert listener.binds == (Bind("0.0.0.0", 25),)
    assert listener.connection_backlog == 200
    assert listener.connection_timeout == 360.0
    assert listener.max_message_size == 0
    assert listener.address_brackets_enforcement
    assert listener.greeting is None
    name = '<smtpserver name="smtpserver">'
    assert config.unimplemented == (
        f"smtpserver.xml: {name}/<tls> (TLS is off: socketTLS and startTLS are false)",
    )
    assert [h.class_name.rpartition(".")[2] for h in listener.handlers] == [
        "ValidRcptHandler",
        "CoreCmdHandlerLoader",
    ]


def test_jpa_smtp_app_port_25_listener_alone(tmp_path: Path, host: HostLookup) -> None:
    """Disable the TLS and submission listeners: port 25 alone."""
    directory = edited(
        "jpa-smtp-app",
        tmp_path,
        (
            '<smtpserver enabled="true">\n        <jmxName>smtpserver-TLS',
            '<smtpserver enabled="false">\n        <jmxName>smtpserver-TLS',
        ),
        (
            '<smtpserver enabled="true">\n        <jmxName>smtpserver-authenticated',
            '<smtpserver enabled="false">\n        <jmxName>smtpserver-authenticated',
        ),
    )
    config: Config = load_config(directory, host=host)
    (listener,) = config.listeners
    assert listener.name == "smtpserver-global"
    assert listener.binds == (Bind("0.0.0.0", 25),)
    assert listener.greeting == "Apache JAMES awesome SMTP Server"
    # <postmaster>postmaster</postmaster> gets the default domain appended, as in James.
    assert config.server.postmaster == "postmaster@localhost"
    assert config.unimplemented[:1] == (
        f"smtpserver.xml: {GLOBAL}/<tls> (TLS is off: socketTLS and startTLS are false)",
    )
    assert listener.core_handlers == "NoAuthCmdHandlerLoader"
    # <spooler> and <processors> are the mailet container's (tests/mailet)
    assert config.unimplemented[-1:] == ("mailetcontainer.xml: <mailetcontainer>/@enableJmx",)
