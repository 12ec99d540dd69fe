"""A listener's ``ssl.SSLContext``, built from its ``<tls>`` settings (``TlsConfig``).

Certificates come from PEM files (``privateKey`` + ``certificates``, the key optionally
encrypted with ``secret``) or a PKCS#12 keystore (``keystore`` + ``secret``). A Java
KeyStore (JKS, James's historical default) cannot be read without Java; it is refused
with the ``keytool`` command that converts it.

The key is decrypted in memory and handed to OpenSSL through an anonymous in-memory file
(``memfd_create``), so a decrypted key never touches the disk. Certificates are reloaded
*in place* (``load_cert_chain`` on the live context): new handshakes use the new
certificate, connections already open keep theirs, nothing is dropped. A reload is first
tried on a scratch context, so a bad file leaves the running certificate untouched.

By default TLS 1.2 is the oldest version accepted (RFC 8996 retired 1.0 and 1.1).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from kittiwake._files import write_all

from ._ciphers import CipherChoice, map_cipher_suites

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "Identity",
    "TlsError",
    "build_context",
    "expiry_warning",
    "load_identity",
    "parse_protocols",
    "reload_context",
    "tls_parameters",
]

if TYPE_CHECKING:  # kittiwake.config imports this module: no import cycle at run time
    from kittiwake.config.model import TlsConfig

EXPIRY_WARNING_DAYS = 14
_PROTOCOLS = {"TLSV1.2": ssl.TLSVersion.TLSv1_2, "TLSV1.3": ssl.TLSVersion.TLSv1_3}
_RETIRED = {"SSLV2", "SSLV3", "SSLV2HELLO", "TLSV1", "TLSV1.0", "TLSV1.1"}
_JKS_MAGIC = (b"\xfe\xed\xfe\xed", b"\xce\xce\xce\xce")  # JKS, JCEKS


class TlsError(Exception):
    """A ``<tls>`` setting cannot be used.

    Attributes:
        element: the ``<tls>`` child at fault (``privateKey``, ``keystore``, ``secret``...).
        reason: what is wrong and, where possible, how to fix it.
    """

    def __init__(self, element: str, reason: str) -> None:
        super().__init__(f"<{element}>: {reason}")
        self.element = element
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """The server's certificate chain and key, as loaded."""

    chain_pem: bytes  # the leaf first
    key_pem: bytes = b""  # unencrypted; kept only in memory
    leaf: x509.Certificate | None = None
    source: str = ""  # the file(s), for log lines

    @property
    def not_after(self) -> datetime:
        assert self.leaf is not None
        return self.leaf.not_valid_after_utc

    @property
    def subject(self) -> str:
        assert self.leaf is not None
        return self.leaf.subject.rfc4514_string()

    def __repr__(self) -> str:  # never the key
        return f"Identity(source={self.source!r})"


def parse_protocols(names: tuple[str, ...]) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """``supportedProtocols`` as OpenSSL's (minimum, maximum) version.

    Raises:
        ValueError: a retired (SSLv3, TLSv1, TLSv1.1) or unknown protocol name.
    """
    if not names:
        return ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    versions = []
    for name in names:
        key = name.strip().upper()
        if key in _RETIRED:
            raise ValueError(
                f"{name} is not supported (RFC 8996 retired TLS 1.0 and 1.1); "
                "use TLSv1.2 and TLSv1.3"
            )
        if key not in _PROTOCOLS:
            raise ValueError(f"unknown protocol {name!r} (TLSv1.2 or TLSv1.3)")
        versions.append(_PROTOCOLS[key])
    return min(versions), max(versions)


