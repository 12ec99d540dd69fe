"""RemoteDelivery's parameters: which ones kittiwake honours, and the checks of
those that must be read together or checked against this machine (fail closed: a
value kittiwake cannot honour stops the start with the reason)."""

from __future__ import annotations

import ipaddress
import socket
import ssl

from kittiwake.mailet.api import MailetConfig, MailetError
from kittiwake.mailet.remote_smtp import ClientSettings

__all__ = ["PARAMETERS", "bind_address", "positive_ms", "tcp_port", "tls_parameters"]

#: James's parameters kittiwake honours, and kittiwake's own (docs/mailets.md)
PARAMETERS = frozenset(
    {
        "outgoing",
        "outgoingQueue",
        "delayTime",
        "maxRetries",
        "maxDnsProblemRetries",
        "timeout",
        "connectiontimeout",
        "deliveryThreads",
        "sendpartial",
        "bounceProcessor",
        "onSuccess",
        "gateway",
        "gatewayPort",
        "gatewayUsername",
        "gatewayusername",
        "gatewayPassword",
        "loadBalancing",
        "bind",
        "heloName",
        "startTLS",
        "sslEnable",
        "verifyServerIdentity",
        "sslTrustAllCerts",
        "usePriority",
        "debug",
        "mail.smtp.port",
        # kittiwake's
        "maxConnectionsPerDomain",
        "maxMessagesPerConnection",
        "connectionIdleTime",
        "trustedCertificates",
    }
)


def tls_parameters(config: MailetConfig) -> tuple[bool, bool, bool, str | None, ssl.SSLContext]:
    """startTLS, sslEnable, verifyServerIdentity, trustedCertificates and the TLS
    context, checked together (fail closed)."""
    start_tls = config.get_bool("startTLS", True)
    implicit = config.get_bool("sslEnable", False)
    verify = config.get_bool("verifyServerIdentity", False)
    trust_all = config.get("sslTrustAllCerts")
    trusted = config.get("trustedCertificates") or None
    if verify and not (start_tls or implicit):
        raise MailetError(
            "<verifyServerIdentity> needs TLS: startTLS=false and sslEnable=false "
            "leave nothing to verify"
        )
    if trust_all and trust_all.strip() and config.get_bool("sslTrustAllCerts", False) == verify:
        # true with verification contradicts it; false without verification asks
        # for a chain check without the host name, which kittiwake does not do
        raise MailetError(
            "<sslTrustAllCerts> must be the opposite of <verifyServerIdentity> "
            "(kittiwake checks the chain and the host name together, or neither)"
        )
    if trusted and not verify:
        raise MailetError("<trustedCertificates> is only used with verifyServerIdentity")
    try:
        ctx = ClientSettings.make_tls_context(verify, trusted)
    except (OSError, ssl.SSLError) as exc:
        raise MailetError(f"<trustedCertificates>: cannot load {trusted}: {exc}") from None
    return start_tls, implicit, verify, trusted, ctx


def positive_ms(config: MailetConfig, name: str, default: int) -> int:
    value = config.get_int(name, default)
    if value <= 0:
        raise MailetError(f"<{name}> must be a positive number of milliseconds")
    return value


def tcp_port(config: MailetConfig, name: str, default: int) -> int:
    value = config.get_int(name, default)
    if not 0 < value < 65536:
        raise MailetError(f"<{name}>: {value} is not a TCP port")
    return value


def bind_address(config: MailetConfig) -> str | None:
    """James's ``bind``: the source address of outgoing connections, checked now (an
    address this machine does not have would fail every delivery)."""
    text = (config.get("bind") or "").strip().strip("[]")
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise MailetError(f"<bind>: {text!r} is not an IP address") from None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((str(ip), 0))
    except OSError as exc:
        raise MailetError(f"<bind>: cannot use {ip} as a source address: {exc}") from None
    return str(ip)
