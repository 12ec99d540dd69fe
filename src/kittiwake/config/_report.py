"""``kittiwake config check``: a human-readable summary of a loaded configuration."""

from __future__ import annotations

from kittiwake.config.model import (
    KIB,
    MIB,
    AuthAnnounce,
    Config,
    DnsConfig,
    ListenerConfig,
    Protocol,
    TlsConfig,
)

__all__ = ["NOT_IMPLEMENTED_PREFIX", "format_report"]

NOT_IMPLEMENTED_PREFIX = "not implemented yet (ignored): "


def _size(n: int) -> str:
    if n == 0:
        return "no limit"
    for unit, name in ((1024 * MIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} bytes"


def _limit(n: int) -> str:
    return "unlimited" if n == 0 else str(n)


def _seconds(s: float) -> str:
    return f"{s:g} s"


def _listener(listener: ListenerConfig) -> list[str]:
    binds = ", ".join(
        [*(str(b) for b in listener.binds), *(f"unix:{p}" for p in listener.unix_sockets)]
    )
    greeting_name = "lmtpGreeting" if listener.protocol is Protocol.LMTP else "smtpGreeting"
    greeting = listener.greeting if listener.greeting is not None else "(generated)"
    features = ", ".join(sorted(listener.disabled_features)) or "none"
    return [
        f"  {listener.name} ({listener.protocol.value.upper()}): {binds}",
        f"    helloName: {listener.hello_name}; {greeting_name}: {greeting}",
        f"    maxmessagesize: {_size(listener.max_message_size)}; "
        f"maxLineLength: {listener.max_line_length} bytes; "
        f"recipients per message: {listener.max_recipients}",
        f"    connectiontimeout: {_seconds(listener.connection_timeout)}; "
        f"data timeout: {_seconds(listener.data_timeout)}; "
        f"connectionBacklog: {listener.connection_backlog}",
        f"    connectionLimit: {_limit(listener.connection_limit)}; "
        f"connectionLimitPerIP: {_limit(listener.connection_limit_per_ip)}",
        f"    heloEhloEnforcement: {str(listener.helo_ehlo_enforcement).lower()}; "
        f"addressBracketsEnforcement: {str(listener.address_brackets_enforcement).lower()}; "
        f"disabledFeatures: {features}",
        f"    tls: {_tls(listener.tls)}; auth.required: {str(listener.auth_required).lower()}",
        *_auth(listener),
        *_handlers(listener),
    ]


def _auth(listener: ListenerConfig) -> list[str]:
    """AUTH, trusted networks and sender identity (SMTP only: LMTP has none)."""
    if listener.protocol is Protocol.LMTP:
        return []
    auth = listener.auth
    trusted = ", ".join(str(n) for n in auth.trusted_networks) or "none"
    if not auth.command:
        offered = "no AUTH command (NoAuthCmdHandlerLoader)"
    else:
        offered = (
            f"auth.announce: {auth.announce.value}; "
            f"requireSSL: {str(auth.require_ssl).lower()}; "
            f"plainAuthEnabled: {str(auth.plain_enabled).lower()}"
        )
    lines = [
        f"    {offered}",
        f"    authorizedAddresses: {trusted}; verifyIdentity: {auth.verify_identity}",
    ]
    wanted = auth.announce is not AuthAnnounce.NEVER or listener.auth_required
    if wanted and auth.command and auth.require_ssl and listener.tls is None:
        lines.append("    note: requireSSL and no <tls>: AUTH can never be used here")
    return lines


def _handlers(listener: ListenerConfig) -> list[str]:
    """The handler chain, in order (only when there is one)."""
    if not listener.handlers:
        return []
    names = ", ".join(h.class_name.rpartition(".")[2] for h in listener.handlers)
    return [f"    handlers: {names} (core: {listener.core_handlers})"]


def _dns(dns: DnsConfig) -> list[str]:
    if dns == DnsConfig():
        return []
    servers = ", ".join(str(s) for s in dns.servers) or "none listed"
    system = "; and the system's" if dns.autodiscover else ""
    return [f"dns: {servers}{system}; timeout {_seconds(dns.timeout)}"]


def _tls(tls: TlsConfig | None) -> str:
    if tls is None:
        return "off"
    mode = "STARTTLS (startTLS)" if tls.starttls else "implicit TLS (socketTLS)"
    if tls.self_signed:
        source = "self-signed certificate under DATA/tls/"
    elif tls.keystore:
        source = f"keystore {tls.keystore}"
    else:
        source = f"privateKey {tls.private_key}, certificates {tls.certificates}"
    clients = "; client certificates required" if tls.client_auth else ""
    return f"{mode}, {source}{clients}"


def format_report(config: Config) -> str:
    """Summarise ``config`` for ``kittiwake config check``.

    Listeners with their binds, limits and helloName; local domains; the postmaster;
    then one ``not implemented yet (ignored): ...`` line per option read but not acted on.

    Args:
        config: a configuration from :func:`kittiwake.config.loader.load_config`.

    Returns:
        Several lines of text, without a trailing newline.
    """
    source = config.source if config.source is not None else "embedded default"
    lines = [f"configuration: {source}", "listeners:"]
    for listener in config.listeners:
        lines.extend(_listener(listener))
    domains = config.domains
    lines.append(f"local domains: {', '.join(domains.domain_names) or '(none)'}")
    lines.append(f"default domain: {domains.default_domain}")
    lines.append(f"postmaster: {config.server.postmaster}")
    lines.extend(_dns(config.dns))
    lines.extend(NOT_IMPLEMENTED_PREFIX + item for item in config.unimplemented)
    return "\n".join(lines)
