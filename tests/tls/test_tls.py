"""kittiwake.tls: contexts from James's <tls> settings, keystores, ciphers, expiry."""

from __future__ import annotations

import dataclasses
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from kittiwake.config import TlsConfig
from kittiwake.tls import (
    IANA_TO_OPENSSL,
    TlsError,
    build_context,
    expiry_warning,
    generate_self_signed,
    load_identity,
    map_cipher_suites,
    reload_context,
    self_signed_paths,
    tls_parameters,
)


@pytest.fixture
def pem(tmp_path: Path) -> TlsConfig:
    key, cert = self_signed_paths(tmp_path, "mx.kittiwake.test")
    generate_self_signed(key, cert, "mx.kittiwake.test")
    return TlsConfig(starttls=True, private_key=str(key), certificates=str(cert))


def _p12(tmp_path: Path, pem: TlsConfig, password: bytes | None) -> Path:
    assert pem.private_key and pem.certificates
    key = serialization.load_pem_private_key(Path(pem.private_key).read_bytes(), None)
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(pem.certificates).read_bytes())
    enc = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    data = pkcs12.serialize_key_and_certificates(b"kittiwake", key, cert, None, enc)  # type: ignore[arg-type]
    path = tmp_path / "keystore.p12"
    path.write_bytes(data)
    return path


def test_self_signed_pair(tmp_path: Path, pem: TlsConfig) -> None:
    assert pem.private_key is not None
    assert Path(pem.private_key).stat().st_mode & 0o777 == 0o600
    assert Path(pem.private_key).parent == tmp_path / "tls"
    ctx, identity = build_context(pem)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2  # issue 4, point 3
    assert identity.subject == "CN=mx.kittiwake.test"
    assert "BEGIN PRIVATE KEY" not in repr(identity)


def test_pkcs12_keystore_with_secret(tmp_path: Path, pem: TlsConfig) -> None:
    path = _p12(tmp_path, pem, b"james72laBalle")
    cfg = TlsConfig(keystore=str(path), keystore_type="PKCS12", secret="james72laBalle")
    build_context(cfg)
    # James's default type is JKS; Java reads a PKCS#12 file declared JKS, so do we.
    build_context(dataclasses.replace(cfg, keystore_type="JKS"))
    with pytest.raises(TlsError) as info:
        build_context(dataclasses.replace(cfg, secret="wrong"))
    assert info.value.element == "keystore" and "<secret> is wrong" in info.value.reason
    with pytest.raises(TlsError) as info:
        build_context(dataclasses.replace(cfg, keystore_type="BKS"))
    assert info.value.element == "keystoreType"


def test_pkcs12_without_password(tmp_path: Path, pem: TlsConfig) -> None:
    path = _p12(tmp_path, pem, None)
    build_context(TlsConfig(keystore=str(path), keystore_type="PKCS12"))


def test_jks_keystore_gets_the_keytool_command(tmp_path: Path) -> None:
    path = tmp_path / "keystore"
    path.write_bytes(b"\xfe\xed\xfe\xed\x00\x00\x00\x02" + b"\x00" * 64)
    with pytest.raises(TlsError) as info:
        build_context(TlsConfig(keystore=str(path)))
    assert info.value.element == "keystore"
    assert "keytool -importkeystore -srckeystore" in info.value.reason
    assert "-deststoretype PKCS12" in info.value.reason


