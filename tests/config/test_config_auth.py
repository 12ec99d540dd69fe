"""AUTH, authorizedAddresses, verifyIdentity (per listener) and usersrepository.xml."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from kw_config_helpers import LISTENER

from kittiwake.config import Config, ConfigError
from kittiwake.config.model import AuthAnnounce, AuthConfig

Load = Callable[..., Config]
LoadError = Callable[..., ConfigError]
NOAUTH = "org.apache.james.smtpserver.NoAuthCmdHandlerLoader"


def auth(load_smtp: Load, body: str) -> AuthConfig:
    (listener,) = load_smtp(body).listeners
    return listener.auth


def test_defaults_safer_than_james(load_smtp: Load) -> None:
    cfg = auth(load_smtp, "")
    assert cfg == AuthConfig()
    assert cfg.announce is AuthAnnounce.NEVER
    assert cfg.require_ssl is True  # James's code: false
    assert cfg.verify_identity == "strict"  # James's default
    assert cfg.trusted_networks == ()  # nobody relays without AUTH
    assert cfg.command is True
    assert (cfg.ip_failure_limit, cfg.ip_failure_window) == (10, 600.0)


@pytest.mark.parametrize(
    "body, announce",
    [
        ("<auth><announce>always</announce></auth>", AuthAnnounce.ALWAYS),
        ("<auth><announce>NEVER</announce></auth>", AuthAnnounce.NEVER),
        (
            "<auth><announce>forunauthorizedaddresses</announce></auth>",
            AuthAnnounce.FOR_UNAUTHORIZED_ADDRESSES,
        ),
        # the deprecated authRequired is the fallback when announce is absent
        ("<authRequired>true</authRequired>", AuthAnnounce.FOR_UNAUTHORIZED_ADDRESSES),
        ("<authRequired>announce</authRequired>", AuthAnnounce.ALWAYS),
        ("<authRequired>FALSE</authRequired>", AuthAnnounce.NEVER),
        (
            "<authRequired>true</authRequired><auth><announce>never</announce></auth>",
            AuthAnnounce.NEVER,
        ),
        (
            "<auth><announce>always</announce></auth><authRequired>false</authRequired>",
            AuthAnnounce.ALWAYS,
        ),
    ],
)
def test_announce_and_its_fallback(load_smtp: Load, body: str, announce: AuthAnnounce) -> None:
    assert auth(load_smtp, body).announce is announce


def test_every_auth_option(load_smtp: Load) -> None:
    (listener,) = load_smtp(
        "<auth><announce>always</announce><required>true</required>"
        "<requireSSL>false</requireSSL><plainAuthEnabled>false</plainAuthEnabled>"
        "<ipFailureLimit>5</ipFailureLimit><ipFailureWindow>60</ipFailureWindow>"
        "<saslMechanisms>PlainSaslMechanismFactory, LoginSaslMechanismFactory"
        "</saslMechanisms></auth>"
        "<authorizedAddresses>127.0.0.0/8, 10.*, localhost</authorizedAddresses>"
        "<verifyIdentity>Relaxed</verifyIdentity>"
    ).listeners
    assert listener.auth_required is True
    cfg = listener.auth
    assert (cfg.require_ssl, cfg.plain_enabled, cfg.verify_identity) == (False, False, "relaxed")
    assert (cfg.ip_failure_limit, cfg.ip_failure_window) == (5, 60.0)
    assert cfg.trusted_networks == tuple(
        ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.0.0.0/8", "127.0.0.1/32", "::1/128")
    )


@pytest.mark.parametrize(
    "text, mode",
    [("true", "strict"), ("STRICT", "strict"), ("false", "disabled"), ("disabled", "disabled")],
)
def test_verify_identity_spellings(load_smtp: Load, text: str, mode: str) -> None:
    body = f"<verifyIdentity>{text}</verifyIdentity>"
    assert auth(load_smtp, body).verify_identity == mode


def test_no_auth_core_has_no_auth_command(load_smtp: Load) -> None:
    body = f'<handlerchain coreHandlersPackage="{NOAUTH}"/>'
    assert auth(load_smtp, body).command is False


def test_james_2_handler_layout(load_smtp: Load) -> None:
    body = (
        "<handler><authRequired>true</authRequired>"
        "<authorizedAddresses>192.168.0.0/16</authorizedAddresses>"
        "<verifyIdentity>false</verifyIdentity></handler>"
    )
    cfg = auth(load_smtp, body)
    assert cfg.announce is AuthAnnounce.FOR_UNAUTHORIZED_ADDRESSES
    assert cfg.trusted_networks == (ipaddress.ip_network("192.168.0.0/16"),)
    assert cfg.verify_identity == "disabled"


@pytest.mark.parametrize(
    ("body", "element", "reason"),
    [
        ("<auth><announce>sometimes</announce></auth>", "<auth>/<announce>", "not never"),
        ("<auth><required>maybe</required></auth>", "<auth>/<required>", "not a boolean"),
        ("<auth><requireSSL>1</requireSSL></auth>", "<auth>/<requireSSL>", "not a boolean"),
        ("<auth><ipFailureLimit>-1</ipFailureLimit></auth>", "<auth>/<ipFailureLimit>", "-1"),
        ("<auth><ipFailureWindow>0</ipFailureWindow></auth>", "<auth>/<ipFailureWindow>", "0"),
        (
            "<auth><saslMechanisms>OauthBearerSaslMechanismFactory</saslMechanisms></auth>",
            "<auth>/<saslMechanisms>",
            "only PLAIN and LOGIN",
        ),
        ("<auth><gssapi/></auth>", "<auth>/<gssapi>", "not implemented"),
        ("<authRequired>sometimes</authRequired>", "<authRequired>", "not true, false or"),
        ("<verifyIdentity>perhaps</verifyIdentity>", "<verifyIdentity>", "not strict"),
        ("<authorizedAddresses>*</authorizedAddresses>", "<authorizedAddresses>", "open relay"),
        (
            "<authorizedAddresses>127.0.0.1 0.0.0.0/0</authorizedAddresses>",
            "<authorizedAddresses>",
            "open relay",
        ),
        (
            "<authorizedAddresses>nowhere.test</authorizedAddresses>",
            "<authorizedAddresses>",
            "does not resolve",
        ),
        (
            "<authorizedAddresses>10.0.0.0/255.0.255.0</authorizedAddresses>",
            "<authorizedAddresses>",
            "contiguous",
        ),
        ("<auth.announce>always</auth.announce>", "<auth.announce>", "nested"),
    ],
)
def test_bad_values(smtp_error: LoadError, body: str, element: str, reason: str) -> None:
    error = smtp_error(body)
    assert error.element == f"{LISTENER}/{element}", error
    assert reason in error.reason


def test_unknown_auth_child_is_named(load_smtp: Load) -> None:
    config = load_smtp("<auth><colour>red</colour></auth>")
    assert config.unimplemented == (f"smtpserver.xml: {LISTENER}/<auth>/<colour>",)


def test_given_twice_is_an_error(smtp_error: LoadError) -> None:
    error = smtp_error(
        "<verifyIdentity>true</verifyIdentity><verifyIdentity>false</verifyIdentity>"
    )
    assert "more than once" in error.reason


# ---- usersrepository.xml --------------------------------------------------------------

USERS = """<?xml version="1.0"?>
<usersrepository name="LocalUsers" class="org.apache.james.user.jpa.JPAUsersRepository">
  <enableVirtualHosting>{virtual}</enableVirtualHosting>
  <algorithm>{algorithm}</algorithm>
  <hashingMode>{mode}</hashingMode>
  <administratorIds>
    <administratorId>admin@example.test</administratorId>
    <administratorId>{admin2}</administratorId>
  </administratorIds>
  <verifyFailureDelay>1s</verifyFailureDelay>
