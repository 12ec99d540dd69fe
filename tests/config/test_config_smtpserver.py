"""smtpserver.xml, James 3 layout: every option, its default and its error paths."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kw_config_helpers import FQDN, LISTENER

from kittiwake.config import Bind, Config, ConfigError, HostLookup, Protocol, load_config
from kittiwake.config.model import (
    DEFAULT_BACKLOG,
    DEFAULT_CONNECTION_TIMEOUT,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_MESSAGE_SIZE,
)

Load = Callable[..., Config]
LoadError = Callable[..., ConfigError]


def test_defaults_for_a_listener_with_only_name_and_bind(load_smtp: Load) -> None:
    config = load_smtp("")
    (listener,) = config.listeners
    assert listener.name == "t"
    assert listener.protocol is Protocol.SMTP
    assert listener.enabled
    assert listener.binds == (Bind("127.0.0.1", 2525),)
    assert listener.connection_backlog == DEFAULT_BACKLOG == 200
    assert listener.connection_timeout == DEFAULT_CONNECTION_TIMEOUT == 300.0
    assert listener.connection_limit == 0
    assert listener.connection_limit_per_ip == 0
    assert listener.hello_name == FQDN  # helloName autodetect defaults to true
    assert listener.greeting is None
    # James's default is no limit; kittiwake's safe default is 25 MiB.
    assert listener.max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 25 * 1024 * 1024
    assert listener.max_line_length == DEFAULT_MAX_LINE_LENGTH == 8192
    assert listener.helo_ehlo_enforcement
    assert listener.address_brackets_enforcement
    assert listener.disabled_features == frozenset()
    assert config.unimplemented == ()


def test_every_value_option(load_smtp: Load) -> None:
    (listener,) = load_smtp(
        "<connectionBacklog>50</connectionBacklog>"
        "<connectiontimeout>360</connectiontimeout>"
        "<connectionLimit>100</connectionLimit>"
        "<connectionLimitPerIP>5</connectionLimitPerIP>"
        '<helloName autodetect="false">mx.local.test</helloName>'
        "<smtpGreeting>Kittiwake at your service</smtpGreeting>"
        "<maxmessagesize>10M</maxmessagesize>"
        "<maxLineLength>1000</maxLineLength>"
        "<heloEhloEnforcement>false</heloEhloEnforcement>"
        "<addressBracketsEnforcement>FALSE</addressBracketsEnforcement>"
        "<disabledFeatures>pipelining</disabledFeatures>"
        "<disabledFeatures>DSN</disabledFeatures>"
        "<disabledFeatures>dsn</disabledFeatures>"
    ).listeners
    assert listener.connection_backlog == 50
    assert listener.connection_timeout == 360.0
    assert listener.connection_limit == 100
    assert listener.connection_limit_per_ip == 5
    assert listener.hello_name == "mx.local.test"
    assert listener.greeting == "Kittiwake at your service"
    assert listener.max_message_size == 10 * 1024 * 1024
    assert listener.max_line_length == 1000
    assert not listener.helo_ehlo_enforcement
    assert not listener.address_brackets_enforcement
    assert listener.disabled_features == frozenset({"PIPELINING", "DSN"})


def test_error_message_names_file_element_and_reason(smtp_error: LoadError) -> None:
    error = smtp_error("<maxLineLength>50</maxLineLength>")
    assert str(error) == (
        f"smtpserver.xml: {LISTENER}/<maxLineLength>: 50 is out of range 1000..1048576"
    )
    assert (error.file, error.element) == ("smtpserver.xml", f"{LISTENER}/<maxLineLength>")
    assert error.reason == "50 is out of range 1000..1048576"


@pytest.mark.parametrize(
    ("body", "element", "reason"),
    [
        ("<maxLineLength>999</maxLineLength>", "maxLineLength", "out of range"),
        ("<maxLineLength>1048577</maxLineLength>", "maxLineLength", "out of range"),
        ("<maxLineLength>big</maxLineLength>", "maxLineLength", "not an integer"),
        ("<connectionBacklog>0</connectionBacklog>", "connectionBacklog", "less than 1"),
        ("<connectionBacklog>x</connectionBacklog>", "connectionBacklog", "not an integer"),
        ("<connectiontimeout>0</connectiontimeout>", "connectiontimeout", "less than 1"),
        ("<connectiontimeout>1.5</connectiontimeout>", "connectiontimeout", "not an integer"),
        ("<connectionLimit>-1</connectionLimit>", "connectionLimit", "less than 0"),
        ("<connectionLimitPerIP>-1</connectionLimitPerIP>", "connectionLimitPerIP", "less than"),
        ("<connectionLimitPerIP>many</connectionLimitPerIP>", "connectionLimitPerIP", "integer"),
        ("<maxmessagesize>lots</maxmessagesize>", "maxmessagesize", "not a size"),
        ("<maxmessagesize>-1</maxmessagesize>", "maxmessagesize", "negative"),
        ("<heloEhloEnforcement>yes</heloEhloEnforcement>", "heloEhloEnforcement", "boolean"),
        ("<addressBracketsEnforcement/>", "addressBracketsEnforcement", "boolean"),
        ("<disabledFeatures>DSN,PIPELINING</disabledFeatures>", "disabledFeatures", "one"),
        ("<disabledFeatures>DSN PIPELINING</disabledFeatures>", "disabledFeatures", "one"),
        ("<disabledFeatures></disabledFeatures>", "disabledFeatures", "one EHLO keyword"),
        ("<smtpGreeting>two&#10;lines</smtpGreeting>", "smtpGreeting", "one line"),
        ("<maxLineLength><value>1000</value></maxLineLength>", "maxLineLength", "plain value"),
        ('<helloName autodetect="false"></helloName>', "helloName", "set a name"),
        ('<helloName autodetect="false">  </helloName>', "helloName", "set a name"),
        ('<helloName autodetect="false">mx example</helloName>', "helloName", "spaces"),
        ('<helloName autodetect="maybe">x</helloName>', "helloName>/@autodetect", "boolean"),
    ],
)
def test_value_errors(smtp_error: LoadError, body: str, element: str, reason: str) -> None:
    error = smtp_error(body)
    assert error.file == "smtpserver.xml"
    assert error.element.startswith("<smtpserver name=")
    assert error.element.endswith(f"<{element}") or error.element.endswith(f"<{element}>")
    assert reason in error.reason


def test_bad_bind_and_empty_name(smtp_error: LoadError) -> None:
    error = smtp_error("<smtpserver><bind>127.0.0.1:99999</bind></smtpserver>", raw=True)
    assert error.element == '<smtpserver name="smtpserver-1">/<bind>'
    assert error.reason == "'127.0.0.1:99999' has a bad port '99999' (expected 0..65535)"
    error = smtp_error("<smtpserver><jmxName> </jmxName></smtpserver>", raw=True)
    assert (error.element, error.reason) == (
        '<smtpserver name="smtpserver-1">/<jmxName>',
        "the name is empty",
    )


def test_second_bind_is_refused(smtp_error: LoadError) -> None:
    # wrap() already gives a <bind>; a second one is a mistake James would hide.
    error = smtp_error("<bind>127.0.0.1:2526</bind>")
    assert error.element == f"{LISTENER}/<bind>"
    assert "more than once" in error.reason


def test_hello_name(load_smtp: Load) -> None:
    def hello(body: str) -> str:
        return load_smtp(body).listeners[0].hello_name

    assert hello("") == FQDN
    assert hello("<helloName>ignored.test</helloName>") == FQDN  # autodetect true by default
    assert hello('<helloName autodetect="TRUE">ignored.test</helloName>') == FQDN
    assert hello('<helloName autodetect="false"> mx.test </helloName>') == "mx.test"


@pytest.mark.parametrize("fqdn", ["", "   ", "bad name", "ünïcode"])
def test_hello_name_falls_back_to_localhost(conf_dir: Callable[..., object], fqdn: str) -> None:
    from kw_config_helpers import fake_resolve, wrap

    directory = conf_dir({"smtpserver.xml": wrap("")})
    host = HostLookup(fqdn=lambda: fqdn, resolve=fake_resolve)
    config = load_config(directory, host=host)  # type: ignore[arg-type]
    assert config.listeners[0].hello_name == "localhost"


def test_empty_greeting_means_generated(load_smtp: Load) -> None:
    assert load_smtp("<smtpGreeting> </smtpGreeting>").listeners[0].greeting is None


def test_max_message_size_zero_is_no_limit(load_smtp: Load) -> None:
    assert load_smtp("<maxmessagesize>0</maxmessagesize>").listeners[0].max_message_size == 0
    plain_kib = load_smtp("<maxmessagesize>2048</maxmessagesize>").listeners[0]
    assert plain_kib.max_message_size == 2 * 1024 * 1024


def test_no_bind_is_james_default(load_smtp: Load) -> None:
    xml = "<smtpservers><smtpserver><jmxName>a</jmxName></smtpserver></smtpservers>"
    assert load_smtp(xml, raw=True).listeners[0].binds == (Bind("0.0.0.0", 25),)


def test_bind_list_and_host_names(load_smtp: Load) -> None:
    xml = "<smtpserver><bind>[::1]:2525, mail.example.test:25</bind></smtpserver>"  # bare root
    (listener,) = load_smtp(xml, raw=True).listeners
    assert listener.binds == (Bind("::1", 2525), Bind("192.0.2.10", 25), Bind("2001:db8::10", 25))
    assert listener.name == "smtpserver-1"


def test_names_default_to_position(load_smtp: Load) -> None:
    xml = (
        "<smtpservers>"
        "<smtpserver><bind>127.0.0.1:25</bind></smtpserver>"
        "<smtpserver><jmxName>sub</jmxName><bind>127.0.0.1:587</bind></smtpserver>"
        "<smtpserver><bind>127.0.0.1:2525</bind></smtpserver>"
        "</smtpservers>"
    )
    assert [lsn.name for lsn in load_smtp(xml, raw=True).listeners] == [
        "smtpserver-1",
        "sub",
        "smtpserver-3",
    ]


def test_disabled_listener_is_dropped_but_validated(load_smtp: Load, smtp_error: LoadError) -> None:
    xml = (
        "<smtpservers>"
        '<smtpserver enabled="false"><jmxName>off</jmxName><bind>127.0.0.1:25</bind>'
        '<tls socketTLS="true"/><authorizedAddresses>127.0.0.0/8</authorizedAddresses>'
        "</smtpserver>"
        '<smtpserver enabled="TRUE"><jmxName>on</jmxName><bind>127.0.0.1:26</bind></smtpserver>'
        "</smtpservers>"
    )
    config = load_smtp(xml, raw=True)
    assert [lsn.name for lsn in config.listeners] == ["on"]
    # Security options of a listener that never runs are named, not fatal.
    assert config.unimplemented == (
        'smtpserver.xml: <smtpserver name="off"> (enabled="false": not started)',
        'smtpserver.xml: <smtpserver name="off">/<tls> (not read: the listener is disabled)',
    )
    bad = xml.replace("<bind>127.0.0.1:25</bind>", "<maxLineLength>5</maxLineLength>")
    error = smtp_error(bad, raw=True)
    assert error.element == '<smtpserver name="off">/<maxLineLength>'


def test_enabled_must_be_boolean(smtp_error: LoadError) -> None:
    error = smtp_error("", attributes=' enabled="yes"')
    assert error.element == f"{LISTENER}/@enabled"


def test_no_enabled_listener_is_an_error(smtp_error: LoadError) -> None:
    error = smtp_error("", attributes=' enabled="false"')
    assert error.element == "<smtpservers>"
    assert "nothing would listen" in error.reason


def test_duplicate_names_and_binds(smtp_error: LoadError, load_smtp: Load) -> None:
    xml = (
        "<smtpservers>"
        "<smtpserver><jmxName>a</jmxName><bind>127.0.0.1:25</bind></smtpserver>"
        "<smtpserver><jmxName>a</jmxName><bind>127.0.0.1:25</bind></smtpserver>"
        "</smtpservers>"
    )
    error = smtp_error(xml, raw=True)
    assert [p.element for p in error.problems] == [
        '<smtpserver name="a">/<jmxName>',
        '<smtpserver name="a">/<bind>',
    ]
    assert "also bound" in error.problems[1].reason
    # Port 0 asks the system for any free port: two of them do not collide.
    ephemeral = xml.replace(":25", ":0").replace(
        "<jmxName>a</jmxName><bind>127.0.0.1:0", "<bind>127.0.0.1:0"
    )
    assert len(load_smtp(ephemeral, raw=True).listeners) == 2


def test_every_problem_is_reported_at_once(smtp_error: LoadError) -> None:
    error = smtp_error(
        "<maxLineLength>5</maxLineLength><connectionLimit>-2</connectionLimit>"
        "<authorizedAddresses>10.0.0.0/33</authorizedAddresses>"
    )
    assert [p.element.rsplit("/", 1)[1] for p in error.problems] == [
        "<maxLineLength>",
        "<connectionLimit>",
        "<authorizedAddresses>",
    ]
    lines = str(error).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"smtpserver.xml: {LISTENER}/<") for line in lines)


def test_unknown_elements_are_named(load_smtp: Load) -> None:
    config = load_smtp(
        "<ioWorkerCount>4</ioWorkerCount><maxExecutorCount>16</maxExecutorCount>"
        "<gracefulShutdown>true</gracefulShutdown><useEpoll>false</useEpoll>",
        attributes=' id="x"',
    )
    assert config.unimplemented == (
        f"smtpserver.xml: {LISTENER}/@id",
        f"smtpserver.xml: {LISTENER}/<ioWorkerCount>",
        f"smtpserver.xml: {LISTENER}/<maxExecutorCount>",
        f"smtpserver.xml: {LISTENER}/<gracefulShutdown>",
        f"smtpserver.xml: {LISTENER}/<useEpoll>",
    )


def test_unknown_attribute_on_a_value_is_named(load_smtp: Load) -> None:
    config = load_smtp('<maxLineLength unit="bytes">2000</maxLineLength>')
    assert config.unimplemented == (f"smtpserver.xml: {LISTENER}/<maxLineLength>/@unit",)


@pytest.mark.parametrize(
    ("tag", "meant"),
    [
        ("connectionTimeout", "connectiontimeout"),  # James 2.3 docs spell it so
        ("maxMessageSize", "maxmessagesize"),
        ("TLS", "tls"),
        ("authorizedaddresses", "authorizedAddresses"),
        ("HandlerChain", "handlerchain"),
    ],
)
def test_miscased_known_element_is_an_error(smtp_error: LoadError, tag: str, meant: str) -> None:
    error = smtp_error(f"<{tag}>1</{tag}>")
    assert error.element == f"{LISTENER}/<{tag}>"
    assert f"did you mean <{meant}>?" in error.reason


def test_root_and_stray_children(load_smtp: Load, smtp_error: LoadError) -> None:
    error = smtp_error("<smtp><bind>127.0.0.1:25</bind></smtp>", raw=True)
    assert (error.element, error.reason) == (
        "<smtp>",
        "the root must be <smtpservers> or <smtpserver>",
    )
    xml = (
        '<smtpservers version="3"><lmtpserver/>'
        "<smtpserver><bind>127.0.0.1:25</bind></smtpserver></smtpservers>"
    )
    assert load_smtp(xml, raw=True).unimplemented == (
        "smtpserver.xml: <smtpservers>/@version",
        "smtpserver.xml: <smtpservers>/<lmtpserver>",
    )


def test_minimal_james3_file_with_harmless_elements(load_smtp: Load) -> None:
    xml = """<?xml version="1.0"?>
