"""A self-signed certificate for first runs and tests (``kittiwake cert selfsigned``).

Clients will not trust it (swaks and curl need ``-k``-style options, MTAs doing
opportunistic STARTTLS on port 25 accept it), but it lets every listener speak TLS at once.
The key is ECDSA P-256: small, fast, and accepted by every current TLS library.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kittiwake._files import replace_file

__all__ = ["SelfSigned", "generate_self_signed", "self_signed_paths"]

DEFAULT_DAYS = 365


class SelfSigned:
    """Where a self-signed pair for one name lives under ``DATA/tls/``."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.name = name
        self.key, self.cert = self_signed_paths(data_dir, name)

    def exists(self) -> bool:
        return self.key.is_file() and self.cert.is_file()


def self_signed_paths(data_dir: Path, name: str) -> tuple[Path, Path]:
    """``DATA/tls/<name>.key`` and ``DATA/tls/<name>.crt``."""
    safe = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in name) or "localhost"
    tls = data_dir / "tls"
    return tls / f"{safe}.key", tls / f"{safe}.crt"


def generate_self_signed(
    key_path: Path, cert_path: Path, name: str, *, days: int = DEFAULT_DAYS
) -> x509.Certificate:
    """Write a new key (0600) and a self-signed certificate for ``name``.

    The certificate names ``name`` (and ``localhost``, 127.0.0.1 and ::1, so that
    loopback tests can verify it against itself) and is valid for ``days``.

    Raises:
        OSError: the files cannot be written.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys([name, "localhost"])]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # via a temporary name and rename, so a reader never sees half a file
    replace_file(key_path, key_pem, mode=0o600)
    replace_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert
