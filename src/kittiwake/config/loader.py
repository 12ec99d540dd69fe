"""Load a James-style configuration directory into a :class:`~kittiwake.config.model.Config`.

Files read:

* ``smtpserver.xml``: the SMTP listeners (``_smtpserver.py``). Absent: the embedded
  default listeners.
* ``kittiwake.xml``: kittiwake's own settings (``_kittiwake.py``): the user to run as,
  Maildir ownership, the TLS handshake timeout. Absent: the defaults.
* ``lmtpserver.xml``: the LMTP listeners (``_lmtpserver.py``). Absent: no LMTP.
* ``domainlist.xml``: local domains and the default domain (``_domainlist.py``). Absent:
  ``localhost`` only.
* ``dnsservice.xml``: the resolvers handlers ask (``_dnsservice.py``). Absent: the
  system's resolvers.
* ``mailetcontainer.xml``: only ``<context><postmaster>``; the processors are named as
  not implemented. Absent: ``postmaster@<defaultDomain>``.
* ``usersrepository.xml``: virtual hosting, the hash algorithm of imported James users,
  ``administratorIds`` (``_usersrepository.py``). Absent: the defaults.

Every other ``*.xml`` or ``*.properties`` file in the directory is named in
``Config.unimplemented``. Security options kittiwake lacks stop the start
(``_security.py``); other unknown options are named, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kittiwake.config._dnsservice import DNSSERVICE, read_dnsservice
from kittiwake.config._domainlist import (
    DOMAINLIST,
    MAILETCONTAINER,
    read_domainlist,
    read_postmaster,
)
from kittiwake.config._errors import ConfigError, Findings, Problem
from kittiwake.config._kittiwake import FILE as KITTIWAKE
from kittiwake.config._kittiwake import read_kittiwake
from kittiwake.config._lmtpserver import FILE as LMTPSERVER
from kittiwake.config._lmtpserver import check_lmtp_listeners, read_lmtpserver
from kittiwake.config._report import format_report
from kittiwake.config._smtpserver import FILE as SMTPSERVER
from kittiwake.config._smtpserver import autodetected_hello_name, read_smtpserver
from kittiwake.config._usersrepository import USERSREPOSITORY, read_usersrepository
from kittiwake.config._values import HostLookup
from kittiwake.config.model import (
    AuthAnnounce,
    AuthConfig,
    Bind,
    Config,
    DnsConfig,
    DomainListConfig,
    ListenerConfig,
    ServerOptions,
    TlsConfig,
    UsersRepositoryConfig,
)

__all__ = ["ConfigError", "HostLookup", "Problem", "format_report", "load_config"]

#: The embedded default, shaped as James's sample deployment (25 / 587 / 465) on
#: loopback and on ports a newcomer can bind without root: MX without AUTH; submission
#: with STARTTLS and AUTH required; submission over implicit TLS (RFC 8314), AUTH required.
DEFAULT_LISTENER_NAME = "smtp"
DEFAULT_BIND = Bind("127.0.0.1", 2525)
SUBMISSION_LISTENER_NAME = "submission"
SUBMISSION_BIND = Bind("127.0.0.1", 2587)
SUBMISSIONS_LISTENER_NAME = "submissions"
SUBMISSIONS_BIND = Bind("127.0.0.1", 2465)
_READ = (SMTPSERVER, LMTPSERVER, DOMAINLIST, MAILETCONTAINER, DNSSERVICE, USERSREPOSITORY)
_T = TypeVar("_T")
_OTHER_FILE_NOTES = {
    "config.xml": "James 2.x: move its <smtpserver> block into smtpserver.xml",
}


def load_config(conf_dir: Path | None, *, host: HostLookup | None = None) -> Config:
    """Read the configuration directory, or return the embedded default.

    The embedded default (``conf_dir`` None) is three SMTP listeners with ``helloName``
    this machine's name (``localhost`` if it has none): ``smtp`` on 127.0.0.1:2525 (the
    MX: no AUTH, no TLS), ``submission`` on 127.0.0.1:2587 (STARTTLS, AUTH required) and
    ``submissions`` on 127.0.0.1:2465 (implicit TLS, AUTH required), the last two with a
    self-signed certificate generated under ``DATA/tls/`` on first start; no
    ``authorizedAddresses`` (nobody relays without AUTH, loopback included); local
    domain ``localhost`` (also the default domain), postmaster ``postmaster@localhost``,
    everything else at the model's defaults.

    Args:
        conf_dir: the directory holding James's XML files, or None for the default.
        host: how to learn this machine's name and resolve names in ``<bind>``; tests
            pass a fake. Defaults to ``socket.getfqdn`` and ``socket.getaddrinfo``.

    Returns:
        The frozen configuration. ``unimplemented`` names every option that is present
        but not acted on yet.

    Raises:
        ConfigError: the directory does not exist, a file is malformed, a value is bad,
            or a security option asks for something kittiwake does not do yet. The
            error lists every problem found, each with file, element and reason.
    """
    lookup = host if host is not None else HostLookup()
    if conf_dir is None:
        return _embedded(lookup)
    conf_dir = Path(conf_dir)  # a str from the command line works too
    if not conf_dir.exists():
        raise ConfigError(Problem(str(conf_dir), "(directory)", "does not exist"))
    if not conf_dir.is_dir():
        raise ConfigError(Problem(str(conf_dir), "(directory)", "is not a directory"))

    files = _Files(conf_dir)
    embedded = _embedded(lookup)
    listeners = files.read(
        SMTPSERVER, lambda p, f: read_smtpserver(p, lookup, f), list(embedded.listeners)
    )
    no_lmtp: list[ListenerConfig] = []
    lmtp = files.read(LMTPSERVER, lambda p, f: read_lmtpserver(p, lookup, f), no_lmtp)
    domains = files.read(DOMAINLIST, lambda p, f: read_domainlist(p, lookup, f), embedded.domains)
    dns = files.read(DNSSERVICE, read_dnsservice, DnsConfig())
    postmaster = files.read(
        MAILETCONTAINER,
        lambda p, f: read_postmaster(p, domains.default_domain, f),
        f"postmaster@{domains.default_domain}",
    )
    own: dict[str, Any] = files.read(KITTIWAKE, read_kittiwake, {})
    users = files.read(
        USERSREPOSITORY,
        lambda p, f: read_usersrepository(p, f, domains.default_domain),
        UsersRepositoryConfig(),
    )
    if (conf_dir / SMTPSERVER).is_file():
        files.problems.extend(_check_listeners(listeners))
    files.problems.extend(check_lmtp_listeners(lmtp, listeners))
    listeners.extend(lmtp)
    files.unimplemented.extend(_other_files(conf_dir))
    if files.problems:
        raise ConfigError(files.problems)
    return Config(
        listeners=tuple(listeners),
        domains=domains,
        server=ServerOptions(postmaster=postmaster, **own),
        source=str(conf_dir),
        dns=dns,
        unimplemented=tuple(files.unimplemented),
        users=users,
    )


class _Files:
    """Reads the files of one directory, pooling problems so all are reported at once."""

    def __init__(self, conf_dir: Path) -> None:
        self.conf_dir = conf_dir
        self.problems: list[Problem] = []
        self.unimplemented: list[str] = []

    def read(self, file: str, reader: Callable[[Path, Findings], _T], fallback: _T) -> _T:
        """``reader``'s result, or ``fallback`` if the file is absent or unreadable."""
        path = self.conf_dir / file
        if not path.exists():
            return fallback
        if not path.is_file():
            self.problems.append(Problem(file, "(file)", "is not a regular file"))
            return fallback
        findings = Findings(file)
        try:
            value = reader(path, findings)
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            value = fallback
        self.problems.extend(findings.problems)
        self.unimplemented.extend(findings.unimplemented)
        return value


