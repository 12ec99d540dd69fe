"""Fail closed: security options kittiwake lacks stop the start, harmless values do not.
(AUTH, authorizedAddresses and verifyIdentity are read: test_config_auth.py.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kw_config_helpers import LISTENER

from kittiwake.config import Config, ConfigError

Load = Callable[..., Config]
LoadError = Callable[..., ConfigError]
CORE = "org.apache.james.smtpserver.CoreCmdHandlerLoader"
NOAUTH = "org.apache.james.smtpserver.NoAuthCmdHandlerLoader"
VALIDRCPT = "org.apache.james.smtpserver.fastfail.ValidRcptHandler"


@pytest.mark.parametrize(
    ("body", "element", "reason"),
    [
        (
            "<auth><announce>never</announce><oidc><claim>email</claim></oidc></auth>",
            "<auth>/<oidc>",
            "are not implemented (kittiwake has PLAIN and LOGIN)",
        ),
        ("<auth.announce>never</auth.announce>", "<auth.announce>", "nested"),
        ("<auth.required>false</auth.required>", "<auth.required>", "nested"),
        ("<proxyRequired>true</proxyRequired>", "<proxyRequired>", "PROXY protocol"),
        (
            "<handlerchain><handler/></handlerchain>",
            '<handlerchain>/<handler class="">',
            "the class attribute is missing or empty",
        ),
        (
            '<handlerchain coreHandlersPackage="org.example.MyLoader"/>',
            "<handlerchain>/@coreHandlersPackage",
            "'org.example.MyLoader' is not a core kittiwake has",
        ),
        (
            '<handlerchain jmxHandlersPackage="org.example.Jmx"/>',
            "<handlerchain>/@jmxHandlersPackage",
            "is not a JMX loader kittiwake knows",
        ),
        ("<useTLS>true</useTLS>", "<useTLS>", "James 2.x TLS settings are not read; use"),
        ("<serverSocketType>ssl</serverSocketType>", "<serverSocketType>", "James 2.x TLS"),
    ],
)
def test_refused(smtp_error: LoadError, body: str, element: str, reason: str) -> None:
    error = smtp_error(body)
    assert len(error.problems) == 1
    assert error.element == f"{LISTENER}/{element}"
    assert reason in error.reason


@pytest.mark.parametrize(
    ("body", "element", "reason"),
    [
        ('<tls socketTLS="true" startTLS="true"/>', "<tls>", "cannot both be true"),
        ('<tls socketTLS="yes"/>', "<tls>/@socketTLS", "not a boolean"),
        ("<auth><announce>sometimes</announce></auth>", "<auth>/<announce>", "not never"),
        ("<auth><required>maybe</required></auth>", "<auth>/<required>", "not a boolean"),
        ("<auth><requireSSL>1</requireSSL></auth>", "<auth>/<requireSSL>", "not a boolean"),
        ("<authRequired>sometimes</authRequired>", "<authRequired>", "not true, false or"),
        ("<verifyIdentity>perhaps</verifyIdentity>", "<verifyIdentity>", "not strict"),
        ("<proxyRequired>nope</proxyRequired>", "<proxyRequired>", "not a boolean"),
        ('<handlerchain enableJmx="x"/>', "<handlerchain>/@enableJmx", "not a boolean"),
    ],
)
def test_bad_values(smtp_error: LoadError, body: str, element: str, reason: str) -> None:
    error = smtp_error(body)
    assert error.element == f"{LISTENER}/{element}"
    assert reason in error.reason


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("<tls/>", "<tls> (TLS is off: socketTLS and startTLS are false)"),
        (
            '<tls socketTLS="FALSE" startTLS="false"><keystore>x</keystore></tls>',
            "<tls> (TLS is off: socketTLS and startTLS are false)",
        ),
        ("<proxyRequired>false</proxyRequired>", "<proxyRequired> (false: no PROXY protocol)"),
        ("<useTLS>false</useTLS>", "<useTLS> (false: TLS is off)"),
        ("<serverSocketType>plain</serverSocketType>", "<serverSocketType> (plain sockets)"),
        (
            f'<handlerchain coreHandlersPackage="{NOAUTH}" enableJmx="true" '
            'jmxHandlersPackage="org.apache.james.smtpserver.jmx.JMXHandlersLoader">'
            f'<handler class="{VALIDRCPT}"/></handlerchain>',
            "<handlerchain>/@jmxHandlersPackage (JMX is not implemented)",
        ),
    ],
)
def test_harmless_values_are_named(load_smtp: Load, body: str, named: str) -> None:
    config = load_smtp(body)
    assert len(config.listeners) == 1
    assert config.unimplemented[-1].startswith(f"smtpserver.xml: {LISTENER}/{named}")


@pytest.mark.parametrize(
    ("body", "required"),
    [
        ("<auth><required>true</required></auth>", True),
        ("<auth><announce>never</announce><required>TRUE</required></auth>", True),
        ("<auth><required>false</required></auth>", False),
        ("", False),
    ],
)
def test_auth_required_is_honoured(load_smtp: Load, body: str, required: bool) -> None:
    """James's auth.required: MAIL refused unless authenticated or trusted."""
    (listener,) = load_smtp(body).listeners
    assert listener.auth_required is required


def test_handlerchain_is_read_in_order_with_options(load_smtp: Load) -> None:
    """Which classes exist and what their options mean is the hook loader's business
    (tests/hooks/test_loader.py); the configuration keeps the chain as written."""
    config = load_smtp(
        f'<handlerchain><handler class="{VALIDRCPT}"><vut>true</vut></handler>'
        '<note/><handler class="org.example.Mine"><a x="1">b</a></handler>'
        f'<handler class="{CORE}"/></handlerchain>'
    )
    assert config.unimplemented == (
        f"smtpserver.xml: {LISTENER}/<handlerchain>/<note> (not a <handler>)",
    )
    (listener,) = config.listeners
    assert [h.class_name for h in listener.handlers] == [VALIDRCPT, "org.example.Mine", CORE]
    mine = listener.handlers[1]
    assert mine.path == f'{LISTENER}/<handlerchain>/<handler class="org.example.Mine">'
    (option,) = mine.options.children
    assert (option.tag, option.text, option.attributes) == ("a", "b", (("x", "1"),))
    assert listener.core_handlers == "CoreCmdHandlerLoader"


def test_refusals_come_in_document_order_across_listeners(smtp_error: LoadError) -> None:
    xml = (
        "<smtpservers>"
        "<smtpserver><jmxName>a</jmxName><bind>127.0.0.1:25</bind>"
        "<verifyIdentity>perhaps</verifyIdentity><tls startTLS='true'/></smtpserver>"
        "<smtpserver><jmxName>b</jmxName><bind>127.0.0.1:587</bind>"
        "<authorizedAddresses>*</authorizedAddresses></smtpserver>"
        "</smtpservers>"
    )
    error = smtp_error(xml, raw=True)
    assert [p.element for p in error.problems] == [
        '<smtpserver name="a">/<verifyIdentity>',
        '<smtpserver name="a">/<tls>',
        '<smtpserver name="b">/<authorizedAddresses>',
    ]


def test_tls_attributes_other_than_the_two_modes_are_named(load_smtp: Load) -> None:
    # James reads only @socketTLS and @startTLS; <tls enabled="true"> turns nothing on.
    config = load_smtp('<tls enabled="true"/>')
    assert config.unimplemented == (
        f"smtpserver.xml: {LISTENER}/<tls>/@enabled",
        f"smtpserver.xml: {LISTENER}/<tls> (TLS is off: socketTLS and startTLS are false)",
    )
