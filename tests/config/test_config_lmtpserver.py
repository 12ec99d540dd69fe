"""lmtpserver.xml: read as James reads it, plus Unix-domain sockets in <bind>."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kw_config_helpers import FQDN, wrap

from kittiwake.config import Bind, Config, ConfigError, Protocol, format_report
from kittiwake.config.model import DEFAULT_MAX_MESSAGE_SIZE

LoadFiles = Callable[[dict[str, str]], Config]
HERE = Path(__file__).parent

JAMES_SAMPLE = """<?xml version="1.0"?>
<lmtpservers>
    <lmtpserver enabled="false">
        <jmxName>lmtpserver</jmxName>
        <bind>127.0.0.1:24</bind>
        <connectionBacklog>200</connectionBacklog>
        <connectiontimeout>1200</connectiontimeout>
        <connectionLimit>0</connectionLimit>
        <connectionLimitPerIP>0</connectionLimitPerIP>
        <maxmessagesize>0</maxmessagesize>
        <handlerchain>
            <handler class="org.apache.james.lmtpserver.CoreCmdHandlerLoader"/>
        </handlerchain>
    </lmtpserver>
</lmtpservers>
"""


def lmtp(body: str, attributes: str = "") -> str:
    return f"<lmtpservers><lmtpserver{attributes}>{body}</lmtpserver></lmtpservers>"


def lmtp_listeners(config: Config) -> list[object]:
    return [x for x in config.listeners if x.protocol is Protocol.LMTP]


def load_error(load_files: LoadFiles, files: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_files(files)
    return info.value


def test_no_file_no_lmtp(load_files: LoadFiles) -> None:
    config = load_files({"smtpserver.xml": wrap("")})
    assert [x.protocol for x in config.listeners] == [Protocol.SMTP]


def test_james_sample_is_off_as_shipped(load_files: LoadFiles) -> None:
    config = load_files({"lmtpserver.xml": JAMES_SAMPLE})
    assert lmtp_listeners(config) == []
    assert any('enabled="false": not started' in item for item in config.unimplemented)


def test_james_sample_enabled(load_files: LoadFiles) -> None:
    text = JAMES_SAMPLE.replace('enabled="false"', 'enabled="true"')
    config = load_files({"lmtpserver.xml": text})
    (listener,) = [x for x in config.listeners if x.protocol is Protocol.LMTP]
    assert listener.name == "lmtpserver"
    assert listener.binds == (Bind("127.0.0.1", 24),)
    assert listener.unix_sockets == ()
    assert listener.connection_timeout == 1200.0
    assert listener.connection_backlog == 200
    assert listener.connection_limit == 0 and listener.connection_limit_per_ip == 0
    assert listener.max_message_size == 0  # 0 = no limit, as in James
    assert listener.hello_name == FQDN
    # the core loader is exactly what kittiwake does: no handler, nothing refused
    assert listener.handlers == ()
    # the SMTP listeners (embedded default) are still there
    assert [x.protocol for x in config.listeners] == [Protocol.SMTP] * 3 + [Protocol.LMTP]


def test_defaults_without_elements(load_files: LoadFiles) -> None:
    config = load_files({"lmtpserver.xml": "<lmtpserver/>"})
    (listener,) = lmtp_listeners(config)
    assert listener.binds == (Bind("127.0.0.1", 24),)  # loopback, not James's 0.0.0.0
    assert listener.max_message_size == DEFAULT_MAX_MESSAGE_SIZE
    assert listener.connection_timeout == 300.0
    assert listener.greeting is None


def test_all_values(load_files: LoadFiles) -> None:
    config = load_files(
        {
            "lmtpserver.xml": lmtp(
                "<jmxName>lmtp-in</jmxName>"
                "<bind>127.0.0.1:2424, unix:/run/kittiwake/lmtp ,[::1]:2424</bind>"
                "<connectionBacklog>50</connectionBacklog>"
                "<connectiontimeout>60</connectiontimeout>"
                "<connectionLimit>10</connectionLimit>"
                "<connectionLimitPerIP>3</connectionLimitPerIP>"
                '<helloName autodetect="false">mailbox.example.test</helloName>'
                "<lmtpGreeting>mailbox store ready</lmtpGreeting>"
                "<maxmessagesize>2048</maxmessagesize>",
                ' enabled="true"',
            )
        }
    )
    (listener,) = lmtp_listeners(config)
    assert listener.name == "lmtp-in"
    assert listener.binds == (Bind("127.0.0.1", 2424), Bind("::1", 2424))
    assert listener.unix_sockets == ("/run/kittiwake/lmtp",)
    assert listener.connection_backlog == 50
    assert listener.connection_timeout == 60.0
    assert listener.connection_limit == 10 and listener.connection_limit_per_ip == 3
    assert listener.hello_name == "mailbox.example.test"
    assert listener.greeting == "mailbox store ready"
    assert listener.max_message_size == 2048 * 1024  # a plain number is KiB, as in James
    report = format_report(config)
    assert "  lmtp-in (LMTP): 127.0.0.1:2424, [::1]:2424, unix:/run/kittiwake/lmtp" in report
    assert "lmtpGreeting: mailbox store ready" in report


def test_unix_socket_only(load_files: LoadFiles) -> None:
    config = load_files({"lmtpserver.xml": lmtp("<bind>unix:/tmp/kw.sock</bind>")})
    (listener,) = lmtp_listeners(config)
    assert listener.binds == ()
    assert listener.unix_sockets == ("/tmp/kw.sock",)


@pytest.mark.parametrize(
    "bind, reason",
    [
        ("unix:relative/path", "must be absolute"),
        ("unix:/" + "x" * 200, "at most 107 bytes"),
        ("127.0.0.1", "is not host:port"),
        ("127.0.0.1:99999", "bad port"),
        ("127.0.0.1:24,", "empty entry"),
    ],
)
def test_bad_binds(load_files: LoadFiles, bind: str, reason: str) -> None:
    error = load_error(load_files, {"lmtpserver.xml": lmtp(f"<bind>{bind}</bind>")})
    assert error.file == "lmtpserver.xml"
    assert error.element == '<lmtpserver name="lmtpserver">/<bind>'
    assert reason in error.reason


@pytest.mark.parametrize(
    "body, element, reason",
    [
        ("<connectiontimeout>0</connectiontimeout>", "connectiontimeout", "less than 1"),
        ("<connectionLimit>-1</connectionLimit>", "connectionLimit", "less than 0"),
        ("<maxmessagesize>lots</maxmessagesize>", "maxmessagesize", "is not a size"),
        ('<helloName autodetect="false"></helloName>', "helloName", "empty"),
        ("<lmtpGreeting>a\tb</lmtpGreeting>", "lmtpGreeting", "one line"),
        ("<bind>127.0.0.1:24</bind><bind>127.0.0.1:25</bind>", "bind", "more than once"),
        ("<MaxMessageSize>1</MaxMessageSize>", "MaxMessageSize", "did you mean"),
    ],
)
def test_bad_values(load_files: LoadFiles, body: str, element: str, reason: str) -> None:
    error = load_error(load_files, {"lmtpserver.xml": lmtp(body)})
    assert error.element == f'<lmtpserver name="lmtpserver">/<{element}>'
    assert reason in error.reason


def test_security_options_fail_closed(load_files: LoadFiles) -> None:
    error = load_error(
        load_files,
        {
            "lmtpserver.xml": lmtp(
                '<tls startTLS="true"/><proxyRequired>true</proxyRequired>'
                "<handlerchain><handler "
                'class="org.apache.james.lmtpserver.MailetContainerCmdHandlerLoader"/>'
                "</handlerchain>"
            )
        },
    )
    reasons = [p.reason for p in error.problems]
    assert any("keystore or (privateKey and certificates) needs" in r for r in reasons)
    assert any("PROXY protocol" in r for r in reasons)
    assert any("mailet container is not implemented yet" in r for r in reasons)


def test_harmless_security_values_and_smtp_only_options(load_files: LoadFiles) -> None:
    config = load_files(
        {
            "lmtpserver.xml": lmtp(
                '<tls socketTLS="false" startTLS="false"/><proxyRequired>false</proxyRequired>'
                "<authRequired>true</authRequired><smtpGreeting>x</smtpGreeting>"
                "<ioWorkerCount>2</ioWorkerCount>"
            )
        }
    )
    assert len(lmtp_listeners(config)) == 1
    notes = "\n".join(config.unimplemented)
    assert "TLS is off" in notes
    assert "<authRequired> (an SMTP option; James's LMTP server does not read it)" in notes
    assert "<smtpGreeting> (an SMTP option" in notes
    assert 'lmtpserver.xml: <lmtpserver name="lmtpserver">/<ioWorkerCount>' in notes


def test_tls_as_for_smtp(load_files: LoadFiles, tmp_path: Path) -> None:
    """Every listener takes James's <tls>, LMTP's too (issue 4)."""
    config = load_files(
        {
            "lmtpserver.xml": lmtp(
                '<tls startTLS="true"><privateKey>file://conf/k.pem</privateKey>'
                "<certificates>c.pem</certificates></tls>"
            )
        }
    )
    (listener,) = lmtp_listeners(config)
    assert listener.tls is not None and listener.tls.starttls
    assert listener.tls.private_key == str(tmp_path / "conf" / "k.pem")


def test_disabled_listener_refusals_are_only_named(load_files: LoadFiles) -> None:
    config = load_files({"lmtpserver.xml": lmtp('<tls startTLS="true"/>', ' enabled="false"')})
    assert lmtp_listeners(config) == []


def test_clashes_with_smtp_listeners(load_files: LoadFiles) -> None:
    error = load_error(
        load_files,
        {
            "smtpserver.xml": wrap(""),  # named t, on 127.0.0.1:2525
            "lmtpserver.xml": "<lmtpservers>"
            "<lmtpserver><jmxName>t</jmxName><bind>127.0.0.1:2525</bind></lmtpserver>"
            "<lmtpserver><jmxName>b</jmxName><bind>unix:/tmp/s</bind></lmtpserver>"
            "<lmtpserver><jmxName>c</jmxName><bind>unix:/tmp/s</bind></lmtpserver>"
            "</lmtpservers>",
        },
    )
    assert [str(p) for p in error.problems] == [
        'lmtpserver.xml: <lmtpserver name="t">/<jmxName>: another listener uses it',
        "lmtpserver.xml: <lmtpserver name=\"t\">/<bind>: 127.0.0.1:2525 is also bound by 't'",
        "lmtpserver.xml: <lmtpserver name=\"c\">/<bind>: unix:/tmp/s is also bound by 'b'",
    ]


def test_second_listener_gets_its_own_default_name(load_files: LoadFiles) -> None:
    config = load_files(
        {
            "lmtpserver.xml": "<lmtpservers><lmtpserver/>"
            "<lmtpserver><bind>127.0.0.1:2424</bind></lmtpserver></lmtpservers>"
        }
    )
    assert [x.name for x in lmtp_listeners(config)] == ["lmtpserver", "lmtpserver-2"]


def test_bad_root(load_files: LoadFiles) -> None:
    error = load_error(load_files, {"lmtpserver.xml": "<smtpservers/>"})
    assert error.reason == "the root must be <lmtpservers> or <lmtpserver>"


def test_handlers_in_the_lmtp_chain(load_files: LoadFiles) -> None:
    """Handlers beside James's LMTP core are read as for SMTP (hooks; issue 6)."""
    config = load_files(
        {
            "lmtpserver.xml": lmtp(
                "<handlerchain>"
                '<handler class="org.apache.james.lmtpserver.CoreCmdHandlerLoader"/>'
                '<handler class="myhooks.Reject"><reason>spam</reason></handler>'
                '<handler class="org.apache.james.smtpserver.fastfail.MaxRcptHandler">'
                "<maxRcpt>2</maxRcpt></handler>"
                "</handlerchain>"
            )
        }
    )
    (listener,) = lmtp_listeners(config)
    assert [h.class_name for h in listener.handlers] == [
        "myhooks.Reject",
        "org.apache.james.smtpserver.fastfail.MaxRcptHandler",
    ]
    assert listener.handlers[0].path.endswith('<handler class="myhooks.Reject">')