<smtpservers>
    <smtpserver enabled="true">
        <jmxName>smtpserver-global</jmxName>
        <bind>0.0.0.0:25</bind>
        <connectionBacklog>200</connectionBacklog>
        <tls socketTLS="false" startTLS="false">
            <keystore>file://conf/keystore</keystore>
            <secret>changeit</secret>
        </tls>
        <connectiontimeout>360</connectiontimeout>
        <auth>
            <announce>never</announce>
            <required>false</required>
            <requireSSL>false</requireSSL>
            <plainAuthEnabled>true</plainAuthEnabled>
        </auth>
        <verifyIdentity>false</verifyIdentity>
        <maxmessagesize>0</maxmessagesize>
        <ioWorkerCount>4</ioWorkerCount>
        <handlerchain coreHandlersPackage="org.apache.james.smtpserver.NoAuthCmdHandlerLoader">
            <handler class="org.apache.james.smtpserver.fastfail.ValidRcptHandler"/>
        </handlerchain>
    </smtpserver>
</smtpservers>
"""
    config = load_smtp(xml, raw=True)
    (listener,) = config.listeners
    assert listener.binds == (Bind("0.0.0.0", 25),)
    assert listener.connection_timeout == 360.0
    assert listener.max_message_size == 0
    name = '<smtpserver name="smtpserver-global">'
    assert config.unimplemented == (
        f"smtpserver.xml: {name}/<tls> (TLS is off: socketTLS and startTLS are false)",
        f"smtpserver.xml: {name}/<ioWorkerCount>",
    )
    assert listener.auth.verify_identity == "disabled" and not listener.auth.command
    assert listener.core_handlers == "NoAuthCmdHandlerLoader"
    assert [h.class_name for h in listener.handlers] == [
        "org.apache.james.smtpserver.fastfail.ValidRcptHandler"
    ]


def test_jmxname_with_children_is_reported_once(smtp_error: LoadError) -> None:
    error = smtp_error("<smtpserver><jmxName><a/></jmxName></smtpserver>", raw=True)
    assert [p.element for p in error.problems] == ['<smtpserver name="smtpserver-1">/<jmxName>']


def test_conf_dir_may_be_a_string(conf_dir: Callable[..., object], host: HostLookup) -> None:
    from kw_config_helpers import wrap

    directory = conf_dir({"smtpserver.xml": wrap("")})
    assert load_config(str(directory), host=host).listeners[0].name == "t"  # type: ignore[arg-type]


def test_repeated_unknown_elements_are_named_each_time(load_smtp: Load) -> None:
    config = load_smtp("<plugin>a</plugin><plugin>b</plugin>")
    assert config.unimplemented == (f"smtpserver.xml: {LISTENER}/<plugin>",) * 2
