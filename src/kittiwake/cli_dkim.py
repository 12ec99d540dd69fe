"""``kittiwake dkim``: the DKIM keys under ``DATA/dkim`` (:mod:`kittiwake.mailet.dkimkeys`).

* ``keygen DOMAIN [--selector S] [--algorithm rsa|ed25519] [--bits 2048] [--force]``
  writes a key (0600) and prints the TXT record to publish; mail from DOMAIN is signed
  with it at once (the built-in flow's ``DKIMSign``).
* ``list``: every key; ``show DOMAIN [--selector S]``: the records again;
  ``check DOMAIN``: are they published (asked of ``dnsservice.xml``'s resolvers);
  ``remove DOMAIN SELECTOR``: a key gone (the last step of a rotation).

A private key is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from kittiwake.cli_accounts import CommandError
from kittiwake.config.model import Config
from kittiwake.mailet.dkimkeys import DkimKey, DkimKeyError, KeyStore, split_txt, valid_domain

__all__ = ["DEFAULT_SELECTOR", "add_parsers", "format_record", "run_dkim"]

DEFAULT_SELECTOR = "kittiwake"
#: the TTL suggested in the zone file line (an hour: a rotation waits that long)
_TTL = 3600


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``dkim`` to the ``kittiwake`` parser."""
    dkim = sub.add_parser("dkim", help="DKIM signing keys (DATA/dkim) and their DNS records")
    dkim_sub = dkim.add_subparsers(dest="action", required=True)
    p = dkim_sub.add_parser(
        "keygen",
        parents=[common],
        help="make a signing key for DOMAIN and print the DNS TXT record to publish",
    )
    p.add_argument("domain", help="the From: domain of the mail to sign, e.g. example.com")
    p.add_argument("--selector", default=DEFAULT_SELECTOR, help=f"default {DEFAULT_SELECTOR}")
    p.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa", help="default rsa")
    p.add_argument("--bits", type=int, help="RSA key size, 1024 to 4096 (default 2048)")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    dkim_sub.add_parser("list", parents=[common], help="every key: domain, selector, algorithm")
    p = dkim_sub.add_parser("show", parents=[common], help="print DOMAIN's DNS records again")
    p.add_argument("domain")
    p.add_argument("--selector", help="only this selector's")
    p = dkim_sub.add_parser(
        "check", parents=[common], help="look DOMAIN's records up in DNS (dnsservice.xml)"
    )
    p.add_argument("domain")
    p = dkim_sub.add_parser("remove", parents=[common], help="delete a key")
    p.add_argument("domain")
    p.add_argument("selector")


def format_record(key: DkimKey) -> list[str]:
    """The lines that tell what to publish: name, type, value (in strings of at most
    255 bytes, RFC 6376 3.6.2.2), and the same as a zone file line."""
    strings = " ".join(f'"{s}"' for s in split_txt(key.record))
    return [
        f"name:  {key.record_name}",
        "type:  TXT",
        f"value: {strings}",
        f"zone:  {key.record_name}. {_TTL} IN TXT ( {strings} )",
    ]


def run_dkim(data: Path, args: argparse.Namespace, config: Config | None = None) -> int:
    """Run ``kittiwake dkim ACTION``.

    Raises:
        CommandError: printed without a traceback.
    """
    store = KeyStore(data / "dkim")
    try:
        if args.action == "keygen":
            return _keygen(store, args, config.source if config else None)
        if args.action == "check":
            return _check(store, valid_domain(args.domain), config)
        if args.action == "list":
            status = 0
            for domain in store.domains():
                for selector in store.selectors(domain):
                    try:
                        key = store.load(domain, selector)
                    except DkimKeyError as exc:  # the others are still listed
                        print(f"{domain}\t{selector}\tUNUSABLE: {exc}")
                        status = 1
                        continue
                    print(f"{domain}\t{selector}\t{key.description}\t{key.record_name}")
            return status
        if args.action == "show":
            domain = valid_domain(args.domain)
            selectors = store.selectors(domain)
            if args.selector:
                selectors = [s for s in selectors if s == args.selector.lower()]
            if not selectors:
                raise CommandError(f"no DKIM key for {domain} (kittiwake dkim keygen {domain})")
            for i, selector in enumerate(selectors):
                if i:
                    print()
                key = store.load(domain, selector)
                print(f"{domain} selector {selector} ({key.description}), {key.path}:")
                for line in format_record(key):
                    print(line)
            return 0
        path = store.remove(args.domain, args.selector)
        print(f"removed {path}; remove its DNS record once no mail signed with it is in transit")
        return 0
    except DkimKeyError as exc:
        raise CommandError(str(exc)) from None


def _keygen(store: KeyStore, args: argparse.Namespace, conf_dir: str | None) -> int:
    if args.algorithm == "ed25519" and args.bits is not None:
        raise CommandError("--bits is for RSA keys (an Ed25519 key has one size)")
    key = store.generate(
        args.domain,
        args.selector,
        args.algorithm,
        2048 if args.bits is None else args.bits,
        force=args.force,
    )
    print(f"wrote {key.path} ({key.description} private key, mode 0600)")
    signs = _container_signs(conf_dir)
    if signs:
        print(
            f"mail with a From: address at {key.domain} is DKIM-signed with it from now on; "
            "publish this DNS record:"
        )
    else:
        print(
            f"warning: {conf_dir}/mailetcontainer.xml has no DKIMSign mailet, so nothing is "
            'signed: add <mailet match="All" class="DKIMSign"/> before RemoteDelivery. '
            "The DNS record to publish:"
        )
    print()
    for line in format_record(key):
        print(line)
    print()
    if key.kind == "ed25519":
        print(
            "note: many receivers do not verify Ed25519 signatures yet (RFC 8463): keep an "
            f"RSA key for {key.domain} too (each key signs)"
        )
    return 0


def _check(store: KeyStore, domain: str, config: Config | None) -> int:
    """Each key's record as DNS serves it now: 0 when every one is there as it should."""
    from kittiwake.dnsservice import DnsService, DnsTempError

    keys = store.keys(domain)
    if not keys:
        raise CommandError(f"no DKIM key for {domain} (kittiwake dkim keygen {domain})")
    dns = DnsService(config.dns if config else None)
    status = 0
    for key in keys:
        try:
            found = asyncio.run(dns.txt(key.record_name))
        except DnsTempError as exc:
            print(f"{key.record_name}: no answer ({exc})")
            status = 1
            continue
        published = [_tags(r).get("p", "") for r in found if _tags(r).get("v") == "DKIM1"]
        if key.public in published:
            print(f"{key.record_name}: published")
        elif published:
            print(f"{key.record_name}: WRONG KEY published (kittiwake dkim show {domain})")
            status = 1
        else:
            print(f"{key.record_name}: not published (kittiwake dkim show {domain})")
            status = 1
    return status


def _tags(record: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            out[name.strip()] = "".join(value.split())
    return out


def _container_signs(conf_dir: str | None) -> bool:
    """The mailet container that will run (the configuration's or the built-in one)
    has a DKIMSign mailet."""
    from kittiwake.config._errors import ConfigError
    from kittiwake.mailet import load_spec

    try:
        spec = load_spec(conf_dir)
    except ConfigError:
        return True  # `kittiwake config check` tells what is wrong with it
    return any(
        m.class_name.rpartition(".")[2] == "DKIMSign" for p in spec.processors for m in p.mailets
    )
