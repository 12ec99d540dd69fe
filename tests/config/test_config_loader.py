"""load_config: the embedded default, the directory, other files, XML safety, the report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kw_config_helpers import FQDN, wrap

from kittiwake.config import (
    AuthAnnounce,
    AuthConfig,
    Bind,
    Config,
    ConfigError,
    DomainListConfig,
    HostLookup,
    ListenerConfig,
    ServerOptions,
    TlsConfig,
    format_report,
    load_config,
)
from kittiwake.config._xml import MAX_FILE_SIZE

ConfDir = Callable[[dict[str, str]], Path]
LoadFiles = Callable[[dict[str, str]], Config]


def load_error(load_files: LoadFiles, files: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_files(files)
    return info.value


def test_embedded_default(host: HostLookup) -> None:
    """James's sample deployment (25 / 587 / 465) on loopback and unprivileged ports."""
    config = load_config(None, host=host)
    assert config == Config(
        listeners=(
            ListenerConfig(
                name="smtp",
                binds=(Bind("127.0.0.1", 2525),),
                hello_name=FQDN,
                auth=AuthConfig(command=False),  # MX: no AUTH (NoAuthCmdHandlerLoader)
            ),
            ListenerConfig(
                name="submission",
                binds=(Bind("127.0.0.1", 2587),),
                hello_name=FQDN,
                tls=TlsConfig(starttls=True, self_signed=True),
                auth_required=True,
                auth=AuthConfig(announce=AuthAnnounce.ALWAYS),  # once encrypted
            ),
            ListenerConfig(
                name="submissions",
                binds=(Bind("127.0.0.1", 2465),),
                hello_name=FQDN,
                tls=TlsConfig(starttls=False, self_signed=True),
                auth_required=True,
                auth=AuthConfig(announce=AuthAnnounce.ALWAYS),
            ),
        ),
        domains=DomainListConfig(domain_names=("localhost",), default_domain="localhost"),
        server=ServerOptions(postmaster="postmaster@localhost"),
        source=None,
        unimplemented=(),
    )


def test_embedded_default_with_the_real_host() -> None:
    listener, *_ = load_config(None).listeners
    assert listener.hello_name  # socket.getfqdn(), or "localhost"
    assert " " not in listener.hello_name


def test_empty_directory_is_the_embedded_default(conf_dir: ConfDir, host: HostLookup) -> None:
    directory = conf_dir({})
    config = load_config(directory, host=host)
    assert config.listeners == load_config(None, host=host).listeners
    assert config.domains.domain_names == ("localhost",)
    assert config.server.postmaster == "postmaster@localhost"
    assert config.source == str(directory)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: (directory): does not exist"
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        load_config(tmp_path / "file")


def test_a_known_file_that_is_a_directory(conf_dir: ConfDir, host: HostLookup) -> None:
    directory = conf_dir({})
    (directory / "smtpserver.xml").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(directory, host=host)
    assert str(info.value) == "smtpserver.xml: (file): is not a regular file"


def test_other_files_are_named(conf_dir: ConfDir, host: HostLookup) -> None:
    directory = conf_dir(
        {
            "smtpserver.xml": wrap(""),
            "lmtpserver.xml": "<lmtpservers/>",
            "usersrepository.xml": "<usersrepository/>",
            "jvm.properties": "",
            "config.xml": "<config/>",
            "keystore": "binary",
            ".hidden.xml": "<x/>",
            "notes.txt": "",
        }
    )
    (directory / "extensions.xml.d").mkdir()
    config = load_config(directory, host=host)
    assert config.unimplemented == (
        "config.xml (whole file; James 2.x: move its <smtpserver> block into smtpserver.xml)",
        "jvm.properties (whole file)",
    )