def test_encrypted_pem_key(tmp_path: Path, pem: TlsConfig) -> None:
    assert pem.private_key is not None
    key = serialization.load_pem_private_key(Path(pem.private_key).read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    cfg = dataclasses.replace(pem, private_key=str(encrypted), secret="s3cret")
    build_context(cfg)
    for secret, element in ((None, "secret"), ("wrong", "secret")):
        with pytest.raises(TlsError) as info:
            build_context(dataclasses.replace(cfg, secret=secret))
        assert info.value.element == element, info.value


def test_key_that_does_not_match(tmp_path: Path, pem: TlsConfig) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(TlsError, match="does not match"):
        build_context(dataclasses.replace(pem, private_key=str(other)))


def test_missing_files(tmp_path: Path, pem: TlsConfig) -> None:
    with pytest.raises(TlsError) as info:
        build_context(dataclasses.replace(pem, certificates=str(tmp_path / "nope.crt")))
    assert info.value.element == "certificates" and "cannot read" in info.value.reason
    with pytest.raises(TlsError) as info:
        load_identity(TlsConfig())
    assert "keystore or (privateKey and certificates)" in info.value.reason


@pytest.mark.parametrize(
    ("protocols", "ciphers", "low", "high"),
    [
        ((), (), ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3),
        (("TLSv1.3",), (), ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3),
        (("TLSv1.2",), (), ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),
        # Java: a cipher list without TLS 1.3 suites leaves TLS 1.3 out, and the reverse
        (
            (),
            ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",),
            ssl.TLSVersion.TLSv1_2,
            ssl.TLSVersion.TLSv1_2,
        ),
        ((), ("TLS_AES_128_GCM_SHA256",), ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3),
        (
            (),
            ("TLS_AES_256_GCM_SHA384", "SSL_RSA_WITH_AES_128_CBC_SHA"),
            ssl.TLSVersion.TLSv1_2,
            ssl.TLSVersion.TLSv1_3,
        ),
    ],
)
def test_protocols_and_ciphers(
    protocols: tuple[str, ...], ciphers: tuple[str, ...], low: ssl.TLSVersion, high: ssl.TLSVersion
) -> None:
    assert tls_parameters(protocols, ciphers)[:2] == (low, high)


@pytest.mark.parametrize(
    ("protocols", "ciphers", "element", "reason"),
    [
        (("TLSv1.1",), (), "supportedProtocols", "RFC 8996"),
        (("SSLv3",), (), "supportedProtocols", "not supported"),
        (("TLSv2",), (), "supportedProtocols", "unknown protocol"),
        ((), ("TLS_RSA_WITH_RC4_128_MD5",), "supportedCipherSuites", "unknown or unsupported"),
        (("TLSv1.2",), ("TLS_AES_128_GCM_SHA256",), "supportedCipherSuites", "none of the"),
    ],
)
def test_bad_protocols_and_ciphers(
    protocols: tuple[str, ...], ciphers: tuple[str, ...], element: str, reason: str
) -> None:
    with pytest.raises(TlsError) as info:
        tls_parameters(protocols, ciphers)
    assert info.value.element == element and reason in info.value.reason


def test_iana_names_map_to_openssl() -> None:
    choice = map_cipher_suites(
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            "ECDHE-RSA-AES128-GCM-SHA256",  # an OpenSSL name is taken as it is
            "TLS_AES_128_GCM_SHA256",
        )
    )
    assert choice.tls12 == (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256",
    )
    assert choice.tls13 == ("TLS_AES_128_GCM_SHA256",)


def test_every_mapped_suite_is_known_to_this_openssl() -> None:
    known = {c["name"] for c in ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).get_ciphers()}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    known |= {c["name"] for c in ctx.get_ciphers()}
    missing = [name for name in IANA_TO_OPENSSL.values() if name not in known]
    assert len(missing) < len(IANA_TO_OPENSSL) // 4, missing


def test_cipher_list_restricts_the_context(pem: TlsConfig) -> None:
    cfg = dataclasses.replace(pem, cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",))
    ctx, _ = build_context(cfg)
    names = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names == {"ECDHE-ECDSA-AES128-GCM-SHA256"}
    assert ctx.maximum_version is ssl.TLSVersion.TLSv1_2


def test_client_auth_needs_a_truststore(tmp_path: Path, pem: TlsConfig) -> None:
    with pytest.raises(TlsError) as info:
        build_context(dataclasses.replace(pem, client_auth=True))
    assert info.value.element == "clientAuth"
    assert pem.certificates is not None
    ctx, _ = build_context(dataclasses.replace(pem, client_auth=True, truststore=pem.certificates))
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    p12 = _p12(tmp_path, pem, b"trust")
    cfg = dataclasses.replace(pem, client_auth=True, truststore=str(p12), truststore_secret="trust")
    assert build_context(cfg)[0].verify_mode is ssl.CERT_REQUIRED


def test_expiry_warning(pem: TlsConfig) -> None:
    identity = load_identity(pem)
    assert expiry_warning(identity) is None
    soon = identity.not_after - timedelta(days=10)
    warning = expiry_warning(identity, now=soon)
    assert warning is not None and "expires in 10 days" in warning
    assert "EXPIRED" in (expiry_warning(identity, now=identity.not_after + timedelta(1)) or "")
    assert identity.not_after > datetime.now(UTC) + timedelta(days=300)


def test_reload_in_place_keeps_the_old_certificate_on_failure(
    tmp_path: Path, pem: TlsConfig
) -> None:
    ctx, first = build_context(pem)
    key, cert = self_signed_paths(tmp_path / "new", "mx2.kittiwake.test")
    generate_self_signed(key, cert, "mx2.kittiwake.test")
    new = dataclasses.replace(pem, private_key=str(key), certificates=str(cert))
    assert reload_context(ctx, new).subject == "CN=mx2.kittiwake.test"
    with pytest.raises(TlsError):
        reload_context(ctx, dataclasses.replace(new, certificates=str(tmp_path / "gone")))
    assert first.subject == "CN=mx.kittiwake.test"