def _embedded(host: HostLookup) -> Config:
    hello_name = autodetected_hello_name(host)
    # MX: no AUTH command (James's NoAuthCmdHandlerLoader); submission: AUTH announced
    # (once encrypted: requireSSL), required to send.
    mx = ListenerConfig(
        name=DEFAULT_LISTENER_NAME,
        binds=(DEFAULT_BIND,),
        hello_name=hello_name,
        auth=AuthConfig(command=False),
    )
    submission = ListenerConfig(
        name=SUBMISSION_LISTENER_NAME,
        binds=(SUBMISSION_BIND,),
        hello_name=hello_name,
        tls=TlsConfig(starttls=True, self_signed=True),
        auth_required=True,
        auth=AuthConfig(announce=AuthAnnounce.ALWAYS),
    )
    submissions = ListenerConfig(
        name=SUBMISSIONS_LISTENER_NAME,
        binds=(SUBMISSIONS_BIND,),
        hello_name=hello_name,
        tls=TlsConfig(starttls=False, self_signed=True),
        auth_required=True,
        auth=AuthConfig(announce=AuthAnnounce.ALWAYS),
    )
    return Config(
        listeners=(mx, submission, submissions),
        domains=DomainListConfig(domain_names=("localhost",), default_domain="localhost"),
        server=ServerOptions(postmaster="postmaster@localhost"),
    )


def _check_listeners(listeners: list[ListenerConfig]) -> list[Problem]:
    """Across enabled listeners: at least one, unique names, no address bound twice."""
    if not listeners:
        return [
            Problem(SMTPSERVER, "<smtpservers>", "no enabled <smtpserver>: nothing would listen")
        ]
    problems = []
    names: set[str] = set()
    owners: dict[Bind, str] = {}
    for listener in listeners:
        where = f'<smtpserver name="{listener.name}">'
        if listener.name in names:
            problems.append(Problem(SMTPSERVER, f"{where}/<jmxName>", "two listeners use it"))
        names.add(listener.name)
        for bind in listener.binds:
            if bind in owners and bind.port != 0:
                problems.append(
                    Problem(
                        SMTPSERVER,
                        f"{where}/<bind>",
                        f'{bind} is also bound by <smtpserver name="{owners[bind]}">',
                    )
                )
            owners.setdefault(bind, listener.name)
    return problems


def _other_files(conf_dir: Path) -> list[str]:
    """James files in the directory that kittiwake does not read at all."""
    found = []
    for path in sorted(conf_dir.iterdir()):
        if path.name in (*_READ, KITTIWAKE) or path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix in (".xml", ".properties"):
            note = _OTHER_FILE_NOTES.get(path.name)
            found.append(f"{path.name} (whole file{'; ' + note if note else ''})")
    return found
