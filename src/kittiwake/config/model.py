"""The configuration model: James's XML files become these frozen dataclasses.

Each field says what it means, its default and its unit. Loading (``config/loader.py``)
is the only place that reads XML; everything else in kittiwake sees only these objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Network, IPv6Network

__all__ = [
    "AuthAnnounce",
    "AuthConfig",
    "Bind",
    "Config",
    "DnsConfig",
    "DomainListConfig",
    "HandlerConfig",
    "ListenerConfig",
    "OptionNode",
    "Protocol",
    "ServerOptions",
    "TlsConfig",
    "UsersRepositoryConfig",
]

KIB = 1024
MIB = 1024 * KIB

#: Safe defaults for a listener that does not set them (issue 2, point 4).
DEFAULT_MAX_MESSAGE_SIZE = 25 * MIB
DEFAULT_MAX_RECIPIENTS = 100  # RFC 5321 4.5.3.1.8: at least 100 must be accepted
DEFAULT_MAX_LINE_LENGTH = 8192  # James's default; RFC 5321 asks for at least 512
DEFAULT_CONNECTION_TIMEOUT = 300.0  # seconds; RFC 5321 4.5.3.2.7: server waits >= 5 min
DEFAULT_DATA_TIMEOUT = 600.0  # seconds between data blocks (RFC 5321 4.5.3.2.6, client 10 min)
DEFAULT_BACKLOG = 200


class Protocol(Enum):
    SMTP = "smtp"
    LMTP = "lmtp"


@dataclass(frozen=True, slots=True)
class Bind:
    """One listening address. ``host`` is an IP literal (IPv4 or IPv6, no brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class OptionNode:
    """One element of a handler's nested configuration, as written (a small tree, like
    James's ``HierarchicalConfiguration``); handlers read it through
    :class:`kittiwake.hooks.options.HandlerOptions`."""

    tag: str
    #: the element's own text, stripped ("" when it has none)
    text: str = ""
    attributes: tuple[tuple[str, str], ...] = ()
    children: tuple[OptionNode, ...] = ()


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    """One ``<handler class="...">`` of a listener's ``<handlerchain>``, in chain order.

    ``class_name`` is a James class name (mapped to kittiwake's handler by
    ``hooks/loader.py``) or a Python path (``package.module:Class`` or
    ``package.module.Class``); ``options`` is the ``<handler>`` element itself;
    ``path`` names it in error messages (``<smtpserver name="x">/<handlerchain>/...``).
    """

    class_name: str
    options: OptionNode
    path: str
    file: str = "smtpserver.xml"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """One listener's ``<tls>`` (James ``SslConfig``), when ``startTLS`` or ``socketTLS``
    is true. Paths are resolved (``file://conf/x`` is ``<conf dir>/x``). The files are
    read at start and at each certificate reload (``kittiwake.tls``), not here."""

    #: ``@startTLS``: STARTTLS is offered (RFC 3207); else ``@socketTLS``: implicit TLS
    #: from the first byte (RFC 8314). Exactly one of them is true.
    starttls: bool = False
    #: ``keystore``: a PKCS#12 file (JKS is refused with the keytool command to convert)
    keystore: str | None = None
    #: ``keystoreType``: James's default is JKS; PKCS12 is what kittiwake reads
    keystore_type: str = "JKS"
    #: ``privateKey`` + ``certificates``: PEM files, used when there is no keystore
    private_key: str | None = None
    certificates: str | None = None
    #: ``secret``: the keystore's password, or the PEM private key's
    secret: str | None = field(default=None, repr=False)
    #: ``supportedProtocols/protocol``: e.g. ("TLSv1.2", "TLSv1.3"); () = TLS 1.2 and later
    protocols: tuple[str, ...] = ()
    #: ``supportedCipherSuites/cipherSuite``, as written (IANA names, mapped to OpenSSL's)
    cipher_suites: tuple[str, ...] = ()
    #: ``clientAuth`` present: every client must present a certificate the truststore trusts
    client_auth: bool = False
    truststore: str | None = None
    truststore_type: str = "JKS"
    truststore_secret: str | None = field(default=None, repr=False)
    #: kittiwake's embedded default only: a self-signed pair under ``DATA/tls/`` for the
    #: listener's helloName, generated on first start
    self_signed: bool = False

    @property
    def implicit(self) -> bool:
        return not self.starttls


class AuthAnnounce(Enum):
    """James ``auth.announce``: when EHLO lists AUTH."""

    NEVER = "never"
    ALWAYS = "always"
    #: only to clients whose address is not in ``authorizedAddresses``
    FOR_UNAUTHORIZED_ADDRESSES = "forUnauthorizedAddresses"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """One SMTP listener's AUTH and relay options (James ``auth.*``, ``authRequired``,
    ``authorizedAddresses``, ``verifyIdentity``); ``auth.required`` is
    ``ListenerConfig.auth_required``."""

    #: ``<auth><announce>``, else from the deprecated ``<authRequired>``: true ->
    #: forUnauthorizedAddresses, announce -> always, false or absent -> never
    announce: AuthAnnounce = AuthAnnounce.NEVER
    #: ``<auth><requireSSL>``: AUTH is neither announced nor accepted (538 5.7.11) on a
    #: clear-text connection. Kittiwake's default is true (James's code: false)
    require_ssl: bool = True
    #: ``<auth><plainAuthEnabled>``: PLAIN and LOGIN are offered (they are all there is)
    plain_enabled: bool = True
    #: ``<authorizedAddresses>``: clients that may relay without AUTH (and count as
    #: authenticated for ``auth.required``); empty = nobody
    trusted_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    #: ``<verifyIdentity>``: "strict" (James's default), "relaxed" or "disabled"
    verify_identity: str = "strict"
    #: ``<handlerchain coreHandlersPackage>`` is not NoAuthCmdHandlerLoader: AUTH exists
    command: bool = True
    #: kittiwake ``<auth><ipFailureLimit>``: failed AUTHs per client address within
    #: ``ip_failure_window`` that block it (454 4.7.0) for that long; 0 = no limit
    ip_failure_limit: int = 10
    #: kittiwake ``<auth><ipFailureWindow>``: seconds
    ip_failure_window: float = 600.0
    #: failed AUTHs on one connection before it is closed with 421 4.7.0 (RFC 4954 4:
    #: not fewer than 3)
    connection_failure_limit: int = 3


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One ``<smtpserver>`` (or ``<lmtpserver>``) element: one listener."""

    name: str  # jmxName, or "smtpserver-N" when absent; used in logs
    protocol: Protocol = Protocol.SMTP
    enabled: bool = True
    binds: tuple[Bind, ...] = (Bind("127.0.0.1", 2525),)
    #: Unix-domain socket paths to listen on as well (``<bind>unix:/path</bind>``, LMTP only)
    unix_sockets: tuple[str, ...] = ()
    connection_backlog: int = DEFAULT_BACKLOG
    #: seconds a connection may stay idle waiting for a command (James ``connectiontimeout``)
    connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT
    #: simultaneous connections for this listener; 0 = unlimited
    connection_limit: int = 0
    #: simultaneous connections per client IP for this listener; 0 = unlimited
    connection_limit_per_ip: int = 0
    #: the name in the greeting, EHLO reply and Received header
    hello_name: str = "localhost"
    #: text after "220 " in the greeting; None = "<helloName> ESMTP kittiwake ready"
    greeting: str | None = None
    #: ``<tls>``: STARTTLS or implicit TLS, with the certificate; None = clear text only
    tls: TlsConfig | None = None
    #: ``<auth><required>``: MAIL is refused (530 5.7.0) unless the client authenticated;
    #: with no AUTH yet that is every client (the submission listeners of the default)
    auth_required: bool = False
    #: AUTH, relay and sender identity options (issue 5)
    auth: AuthConfig = field(default_factory=AuthConfig)
    #: bytes; 0 = no limit (James ``maxmessagesize``, plain numbers are KiB)
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: recipients per transaction; beyond it 452 4.5.3 (RFC 5321 4.5.3.1.10)
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    #: bytes per command line, CRLF included (James ``maxLineLength``, 1000..1048576)
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    #: MAIL before HELO/EHLO gets 503 5.5.1
    helo_ehlo_enforcement: bool = True
    #: MAIL/RCPT addresses must be in <...>
    address_brackets_enforcement: bool = True
    #: EHLO keywords not announced (upper case)
    disabled_features: frozenset[str] = frozenset()
    #: seconds between two reads while receiving DATA/BDAT text
    data_timeout: float = DEFAULT_DATA_TIMEOUT
    #: ``<handlerchain>``'s handlers, in order; they run before kittiwake's own rules
    handlers: tuple[HandlerConfig, ...] = ()
    #: ``<handlerchain coreHandlersPackage>``: CoreCmdHandlerLoader or NoAuthCmdHandlerLoader
    core_handlers: str = "CoreCmdHandlerLoader"


@dataclass(frozen=True, slots=True)
class DomainListConfig:
    """``domainlist.xml``: seeds the domain store at start; the store is the truth afterwards."""

    domain_names: tuple[str, ...] = ()
    default_domain: str = "localhost"
    autodetect: bool = False
    autodetect_ip: bool = False


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Process-wide settings that are kittiwake's own (not per listener)."""

    #: postmaster address; mail to postmaster@<local domain> and bare <postmaster> goes here
    postmaster: str = "postmaster@localhost"
    #: spool worker tasks delivering from the spool
    spool_threads: int = 1
    #: ``kittiwake.xml <spoolSync>``: how the spool makes a batch of accepted messages
    #: durable: "filesystem" (one syncfs per group commit) or "file" (an fsync per file)
    spool_sync: str = "filesystem"
    #: seconds to let open transactions finish on SIGTERM
    shutdown_grace: float = 30.0
    #: ``kittiwake.xml <user>``: started as root, kittiwake binds its ports and then runs
    #: as this user (None: "kittiwake"); not root, it runs as whoever started it
    user: str | None = None
    #: ``kittiwake.xml <group>``: the group to run as; None = the user's login group
    group: str | None = None
    #: ``kittiwake.xml <maildir uid= gid= mode=>``: owner, group and file mode of what is
    #: delivered into Maildirs (directories get the mode plus search bits); None = unchanged
    maildir_uid: int | None = None
    maildir_gid: int | None = None
    maildir_mode: int | None = None
    #: ``kittiwake.xml <tlsHandshakeTimeout>``: seconds a TLS handshake may take
    tls_handshake_timeout: float = 30.0
    #: ``kittiwake.xml <quota storage= messages=>``: every mailbox's default limits
    #: (Maildir++ ``maildirsize``; ``kittiwake quota set`` overrides per user); 0 = none
    quota_storage: int = 0
    quota_messages: int = 0
    #: ``<quota tempfail=>``: over quota is 452 4.2.2 on LMTP instead of 552 5.2.2
    quota_tempfail: bool = False


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """``dnsservice.xml``: the resolvers the handlers (RBL, SPF, HELO checks) ask.

    ``servers`` come from ``<servers><server>IP</server></servers>``; ``IP:PORT`` (and
    ``[IPv6]:PORT``) is a kittiwake extension, port 53 otherwise. With ``autodiscover``
    the system's resolvers (``/etc/resolv.conf``) are used too, after the listed ones;
    with neither, 127.0.0.1 (as James does).
    """

    servers: tuple[Bind, ...] = ()
    autodiscover: bool = True
    #: seconds one lookup may take, retries included (kittiwake's ``<timeout>``)
    timeout: float = 5.0
    #: answers kept in memory (James ``maxcachesize``); 0 = no cache
    max_cache_size: int = 50000


@dataclass(frozen=True, slots=True)
class UsersRepositoryConfig:
    """``usersrepository.xml`` (James ``UsersRepository``)."""

    #: ``<enableVirtualHosting>``: user names are full addresses. Kittiwake's users always
    #: are; false means a login or an imported name without "@" gets the default domain
    virtual_hosting: bool = True
    #: ``<algorithm>``: the hash algorithm of imported James users whose line names none
    algorithm: str = "PBKDF2-SHA512"
    #: ``<hashingMode>``: plain, salted, legacy or legacy_salted (imports without a mode)
    hashing_mode: str = "plain"
    #: ``<administratorIds><administratorId>``: users who may authenticate as another
    #: (SASL authorization identity); canonical addresses
    administrators: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Config:
    """Everything kittiwake read from the configuration directory."""

    listeners: tuple[ListenerConfig, ...]
    domains: DomainListConfig = field(default_factory=DomainListConfig)
    server: ServerOptions = field(default_factory=ServerOptions)
    #: the configuration directory, or None for the embedded default
    source: str | None = None
    #: options present in the files that kittiwake reads but does not act on yet (named at start)
    unimplemented: tuple[str, ...] = ()
    #: resolvers for the handlers (``dnsservice.xml``)
    dns: DnsConfig = field(default_factory=DnsConfig)
    #: ``usersrepository.xml``
    users: UsersRepositoryConfig = field(default_factory=UsersRepositoryConfig)