</usersrepository>
"""


def users_xml(**kw: str) -> str:
    values = {"virtual": "true", "algorithm": "PBKDF2-SHA512", "mode": "plain", "admin2": "Boss"}
    return USERS.format(**{**values, **kw})


def test_usersrepository(load_files: Callable[[dict[str, str]], Config]) -> None:
    config = load_files({"usersrepository.xml": users_xml(virtual="false", mode="legacy")})
    users = config.users
    assert users.virtual_hosting is False
    assert (users.algorithm, users.hashing_mode) == ("PBKDF2-SHA512", "legacy")
    # without virtual hosting an id without "@" is in the default domain (localhost here)
    assert users.administrators == {"admin@example.test", "boss@localhost"}
    assert "usersrepository.xml: <usersrepository>/<verifyFailureDelay>" in config.unimplemented


def test_usersrepository_absent(load_files: Callable[[dict[str, str]], Config]) -> None:
    users = load_files({}).users
    assert users.virtual_hosting is True and users.administrators == frozenset()


@pytest.mark.parametrize(
    "kw, element",
    [
        ({"algorithm": "NOPE-9"}, "<usersrepository>/<algorithm>"),
        ({"mode": "weird"}, "<usersrepository>/<hashingMode>"),
        ({"virtual": "yes"}, "<usersrepository>/<enableVirtualHosting>"),
        ({"admin2": "bad@"}, "<usersrepository>/<administratorIds>/<administratorId>"),
    ],
)
def test_usersrepository_errors(
    conf_dir: Callable[[dict[str, str]], object],
    load_files: Callable[[dict[str, str]], Config],
    kw: dict[str, str],
    element: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        load_files({"usersrepository.xml": users_xml(**kw)})
    assert info.value.element == element
    assert info.value.file == "usersrepository.xml"