def test_unimplemented_order_follows_the_files(load_files: LoadFiles) -> None:
    config = load_files(
        {
            "smtpserver.xml": wrap("<useEpoll>true</useEpoll>"),
            "domainlist.xml": "<domainlist><autodetect>false</autodetect><x/></domainlist>",
            "mailetcontainer.xml": "<mailetcontainer><spooler/></mailetcontainer>",
            "imapserver.xml": "<imapservers/>",
        }
    )
    assert [line.split(":")[0] for line in config.unimplemented] == [
        "smtpserver.xml",
        "domainlist.xml",
        "domainlist.xml",
        "mailetcontainer.xml",
        "imapserver.xml (whole file)",
    ]


def test_problems_from_every_file_are_pooled(load_files: LoadFiles) -> None:
    error = load_error(
        load_files,
        {
            "smtpserver.xml": "<smtpservers><smtpserver>",
            "domainlist.xml": "<domainlist><defaultDomain>a b</defaultDomain></domainlist>",
            "mailetcontainer.xml": "<mailetcontainer><context><postmaster>@</postmaster>"
            "</context></mailetcontainer>",
        },
    )
    assert [p.file for p in error.problems] == [
        "smtpserver.xml",
        "domainlist.xml",
        "mailetcontainer.xml",
    ]


@pytest.mark.parametrize(
    ("text", "element", "reason"),
    [
        ("<smtpservers><smtpserver>", "line 1, column 26", "malformed XML: no element found"),
        ("<smtpservers>\n  <bind>x</bnd>\n</smtpservers>", "line 2, column 12", "mismatched tag"),
        ("", "line 1, column 1", "no element found"),
        ("<a/><b/>", "line 1, column 5", "junk after document element"),
        ("<a>&nbsp;</a>", "line 1, column 4", "undefined entity"),
        (
            '<?xml version="1.0"?>\n<!DOCTYPE smtpservers>\n<smtpservers/>',
            "line 2",
            "a DOCTYPE is not allowed",
        ),
        (
            '<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY lol "lol">]>\n<x>&lol;</x>',
            "line 2",
            "DOCTYPE",
        ),
        (
            '<!DOCTYPE x SYSTEM "file:///etc/passwd"><x/>',
            "line 1",
            "entities could expand without bound or read other files",
        ),
    ],
)
def test_xml_safety_and_syntax(load_files: LoadFiles, text: str, element: str, reason: str) -> None:
    error = load_error(load_files, {"smtpserver.xml": text})
    assert error.file == "smtpserver.xml"
    assert error.element == element
    assert reason in error.reason


def test_too_large_file(load_files: LoadFiles) -> None:
    error = load_error(load_files, {"domainlist.xml": "<domainlist>" + " " * MAX_FILE_SIZE})
    assert (error.file, error.element) == ("domainlist.xml", "(file)")
    assert "larger than" in error.reason


def test_utf8_and_declared_encoding(conf_dir: ConfDir, host: HostLookup) -> None:
    directory = conf_dir({})
    (directory / "smtpserver.xml").write_bytes(
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        "<smtpserver><bind>127.0.0.1:25</bind><smtpGreeting>Grüße</smtpGreeting></smtpserver>".encode(
            "latin-1"
        )
    )
    assert load_config(directory, host=host).listeners[0].greeting == "Grüße"


def test_report_of_the_embedded_default(host: HostLookup) -> None:
    assert format_report(load_config(None, host=host)) == (
        "configuration: embedded default\n"
        "listeners:\n"
        "  smtp (SMTP): 127.0.0.1:2525\n"
        f"    helloName: {FQDN}; smtpGreeting: (generated)\n"
        "    maxmessagesize: 25 MiB; maxLineLength: 8192 bytes; recipients per message: 100\n"
        "    connectiontimeout: 300 s; data timeout: 600 s; connectionBacklog: 200\n"
        "    connectionLimit: unlimited; connectionLimitPerIP: unlimited\n"
        "    heloEhloEnforcement: true; addressBracketsEnforcement: true; disabledFeatures: none\n"
        "    tls: off; auth.required: false\n"
        "    no AUTH command (NoAuthCmdHandlerLoader)\n"
        "    authorizedAddresses: none; verifyIdentity: strict\n"
        "  submission (SMTP): 127.0.0.1:2587\n"
        f"    helloName: {FQDN}; smtpGreeting: (generated)\n"
        "    maxmessagesize: 25 MiB; maxLineLength: 8192 bytes; recipients per message: 100\n"
        "    connectiontimeout: 300 s; data timeout: 600 s; connectionBacklog: 200\n"
        "    connectionLimit: unlimited; connectionLimitPerIP: unlimited\n"
        "    heloEhloEnforcement: true; addressBracketsEnforcement: true; disabledFeatures: none\n"
        "    tls: STARTTLS (startTLS), self-signed certificate under DATA/tls/; "
        "auth.required: true\n"
        "    auth.announce: always; requireSSL: true; plainAuthEnabled: true\n"
        "    authorizedAddresses: none; verifyIdentity: strict\n"
        "  submissions (SMTP): 127.0.0.1:2465\n"
        f"    helloName: {FQDN}; smtpGreeting: (generated)\n"
        "    maxmessagesize: 25 MiB; maxLineLength: 8192 bytes; recipients per message: 100\n"
        "    connectiontimeout: 300 s; data timeout: 600 s; connectionBacklog: 200\n"
        "    connectionLimit: unlimited; connectionLimitPerIP: unlimited\n"
        "    heloEhloEnforcement: true; addressBracketsEnforcement: true; disabledFeatures: none\n"
        "    tls: implicit TLS (socketTLS), self-signed certificate under DATA/tls/; "
        "auth.required: true\n"
        "    auth.announce: always; requireSSL: true; plainAuthEnabled: true\n"
        "    authorizedAddresses: none; verifyIdentity: strict\n"
        "local domains: localhost\n"
        "default domain: localhost\n"
        "postmaster: postmaster@localhost"
    )


def test_report_of_a_directory(load_files: LoadFiles) -> None:
    config = load_files(
        {
            "smtpserver.xml": "<smtpservers>"
            "<smtpserver><jmxName>mx</jmxName><bind>0.0.0.0:25,[::]:25</bind>"
            "<maxmessagesize>0</maxmessagesize><connectionLimit>50</connectionLimit>"
            "<disabledFeatures>PIPELINING</disabledFeatures><disabledFeatures>DSN"
            "</disabledFeatures><ioWorkerCount>2</ioWorkerCount></smtpserver>"
            "<smtpserver><jmxName>sub</jmxName><bind>127.0.0.1:587</bind>"
            "<maxmessagesize>1500B</maxmessagesize><smtpGreeting>hi</smtpGreeting></smtpserver>"
            "</smtpservers>",
            "domainlist.xml": "<domainlist><domainnames><domainname>example.com</domainname>"
            "</domainnames><defaultDomain>example.com</defaultDomain><autodetect>false"
            "</autodetect><autodetectIP>false</autodetectIP></domainlist>",
            "lmtpserver.xml": "<lmtpservers/>",
        }
    )
    report = format_report(config).splitlines()
    assert report[0].startswith("configuration: ") and report[0].endswith("conf")
    assert report[2] == "  mx (SMTP): 0.0.0.0:25, [::]:25"
    assert report[4].startswith("    maxmessagesize: no limit;")
    assert report[6] == "    connectionLimit: 50; connectionLimitPerIP: unlimited"
    assert report[7].endswith("disabledFeatures: DSN, PIPELINING")
    assert report[8] == "    tls: off; auth.required: false"
    assert report[9] == "    auth.announce: never; requireSSL: true; plainAuthEnabled: true"
    assert report[10] == "    authorizedAddresses: none; verifyIdentity: strict"
    assert report[11] == "  sub (SMTP): 127.0.0.1:587"
    assert report[12] == f"    helloName: {FQDN}; smtpGreeting: hi"
    assert report[13].startswith("    maxmessagesize: 1500 bytes;")
    assert report[20:] == [
        "local domains: example.com",
        "default domain: example.com",
        "postmaster: postmaster@example.com",
        'not implemented yet (ignored): smtpserver.xml: <smtpserver name="mx">/<ioWorkerCount>',
    ]


def test_config_error_needs_a_problem() -> None:
    with pytest.raises(ValueError):
        ConfigError([])