def tls_parameters(
    protocols: tuple[str, ...], cipher_suites: tuple[str, ...]
) -> tuple[ssl.TLSVersion, ssl.TLSVersion, CipherChoice]:
    """The protocol range and ciphers James's lists mean.

    As in Java, the cipher list also limits the protocols: listing only TLS 1.2 suites
    leaves TLS 1.3 out, listing only TLS 1.3 suites leaves TLS 1.2 out.

    Raises:
        TlsError: an unknown or retired name, or lists that leave nothing to negotiate.
    """
    try:
        low, high = parse_protocols(protocols)
    except ValueError as exc:
        raise TlsError("supportedProtocols", str(exc)) from None
    try:
        choice = map_cipher_suites(cipher_suites)
    except ValueError as exc:
        raise TlsError("supportedCipherSuites", str(exc)) from None
    if cipher_suites:
        if not choice.tls12:
            low = max(low, ssl.TLSVersion.TLSv1_3)
        elif not choice.tls13:
            high = min(high, ssl.TLSVersion.TLSv1_2)
        if low > high:
            raise TlsError(
                "supportedCipherSuites",
                "none of the listed suites belongs to a protocol in supportedProtocols",
            )
    return low, high, choice


def build_context(cfg: TlsConfig) -> tuple[ssl.SSLContext, Identity]:
    """A server-side context for ``cfg``, certificate loaded.

    Raises:
        TlsError: a file is missing or unreadable, a key does not match its certificate,
            a secret is wrong, a keystore is JKS, or a protocol or cipher is unusable.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # No compression (CRIME), no renegotiation (a client could make us work for free),
    # our cipher order rather than the client's.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    low, high, choice = tls_parameters(cfg.protocols, cfg.cipher_suites)
    ctx.minimum_version = low
    ctx.maximum_version = high
    if choice.tls12:
        try:
            ctx.set_ciphers(":".join(choice.tls12))
        except ssl.SSLError:
            raise TlsError(
                "supportedCipherSuites", "OpenSSL here supports none of the listed suites"
            ) from None
    identity = load_identity(cfg)
    _use_identity(ctx, identity)
    if cfg.client_auth:
        _load_truststore(ctx, cfg)
        ctx.verify_mode = ssl.CERT_REQUIRED  # James: ClientAuth.NEED
    return ctx, identity


def reload_context(ctx: ssl.SSLContext, cfg: TlsConfig) -> Identity:
    """Load ``cfg``'s certificate into the live ``ctx`` (open connections are untouched).

    Raises:
        TlsError: the new files do not load; ``ctx`` is unchanged then.
    """
    _, identity = build_context(cfg)  # everything checked on a scratch context first
    _use_identity(ctx, identity)
    return identity


def expiry_warning(
    identity: Identity, now: datetime | None = None, days: int = EXPIRY_WARNING_DAYS
) -> str | None:
    """A warning when the certificate has expired or expires within ``days``, else None."""
    now = now or datetime.now(UTC)
    left = identity.not_after - now
    if left <= timedelta(0):
        return f"the certificate {identity.source} ({identity.subject}) has EXPIRED"
    if left <= timedelta(days=days):
        return (
            f"the certificate {identity.source} ({identity.subject}) expires in "
            f"{left.days} days, on {identity.not_after:%Y-%m-%d %H:%M} UTC"
        )
    return None


# ---- loading ---------------------------------------------------------------------------


def load_identity(cfg: TlsConfig) -> Identity:
    """The certificate chain and key ``cfg`` names (keystore first, as James).

    Raises:
        TlsError: see :func:`build_context`.
    """
    password = cfg.secret.encode("utf-8") if cfg.secret else None
    if cfg.keystore:
        return _from_keystore(cfg.keystore, cfg.keystore_type, password)
    if not (cfg.private_key and cfg.certificates):
        raise TlsError("keystore", "keystore or (privateKey and certificates) needs to be given")
    return _from_pem(cfg.private_key, cfg.certificates, password)


def _read(path: str, element: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(element, f"cannot read {path}: {exc.strerror}") from None


def _pem_key(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_certs(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _check_pair(key: object, leaf: x509.Certificate, element: str) -> None:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    mine = key.public_key().public_bytes(der, spki)  # type: ignore[attr-defined]
    if mine != leaf.public_key().public_bytes(der, spki):
        raise TlsError(element, "the private key does not match the (first) certificate")


def _from_pem(key_path: str, certs_path: str, password: bytes | None) -> Identity:
    certs_data = _read(certs_path, "certificates")
    try:
        certs = x509.load_pem_x509_certificates(certs_data)
    except ValueError:
        raise TlsError("certificates", f"{certs_path} holds no PEM certificate") from None
    key_data = _read(key_path, "privateKey")
    try:
        key = serialization.load_pem_private_key(key_data, password)
    except TypeError:  # encrypted without a secret, or a secret for a plain key
        if password is None:
            raise TlsError("secret", f"{key_path} is encrypted: give its <secret>") from None
        key = serialization.load_pem_private_key(key_data, None)
    except ValueError:
        reason = "wrong secret, or" if password else f"{key_path} is"
        raise TlsError(
            "privateKey" if not password else "secret",
            f"{reason} not a PEM private key kittiwake can read",
        ) from None
    _check_pair(key, certs[0], "privateKey")
    return Identity(_pem_certs(certs), _pem_key(key), certs[0], f"{certs_path}")


def _jks_message(path: str) -> str:
    return (
        f"{path} is a Java KeyStore (JKS), which kittiwake cannot read. Convert it to "
        f"PKCS#12: keytool -importkeystore -srckeystore {path} -destkeystore {path}.p12 "
        "-deststoretype PKCS12 -- then give the .p12 file in <keystore> and "
        "<keystoreType>PKCS12</keystoreType>"
    )


def _from_keystore(path: str, kind: str, password: bytes | None) -> Identity:
    data = _read(path, "keystore")
    if data[:4] in _JKS_MAGIC:
        raise TlsError("keystore", _jks_message(path))
    if kind.upper() not in ("PKCS12", "JKS"):
        # Java reads a PKCS#12 file given as JKS too (keystore.type.compat), so JKS is
        # accepted as a type; the file's content decides.
        raise TlsError("keystoreType", f"{kind!r} is not supported; use PKCS12")
    key, cert, extra = _pkcs12(data, password, path, "keystore")
    if key is None or cert is None:
        raise TlsError("keystore", f"{path} holds no private key with its certificate")
    _check_pair(key, cert, "keystore")
    return Identity(_pem_certs([cert, *extra]), _pem_key(key), cert, path)


def _pkcs12(
    data: bytes, password: bytes | None, path: str, element: str
) -> tuple[object | None, x509.Certificate | None, list[x509.Certificate]]:
    for attempt in (password, b"") if password is None else (password,):
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, attempt)
        except ValueError:
            continue
        return key, cert, list(extra)
    secret = "<truststoreSecret>" if element == "truststore" else "<secret>"
    raise TlsError(
        element,
        f"{path}: not a PKCS#12 file, or the {secret} is wrong",
    )


def _load_truststore(ctx: ssl.SSLContext, cfg: TlsConfig) -> None:
    if not cfg.truststore:
        raise TlsError("clientAuth", "clientAuth needs a <truststore> of trusted CAs")
    data = _read(cfg.truststore, "truststore")
    if data[:4] in _JKS_MAGIC:
        raise TlsError("truststore", _jks_message(cfg.truststore))
    if data.lstrip().startswith(b"-----BEGIN"):
        pem = data
    else:
        password = cfg.truststore_secret.encode("utf-8") if cfg.truststore_secret else None
        _, cert, extra = _pkcs12(data, password, cfg.truststore, "truststore")
        pem = _pem_certs(([cert] if cert is not None else []) + extra)
    try:
        ctx.load_verify_locations(cadata=pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError):
        raise TlsError("truststore", f"{cfg.truststore} holds no usable certificate") from None


def _use_identity(ctx: ssl.SSLContext, identity: Identity) -> None:
    with _memory_file(identity.chain_pem + identity.key_pem) as path:
        try:
            ctx.load_cert_chain(path)
        except ssl.SSLError as exc:  # pragma: no cover - checked by cryptography above
            raise TlsError("certificates", f"OpenSSL refused the certificate: {exc}") from None


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to ``data`` that lives in memory only (Linux), else a private temp file."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd("kittiwake-tls", os.MFD_CLOEXEC)
        try:
            write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="kittiwake-tls-") as d:  # pragma: no cover
        path = os.path.join(d, "identity.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        try:
            yield path
        finally:
            os.unlink(path)
