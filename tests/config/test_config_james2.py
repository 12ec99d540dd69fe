"""The James 2.x layout: ``<port>``, an address-only ``<bind>``, options in ``<handler>``."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from kw_config_helpers import FQDN

from kittiwake.config import Bind, Config, ConfigError

Load = Callable[..., Config]
LoadError = Callable[..., ConfigError]
NAME = '<smtpserver name="smtpserver-1">'

# The smtpserver block of James 2.3's config.xml (comments dropped), as one file.
JAMES_23_BLOCK = """<?xml version="1.0"?>
<smtpserver enabled="true">
   <port>25</port>
   <handler>
      <helloName autodetect="true">myMailServer</helloName>
      <connectiontimeout>360000</connectiontimeout>
      <authorizedAddresses>127.0.0.0/8</authorizedAddresses>
      <maxmessagesize>0</maxmessagesize>
      <handlerchain>
         <handler class="org.apache.james.smtpserver.core.filter.CoreFilterCmdHandlerLoader">
         </handler>
         <handler class="org.apache.james.smtpserver.core.CoreCmdHandlerLoader"></handler>
         <handler class="org.apache.james.smtpserver.core.SendMailHandler"></handler>
      </handlerchain>
   </handler>
</smtpserver>
"""


def block(handler: str, outer: str = "<port>2525</port>") -> str:
    return f'<smtpserver enabled="true">{outer}<handler>{handler}</handler></smtpserver>'


def test_james_23_block_loads(load_smtp: Load) -> None:
    config = load_smtp(JAMES_23_BLOCK, raw=True)
    (listener,) = config.listeners
    assert listener.binds == (Bind("0.0.0.0", 25),)  # no <bind>: every interface
    assert listener.connection_timeout == 360.0  # 360000 milliseconds
    assert listener.max_message_size == 0
    assert listener.hello_name == FQDN  # autodetect="true" ignores the body
    assert config.unimplemented == ()
    assert listener.auth.trusted_networks == (ipaddress.ip_network("127.0.0.0/8"),)
    # the James 2.3 core loaders: kept for the hook loader, which maps them to the core
    assert [h.class_name.rpartition(".")[2] for h in listener.handlers] == [
        "CoreFilterCmdHandlerLoader",
        "CoreCmdHandlerLoader",
        "SendMailHandler",
    ]


def test_handler_options(load_smtp: Load) -> None:
    (listener,) = load_smtp(
        block(
            '<helloName autodetect="false">mx.old.test</helloName>'
            "<connectiontimeout>120000</connectiontimeout>"
            "<maxmessagesize>10240</maxmessagesize>"
            "<heloEhloEnforcement>false</heloEhloEnforcement>"
            "<smtpGreeting>JAMES SMTP Server</smtpGreeting>",
            outer="<port>2525</port><bind>127.0.0.1</bind><connectionLimit>30</connectionLimit>",
        ),
        raw=True,
    ).listeners
    assert listener.binds == (Bind("127.0.0.1", 2525),)
    assert listener.hello_name == "mx.old.test"
    assert listener.connection_timeout == 120.0
    assert listener.max_message_size == 10 * 1024 * 1024  # KiB
    assert not listener.helo_ehlo_enforcement
    assert listener.greeting == "JAMES SMTP Server"
    assert listener.connection_limit == 30


@pytest.mark.parametrize(
    ("bind", "binds"),
    [
        ("<bind>::1</bind>", (Bind("::1", 2525),)),
        ("<bind>[::1]</bind>", (Bind("::1", 2525),)),
        ("<bind>localhost</bind>", (Bind("127.0.0.1", 2525), Bind("::1", 2525))),
        ("<bind> </bind>", (Bind("0.0.0.0", 2525),)),
        ("", (Bind("0.0.0.0", 2525),)),
    ],
)
def test_address_only_bind(load_smtp: Load, bind: str, binds: tuple[Bind, ...]) -> None:
    config = load_smtp(block("", outer=f"<port>2525</port>{bind}"), raw=True)
    assert config.listeners[0].binds == binds


@pytest.mark.parametrize(
    ("handler", "outer", "element", "reason"),
    [
        ("", "<port>2525</port><bind>0.0.0.0:25</bind>", "<bind>", "holds only an address"),
        ("", "<port>2525</port><bind>nowhere.test</bind>", "<bind>", "does not resolve"),
        ("", "<port>http</port>", "<port>", "not an integer"),
        ("", "<port>70000</port>", "<port>", "out of range 0..65535"),
        (
            "<connectiontimeout>360</connectiontimeout>",
            "<port>25</port>",
            "<handler>/<connectiontimeout>",
            "360 is less than 1000 (milliseconds: <port> marks the James 2.x layout)",
        ),
        (
            "<authRequired>maybe</authRequired>",
            "<port>25</port>",
            "<handler>/<authRequired>",
            "not true, false or announce",
        ),
        (
            "<verifyIdentity>maybe</verifyIdentity>",
            "<port>25</port>",
            "<handler>/<verifyIdentity>",
            "not strict",
        ),
        ("", "<port>25</port><useTLS>true</useTLS>", "<useTLS>", "James 2.x TLS settings are"),
        (
            "<maxmessagesize>0</maxmessagesize>",
            "<port>25</port><maxmessagesize>0</maxmessagesize>",
            "<handler>/<maxmessagesize>",
            "given more than once",
        ),
        (
            '<handlerchain><handler command="RCPT"/></handlerchain>',
            "<port>25</port>",
            "<handler>/<handlerchain>/<handler class=",
            "the class attribute is missing",
        ),
    ],
)
def test_james2_errors(
    smtp_error: LoadError, handler: str, outer: str, element: str, reason: str
) -> None:
    error = smtp_error(block(handler, outer), raw=True)
    assert len(error.problems) == 1
    assert error.element.startswith(f"{NAME}/{element}")
    assert reason in error.reason


def test_james_23_per_command_handlers_are_core(load_smtp: Load) -> None:
    verbs = ("Helo", "Ehlo", "Auth", "Mail", "Rcpt", "Data", "Rset", "Noop", "Quit", "Vrfy")
    chain = "".join(
        f'<handler command="{v.upper()}" class="org.apache.james.smtpserver.{v}CmdHandler"/>'
        for v in verbs
    )
    chain += '<handler class="org.apache.james.smtpserver.SendMailHandler"/>'
    config = load_smtp(block(f"<handlerchain>{chain}</handlerchain>"), raw=True)
    assert config.unimplemented == ()
    (listener,) = config.listeners
    assert len(listener.handlers) == len(verbs) + 1  # the hook loader maps them to the core


def test_handler_nesting_in_a_james3_file_keeps_seconds(load_smtp: Load) -> None:
    xml = (
        "<smtpservers><smtpserver><bind>127.0.0.1:2525</bind><handler>"
        "<connectiontimeout>360</connectiontimeout></handler></smtpserver></smtpservers>"
    )
    assert load_smtp(xml, raw=True).listeners[0].connection_timeout == 360.0


def test_unknown_handler_options_and_attributes_are_named(load_smtp: Load) -> None:
    config = load_smtp(
        '<smtpserver><port>2525</port><threadGroup>x</threadGroup><handler id="h">'
        "<maxRcpt>5</maxRcpt></handler></smtpserver>",
        raw=True,
    )
    assert config.unimplemented == (
        f"smtpserver.xml: {NAME}/<handler>/@id",
        f"smtpserver.xml: {NAME}/<threadGroup>",
        f"smtpserver.xml: {NAME}/<handler>/<maxRcpt>",
    )
