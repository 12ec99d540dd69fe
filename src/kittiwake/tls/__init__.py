"""TLS for the listeners: contexts from James's ``<tls>`` settings, self-signed
certificates for first runs, IANA cipher suite names mapped to OpenSSL's."""

from ._ciphers import IANA_TO_OPENSSL, TLS13_SUITES, CipherChoice, map_cipher_suites
from ._context import (
    EXPIRY_WARNING_DAYS,
    Identity,
    TlsError,
    build_context,
    expiry_warning,
    load_identity,
    parse_protocols,
    reload_context,
    tls_parameters,
)
from ._selfsigned import SelfSigned, generate_self_signed, self_signed_paths

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "IANA_TO_OPENSSL",
    "TLS13_SUITES",
    "CipherChoice",
    "Identity",
    "SelfSigned",
    "TlsError",
    "build_context",
    "expiry_warning",
    "generate_self_signed",
    "load_identity",
    "map_cipher_suites",
    "parse_protocols",
    "reload_context",
    "self_signed_paths",
    "tls_parameters",
]
