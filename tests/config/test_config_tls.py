"""<tls> read as James's SslConfig reads it, and kittiwake.xml."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kw_config_helpers import LISTENER

from kittiwake.config import Config, ConfigError, TlsConfig

Load = Callable[..., Config]
LoadError = Callable[..., ConfigError]
LoadFiles = Callable[[dict[str, str]], Config]
PEM = "<privateKey>file://conf/tls/key.pem</privateKey><certificates>certs.pem</certificates>"


def tls_of(config: Config) -> TlsConfig:
    (listener,) = config.listeners
    assert listener.tls is not None
    return listener.tls


def test_starttls_with_pem_files(load_smtp: Load, tmp_path: Path) -> None:
    tls = tls_of(load_smtp(f'<tls startTLS="true" socketTLS="false">{PEM}</tls>'))
    conf = tmp_path / "conf"
    assert tls == TlsConfig(
        starttls=True,
        private_key=str(conf / "tls" / "key.pem"),  # file://conf/ is the conf directory
        certificates=str(conf / "certs.pem"),  # a relative path too
    )
    assert not tls.implicit


def test_socket_tls_with_keystore(load_smtp: Load, tmp_path: Path) -> None:
    tls = tls_of(
        load_smtp(
            '<tls socketTLS="true"><keystore>file:///etc/kittiwake/keystore.p12</keystore>'
            "<keystoreType>PKCS12</keystoreType><secret>pw</secret>"
            "<supportedProtocols><protocol>TLSv1.2</protocol><protocol>TLSv1.3</protocol>"
            "</supportedProtocols><supportedCipherSuites>"
            "<cipherSuite>TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256</cipherSuite>"
            "</supportedCipherSuites></tls>"
        )
    )
    assert tls.implicit and not tls.starttls
    assert tls.keystore == "/etc/kittiwake/keystore.p12"
    assert (tls.keystore_type, tls.secret) == ("PKCS12", "pw")
    assert tls.protocols == ("TLSv1.2", "TLSv1.3")
    assert tls.cipher_suites == ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",)


def test_james_home_relative_path(load_smtp: Load, tmp_path: Path) -> None:
    tls = tls_of(load_smtp('<tls socketTLS="true"><keystore>file://var/ks</keystore></tls>'))
    assert tls.keystore == str(tmp_path / "var" / "ks")  # James's home is conf/..
    assert tls.keystore_type == "JKS"  # James's default; the file's content decides


def test_client_auth(load_smtp: Load) -> None:
    tls = tls_of(
        load_smtp(
            f'<tls startTLS="true">{PEM}<clientAuth><truststore>ca.p12</truststore>'
            "<truststoreType>PKCS12</truststoreType><truststoreSecret>x</truststoreSecret>"
            "</clientAuth></tls>"
        )
    )
    assert tls.client_auth and tls.truststore is not None and tls.truststore.endswith("ca.p12")
    assert (tls.truststore_type, tls.truststore_secret) == ("PKCS12", "x")


@pytest.mark.parametrize(
    ("body", "element", "reason"),
    [
        ('<tls socketTLS="true" startTLS="true"/>', "<tls>", "cannot both be true"),
        ('<tls socketTLS="yes"/>', "<tls>/@socketTLS", "not a boolean"),
        ('<tls startTLS="true"/>', "<tls>", "keystore or (privateKey and certificates)"),
        (
            '<tls startTLS="true"><privateKey>k.pem</privateKey></tls>',
            "<tls>",
            "keystore or (privateKey and certificates)",
        ),
        (
            '<tls startTLS="true"><keystore>classpath:ks</keystore></tls>',
            "<tls>/<keystore>",
            "Java",
        ),
        (
            f'<tls startTLS="true">{PEM}<supportedProtocols><protocol>TLSv1.1</protocol>'
            "</supportedProtocols></tls>",
            "<tls>/<supportedProtocols>",
            "RFC 8996",
        ),
        (
            f'<tls startTLS="true">{PEM}<supportedCipherSuites><cipherSuite>TLS_FOO'
            "</cipherSuite></supportedCipherSuites></tls>",
            "<tls>/<supportedCipherSuites>",
            "unknown or unsupported cipher suite 'TLS_FOO'",
        ),
        (
            f'<tls startTLS="true">{PEM}<clientAuth/></tls>',
            "<tls>/<clientAuth>",
            "needs a <truststore>",
        ),
        (
            f'<tls startTLS="true">{PEM}<enableOCSPCRLChecks>true</enableOCSPCRLChecks></tls>',
            "<tls>/<enableOCSPCRLChecks>",
            "revocation checks",
        ),
        (
            f'<tls startTLS="true">{PEM}<secret>a</secret><secret>b</secret></tls>',
            "<tls>/<secret>",
            "more than once",
        ),
    ],
)
def test_tls_errors(smtp_error: LoadError, body: str, element: str, reason: str) -> None:
    error = smtp_error(body)
    assert error.element == f"{LISTENER}/{element}"
    assert reason in error.reason


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            f'<tls startTLS="true">{PEM}<keystore>ks.p12</keystore></tls>',
            "<tls>/<privateKey> (the keystore is used (as James does when both are given))",
        ),
        (
            f'<tls startTLS="true">{PEM}<algorithm>SunX509</algorithm></tls>',
            "<tls>/<algorithm> (James does not read it either)",
        ),
        (
            f'<tls startTLS="true">{PEM}<sessionCache><size>10</size></sessionCache></tls>',
            "<tls>/<sessionCache> (OpenSSL's session cache defaults are used)",
        ),
        (
            f'<tls startTLS="true">{PEM}<supportedCipherSuites>'
            "<cipherSuite>TLS_AES_128_GCM_SHA256</cipherSuite>"
            "<cipherSuite>TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256</cipherSuite>"
            "</supportedCipherSuites></tls>",
            "<tls>/<supportedCipherSuites> (TLS 1.3 suites cannot be restricted one by one",
        ),
    ],
)
def test_tls_notes(load_smtp: Load, body: str, named: str) -> None:
    config = load_smtp(body)
    assert config.listeners[0].tls is not None
    assert any(
        item.startswith(f"smtpserver.xml: {LISTENER}/{named}") for item in config.unimplemented
    ), config.unimplemented


def test_tls_off_reads_nothing_inside(load_smtp: Load) -> None:
    config = load_smtp('<tls startTLS="false"><keystore>whatever</keystore></tls>')
    assert config.listeners[0].tls is None
    assert config.unimplemented == (
        f"smtpserver.xml: {LISTENER}/<tls> (TLS is off: socketTLS and startTLS are false)",
    )


def test_kittiwake_xml(load_files: LoadFiles) -> None:
    config = load_files(
        {
            "kittiwake.xml": "<kittiwake><user>mail</user><group>mail</group>"
            '<maildir uid="0" gid="root" mode="0640"/>'
            "<tlsHandshakeTimeout>5</tlsHandshakeTimeout><foo/></kittiwake>"
        }
    )
    server = config.server
    assert (server.user, server.group) == ("mail", "mail")
    assert (server.maildir_uid, server.maildir_gid, server.maildir_mode) == (0, 0, 0o640)
    assert server.tls_handshake_timeout == 5.0
    assert config.unimplemented == ("kittiwake.xml: <kittiwake>/<foo>",)


@pytest.mark.parametrize(
    ("text", "element", "reason"),
    [
        ('<maildir mode="0200"/>', "<maildir>/@mode", "read and write"),
        ('<maildir mode="0666"/>', "<maildir>/@mode", "writable by everyone"),
        ('<maildir mode="rw"/>', "<maildir>/@mode", "octal"),
        ('<maildir uid="no-such-user-kw"/>', "<maildir>/@uid", "no user named"),
        ('<maildir gid="no-such-group-kw"/>', "<maildir>/@gid", "no group named"),
        ("<user>bad name</user>", "<user>", "not a user name"),
        ("<tlsHandshakeTimeout>0</tlsHandshakeTimeout>", "<tlsHandshakeTimeout>", "out of range"),
        ('<quota storage="lots"/>', "<quota>/@storage", "not a size"),
        ('<quota messages="-1"/>', "<quota>/@messages", "out of range"),
        ('<quota tempfail="maybe"/>', "<quota>/@tempfail", "true or false"),
        ("<spoolSync>never</spoolSync>", "<spoolSync>", "not one of: filesystem, file"),
    ],
)
def test_kittiwake_xml_errors(load_files: LoadFiles, text: str, element: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_files({"kittiwake.xml": f"<kittiwake>{text}</kittiwake>"})
    assert info.value.file == "kittiwake.xml"
    assert info.value.element == f"<kittiwake>/{element}"
    assert reason in info.value.reason


def test_kittiwake_xml_quota(load_files: LoadFiles) -> None:
    """The default mailbox quota (docs/quota.md): a plain number is KiB, as Dovecot's
    quota_rule reads it."""
    config = load_files(
        {
            "kittiwake.xml": "<kittiwake>"
            '<quota storage="2048" messages="100" tempfail="true"/></kittiwake>'
        }
    )
    server = config.server
    assert (server.quota_storage, server.quota_messages) == (2048 * 1024, 100)
    assert server.quota_tempfail is True
    default = load_files({"kittiwake.xml": "<kittiwake/>"}).server
    assert (default.quota_storage, default.quota_messages, default.quota_tempfail) == (0, 0, False)


def test_kittiwake_xml_spool_sync(load_files: LoadFiles) -> None:
    """<spoolSync>: one syncfs per group commit by default, an fsync per file on request;
    the values are the spool's own."""
    from kittiwake.config._kittiwake import SPOOL_SYNC_MODES
    from kittiwake.queue.spool import SYNC_MODES

    assert SPOOL_SYNC_MODES == SYNC_MODES
    assert load_files({"kittiwake.xml": "<kittiwake/>"}).server.spool_sync == "filesystem"
    config = load_files({"kittiwake.xml": "<kittiwake><spoolSync> file </spoolSync></kittiwake>"})
    assert config.server.spool_sync == "file"
