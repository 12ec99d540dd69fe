"""James's own sample files (tests/config/james-samples/, verbatim), loaded as they are."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kittiwake.config import Bind, Config, ConfigError, HostLookup, load_config

SAMPLES = Path(__file__).parent / "james-samples"
GLOBAL = '<smtpserver name="smtpserver-global">'
TLS = '<smtpserver name="smtpserver-TLS">'
SUBMISSION = '<smtpserver name="smtpserver-authenticated">'

# The three-listener layout shared by distributed-app and jpa-smtp-app: what stops it.
THREE_LISTENER_REFUSALS = [
    f"{GLOBAL}/<authorizedAddresses>",
    f"{GLOBAL}/<verifyIdentity>",
    f"{TLS}/<auth>/<announce>",
    f"{TLS}/<authorizedAddresses>",
    f"{TLS}/<verifyIdentity>",
    f"{SUBMISSION}/<auth>/<announce>",
    f"{SUBMISSION}/<authorizedAddresses>",
    f"{SUBMISSION}/<verifyIdentity>",
]


def refusals(app: str, host: HostLookup) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(SAMPLES / app, host=host)
    return info.value


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
def test_three_listener_samples_stop(app: str, host: HostLookup) -> None:
    error = refusals(app, host)
    assert [p.element for p in error.problems] == THREE_LISTENER_REFUSALS
    assert {p.file for p in error.problems} == {"smtpserver.xml"}
    first = str(error).splitlines()[0]
    assert first == (
        f"smtpserver.xml: {GLOBAL}/<authorizedAddresses>: relaying for trusted networks is "
        "not implemented yet (kittiwake relays for no one); remove the element"
    )
    assert error.problems[2].reason == (
        "AUTH is not implemented yet (forUnauthorizedAddresses); set it to never"
    )


@pytest.mark.parametrize("app", ["distributed-app", "jpa-smtp-app"])
def test_three_listener_samples_tls(app: str, tmp_path: Path, host: HostLookup) -> None:
    """Without what kittiwake lacks (trusted networks, identity checks, AUTH announced),
    James's 25/465/587 layout loads with its TLS read as James reads it."""
    directory = edited(
        app,
        tmp_path,
        ("<authorizedAddresses>127.0.0.0/8</authorizedAddresses>", ""),
        ("<verifyIdentity>true</verifyIdentity>", "<verifyIdentity>false</verifyIdentity>"),
        ("<announce>forUnauthorizedAddresses</announce>", "<announce>never</announce>"),
    )
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


def test_spring_app_sample_stops(host: HostLookup) -> None:
    error = refusals("spring-app", host)
    name = '<smtpserver name="smtpserver">'
    assert [p.element for p in error.problems] == [
        f"{name}/<authorizedAddresses>",
        f"{name}/<verifyIdentity>",
    ]


def test_spring_app_sample_loads_without_relaying_and_identity_check(
    tmp_path: Path, host: HostLookup
) -> None:
    directory = edited(
        "spring-app",
        tmp_path,
        ("<authorizedAddresses>127.0.0.0/8</authorizedAddresses>", ""),
        ("<verifyIdentity>true</verifyIdentity>", "<verifyIdentity>false</verifyIdentity>"),
    )
    config = load_config(directory, host=host)
    (listener,) = config.listeners
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
        f"smtpserver.xml: {name}/<auth> (AUTH is never announced nor required)",
        f"smtpserver.xml: {name}/<verifyIdentity> (false: no sender identity check)",
    )
    assert [h.class_name.rpartition(".")[2] for h in listener.handlers] == [
        "ValidRcptHandler",
        "CoreCmdHandlerLoader",
    ]


def test_jpa_smtp_app_port_25_listener_alone(tmp_path: Path, host: HostLookup) -> None:
    """Disable the TLS and submission listeners and stop relaying on port 25: it loads."""
    directory = edited(
        "jpa-smtp-app",
        tmp_path,
        ("<authorizedAddresses>127.0.0.0/8</authorizedAddresses>", ""),
        ("<verifyIdentity>true</verifyIdentity>", "<verifyIdentity>false</verifyIdentity>"),
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
    disabled = [line for line in config.unimplemented if "the listener is disabled" in line]
    # (the edits above apply to every listener) tls and announce per disabled one:
    assert len(disabled) == 4
    assert config.unimplemented[:3] == (
        f"smtpserver.xml: {GLOBAL}/<tls> (TLS is off: socketTLS and startTLS are false)",
        f"smtpserver.xml: {GLOBAL}/<auth> (AUTH is never announced nor required)",
        f"smtpserver.xml: {GLOBAL}/<verifyIdentity> (false: no sender identity check)",
    )
    assert listener.core_handlers == "NoAuthCmdHandlerLoader"
    assert config.unimplemented[-3:] == (
        "mailetcontainer.xml: <mailetcontainer>/@enableJmx",
        "mailetcontainer.xml: <spooler>",
        "mailetcontainer.xml: processors (the mailet container is not implemented yet; "
        "the built-in spool-to-Maildir flow is used)",
    )
