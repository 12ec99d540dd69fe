"""The ``kittiwake`` command: the composition root.

Every command takes ``--conf DIR`` and ``--data DIR``; the environment variables
``KITTIWAKE_CONF`` and ``KITTIWAKE_DATA`` stand in for them. With no configuration
kittiwake runs on its embedded default (see README). Passwords are read from standard
input, never from the command line (where ``ps`` and shell history would show them).
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kittiwake.auth.passwords import hash_password
from kittiwake.cli_accounts import CommandError, alias_command, import_users, login_name
from kittiwake.config.loader import ConfigError, format_report, load_config
from kittiwake.config.model import Config
from kittiwake.policy.names import InvalidName, canonical_domain

__all__ = ["main"]

DEFAULT_DATA = "kittiwake-data"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--conf",
        default=os.environ.get("KITTIWAKE_CONF"),
        help="configuration directory of James-style XML files "
        "(default: $KITTIWAKE_CONF, else the embedded default)",
    )
    common.add_argument(
        "--data",
        default=os.environ.get("KITTIWAKE_DATA", DEFAULT_DATA),
        help=f"data directory (default: $KITTIWAKE_DATA, else ./{DEFAULT_DATA})",
    )
    parser = argparse.ArgumentParser(prog="kittiwake", description="Kittiwake mail server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the server in the foreground")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    serve.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("KITTIWAKE_WORKERS", "1")),
        help="worker processes sharing the listeners, limits and spool (default 1)",
    )
    serve.add_argument(
        "--user",
        default=os.environ.get("KITTIWAKE_USER"),
        help="started as root, run as this user after binding the ports (default: "
        "$KITTIWAKE_USER, else <user> in kittiwake.xml, else kittiwake)",
    )

    cert = sub.add_parser("cert", help="TLS certificates")
    cert_sub = cert.add_subparsers(dest="action", required=True)
    selfsigned = cert_sub.add_parser(
        "selfsigned",
        parents=[common],
        help="write a key and a self-signed certificate for the hello name under DATA/tls/",
    )
    selfsigned.add_argument("--name", help="the name (default: the first listener's helloName)")
    selfsigned.add_argument("--days", type=int, default=365, help="validity (default 365)")
    selfsigned.add_argument("--force", action="store_true", help="replace an existing pair")
    cert_sub.add_parser(
        "reload",
        parents=[common],
        help="make the running server reload its certificates (SIGHUP); no connection drops",
    )

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="action", required=True)
    config_sub.add_parser("check", parents=[common], help="load the configuration and report")

    domain = sub.add_parser("domain", help="local domains")
    domain_sub = domain.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        p = domain_sub.add_parser(action, parents=[common])
        p.add_argument("name")
    domain_sub.add_parser("list", parents=[common])

    user = sub.add_parser("user", help="mail users (the password is read from standard input)")
    user_sub = user.add_subparsers(dest="action", required=True)
    for action in ("add", "remove", "passwd"):
        p = user_sub.add_parser(action, parents=[common])
        p.add_argument("name", help="the full address, e.g. alice@example.com")
    user_sub.add_parser("list", parents=[common])
    imp = user_sub.add_parser(
        "import",
        parents=[common],
        help="import Apache James users with their stored hashes (lines of NAME "
        "[ALGORITHM] HASH on standard input); re-hashed to argon2id at their next login",
    )
    imp.add_argument("--file", help="read the lines from this file instead")
    imp.add_argument("--domain", help="the domain of names without @")
    imp.add_argument("--replace", action="store_true", help="replace existing users' hashes")

    alias = sub.add_parser("alias", help="address and domain aliases (the rewrite table)")
    alias_sub = alias.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        p = alias_sub.add_parser(action, parents=[common])
        p.add_argument("source", help="sales@example.com, or @alias.example for a domain")
        p.add_argument("target", help="alice@example.com (or @example.com for a domain)")
        p.add_argument(
            "--type",
            choices=["address", "forward", "domain", "regex"],
            help="default: domain for @SOURCE, else address",
        )
    p = alias_sub.add_parser("list", parents=[common])
    p.add_argument("source", nargs="?", help="only the mappings of this source")

    from kittiwake.cli_quota import add_parser as add_quota_parser

    add_quota_parser(sub, common)
    from kittiwake.mailet.commands import add_parsers  # repo, sendmail (issue 7)

    add_parsers(sub, common)
    from kittiwake.cli_dkim import add_parsers as add_dkim_parsers  # issue 8 point 4

    add_dkim_parsers(sub, common)
    from kittiwake.mailet.queue_commands import add_queue_parser  # issue 8

    add_queue_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(Path(args.conf) if args.conf else None)
        if args.command in ("serve", "config"):
            config = _check_handlers(config)
            config = _check_mailets(config)
    except ConfigError as exc:
        print(f"kittiwake: configuration error: {exc}", file=sys.stderr)
        return 2
    data = Path(args.data)
    try:
        if args.command == "serve":
            return _serve(config, data, args.log_level, args.workers, args.user)
        if args.command == "config":
            print(format_report(config))
            return _check_certificates(config)
        if args.command == "cert":
            return _cert(config, data, args)
        if args.command == "domain":
            return _domain(config, data, args.action, getattr(args, "name", None))
        if args.command == "user" and args.action == "import":
            return _import(config, data, args)
        if args.command == "user":
            return _user(config, data, args.action, getattr(args, "name", None))
        if args.command == "alias":
            return _alias(config, data, args)
        if args.command == "quota":
            return _quota(config, data, args)
        if args.command in ("repo", "sendmail"):
            return _mailet_command(config, data, args)
        if args.command == "dkim":
            return _dkim(config, data, args)
        if args.command == "queue":
            return _queue_command(config, data, args)
    except _Failure as exc:
        print(f"kittiwake: {exc}", file=sys.stderr)
        return 1
    return 2


def _quota(config: Config, data: Path, args: argparse.Namespace) -> int:
    from kittiwake.cli_quota import QuotaCommandError, run_quota

    store = _store(config, data)
    try:
        user = login_name(config, args.name)
        if not store.contains_user(user):
            raise _Failure(f"no such user: {user}")
    except CommandError as exc:
        raise _Failure(str(exc)) from None
    finally:
        store.close()
    try:
        return run_quota(config, data, user, args)
    except QuotaCommandError as exc:
        raise _Failure(str(exc)) from None


def _check_mailets(config: Config) -> Config:
    """Compile the mailet container once (``mailetcontainer.xml`` or the default), so
    that a bad class or parameter stops here; James classes kittiwake does not have
    join the report.

    Raises:
        ConfigError: the container's problems.
    """
    from kittiwake.mailet import build_container, load_spec

    spec = load_spec(config.source)
    container = build_container(
        spec,
        Path("."),
        postmaster=config.server.postmaster,
        hostname="localhost",
        conf_dir=config.source,
    )
    notes = tuple(container.notes)
    return dataclasses.replace(config, unimplemented=config.unimplemented + notes)


def _mailet_command(config: Config, data: Path, args: argparse.Namespace) -> int:
    from kittiwake.mailet.commands import CommandError, run_repo
    from kittiwake.mailet.sendmail import run_sendmail

    try:
        if args.command == "repo":
            return run_repo(data, args)
        data.mkdir(parents=True, exist_ok=True)
        return run_sendmail(args, data, config.domains.default_domain)
    except CommandError as exc:
        raise _Failure(str(exc)) from None


def _dkim(config: Config, data: Path, args: argparse.Namespace) -> int:
    from kittiwake.cli_dkim import run_dkim

    try:
        return run_dkim(data, args, config)
    except CommandError as exc:
        raise _Failure(str(exc)) from None


def _queue_command(config: Config, data: Path, args: argparse.Namespace) -> int:
    from kittiwake.mailet.queue_commands import QueueCommandError, run_queue

    try:
        return run_queue(config, data, args)
    except QueueCommandError as exc:
        raise _Failure(str(exc)) from None


def _check_handlers(config: Config) -> Config:
    """Build every handler chain once, so that an unknown class or a bad option stops
    here with file, element and reason; options no handler read join the report.

    Raises:
        ConfigError: the handler problems.
    """
    from kittiwake.hooks.loader import load_chains

    notes = load_chains(config).notes
    return dataclasses.replace(config, unimplemented=config.unimplemented + notes)


class _Failure(Exception):
    """A command failed for a reason the user can fix; printed without a traceback."""


def _serve(config: Config, data: Path, level: str, workers: int, user: str | None) -> int:
    from kittiwake.logsetup import setup_logging
    from kittiwake.server.runtime import run

    setup_logging(level)
    for item in config.unimplemented:
        logging.getLogger("kittiwake.config").warning("not implemented yet, ignored: %s", item)
    from kittiwake.server.privileges import PrivilegeError
    from kittiwake.server.tls import TlsStartError

    try:
        return run(config, data, workers, user)
    except (OSError, PrivilegeError, TlsStartError) as exc:
        print(f"kittiwake: {exc}", file=sys.stderr)
        return 1


def _check_certificates(config: Config) -> int:
    """``config check``: load every listener's certificate (not the self-signed ones,
    which live under DATA), so that a bad file shows before a start."""
    from kittiwake.tls import TlsError, build_context, expiry_warning

    status = 0
    for listener in config.listeners:
        tls = listener.tls
        if tls is None or tls.self_signed or not listener.enabled:
            continue
        try:
            _, identity = build_context(tls)
        except TlsError as exc:
            print(
                f"kittiwake: listener {listener.name}: <tls>/<{exc.element}>: {exc.reason}",
                file=sys.stderr,
            )
            status = 2
            continue
        print(
            f"certificate of {listener.name}: {identity.subject}, "
            f"valid until {identity.not_after:%Y-%m-%d %H:%M} UTC"
        )
        warning = expiry_warning(identity)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    return status


def _cert(config: Config, data: Path, args: argparse.Namespace) -> int:
    if args.action == "selfsigned":
        from kittiwake.tls import SelfSigned, generate_self_signed

        name = args.name or (config.listeners[0].hello_name if config.listeners else "localhost")
        pair = SelfSigned(data, name)
        if pair.exists() and not args.force:
            raise _Failure(f"{pair.cert} exists already (--force replaces it)")
        if args.days < 1:
            raise _Failure("--days must be at least 1")
        cert = generate_self_signed(pair.key, pair.cert, name, days=args.days)
        print(f"wrote {pair.key} (private key, mode 0600)")
        until = f"{cert.not_valid_after_utc:%Y-%m-%d}"
        print(f"wrote {pair.cert} (self-signed for {name}, valid until {until})")
        print(
            'use them in smtpserver.xml: <tls startTLS="true"><privateKey>'
            f"{pair.key.resolve()}</privateKey><certificates>{pair.cert.resolve()}"
            "</certificates></tls>"
        )
        return 0
    return _reload(data)


def _reload(data: Path) -> int:
    """Send SIGHUP to the server whose pid DATA/kittiwake.pid holds."""
    import signal

    from kittiwake.server.runtime import PID_FILE

    pid_file = data / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except FileNotFoundError:
        raise _Failure(f"no {pid_file}: is kittiwake running with --data {data}?") from None
    except (OSError, ValueError) as exc:
        raise _Failure(f"cannot read {pid_file}: {exc}") from None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        raise _Failure(f"kittiwake (pid {pid} in {pid_file}) is not running") from None
    except OSError:
        cmdline = b"kittiwake"  # no /proc: trust the pid file
    if b"kittiwake" not in cmdline:
        raise _Failure(f"pid {pid} in {pid_file} is not kittiwake (a stale pid file?)")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise _Failure(f"kittiwake (pid {pid}) is not running") from None
    except PermissionError:
        raise _Failure(f"not allowed to signal pid {pid}: run as root or as its user") from None
    print(f"asked kittiwake (pid {pid}) to reload its certificates; its log tells the result")
    return 0


def _store(config: Config, data: Path):  # type: ignore[no-untyped-def]
    from kittiwake.storage.sqlite import SqliteStore

    data.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(data / "kittiwake.db")
    for domain in config.domains.domain_names:
        store.add_domain(domain)
    return store


def _domain(config: Config, data: Path, action: str, name: str | None) -> int:
    store = _store(config, data)
    if action == "list":
        for domain in store.list_domains():
            print(domain)
        return 0
    assert name is not None
    try:
        domain = canonical_domain(name)
    except InvalidName:
        raise _Failure(f"not a valid domain name: {name!r}") from None
    try:
        if action == "add":
            if not store.add_domain(domain):
                raise _Failure(f"domain {domain} already exists")
            print(f"added domain {domain}")
        elif not store.remove_domain(domain):
            raise _Failure(f"no such domain: {domain}")
        else:
            print(f"removed domain {domain}")
    except InvalidName:
        raise _Failure(f"not a usable domain name: {name!r}") from None
    return 0


def _drop_quota_override(data: Path, user: str) -> None:
    """A removed user's quota override goes with it: a user made again later under the
    same name starts from the default, not from a forgotten limit."""
    path = data / "quota.db"
    if not path.exists():
        return
    from kittiwake.delivery.quota_limits import QuotaOverrides

    overrides = QuotaOverrides(path)
    try:
        overrides.set(user, None)
    finally:
        overrides.close()


def _user(config: Config, data: Path, action: str, name: str | None) -> int:
    store = _store(config, data)
    if action == "list":
        for user in store.list_users():
            print(user)
        return 0
    assert name is not None
    try:
        user = login_name(config, name)  # no virtual hosting: the default domain appended
    except CommandError as exc:
        raise _Failure(str(exc)) from None
    if action == "remove":
        if not store.remove_user(user):
            raise _Failure(f"no such user: {user}")
        _drop_quota_override(data, user)
        print(f"removed user {user}")
        return 0
    domain = user.rpartition("@")[2]
    if not store.contains_domain(domain):
        raise _Failure(
            f"{domain} is not a local domain; add it with: kittiwake domain add {domain}"
        )
    if action == "add" and store.contains_user(user):
        raise _Failure(f"user {user} already exists")
    if action == "passwd" and not store.contains_user(user):
        raise _Failure(f"no such user: {user}")
    password_hash = hash_password(_read_password())
    if action == "add":
        try:
            store.add_user(user, password_hash)
        except ValueError as exc:
            raise _Failure(str(exc)) from None
        print(f"added user {user}")
    else:
        store.set_password_hash(user, password_hash)
        print(f"changed the password of {user}")
    return 0


def _alias(config: Config, data: Path, args: argparse.Namespace) -> int:
    store = _store(config, data)
    try:
        lines = alias_command(
            store,
            args.action,
            args.source,
            getattr(args, "target", None),
            getattr(args, "type", None),
        )
    except CommandError as exc:
        raise _Failure(str(exc)) from None
    for line in lines:
        print(line)
    return 0


def _import(config: Config, data: Path, args: argparse.Namespace) -> int:
    store = _store(config, data)
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                imported, refused = import_users(
                    store, config, f, domain=args.domain, replace=args.replace
                )
        except OSError as exc:
            raise _Failure(f"cannot read {args.file}: {exc.strerror}") from None
    else:
        imported, refused = import_users(
            store, config, sys.stdin, domain=args.domain, replace=args.replace
        )
    print(f"imported {imported} user(s); {refused} line(s) refused")
    return 1 if refused else 0


def _read_password() -> str:
    """From a terminal: asked twice, not echoed. Otherwise: the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            raise _Failure("the two passwords differ")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise _Failure("empty password (give it on standard input)")
    return password


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
