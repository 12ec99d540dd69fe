"""Domain and mailbox names in one canonical form, so that a local domain matches in
both its A-label and U-label forms (RFC 6531 section 3.2, RFC 5890).

Pure functions; no I/O.
"""

from __future__ import annotations

import idna

__all__ = ["InvalidName", "canonical_address", "canonical_domain"]


class InvalidName(ValueError):
    """A domain or address that has no canonical form."""


def canonical_domain(domain: str) -> str:
    """Return the lower-case A-label form of ``domain`` (``Bücher.Example`` ->
    ``xn--bcher-kva.example``).

    A trailing dot is *not* removed: ``example.test.`` is not the local domain
    ``example.test`` for the relay rule, it is refused as a non-local name.

    Raises:
        InvalidName: the name is empty, an IP literal, or not valid IDNA.
    """
    if not domain or domain.startswith("["):
        raise InvalidName(domain)
    if domain.isascii():
        lowered = domain.lower()
        # Fast path: plain ASCII LDH labels need no IDNA processing; an A-label
        # ("xn--") is checked by decoding it, so a bogus one is refused.
        if "xn--" not in lowered:
            return lowered
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidName(domain) from exc


def canonical_address(address: str) -> str:
    """Return ``local@domain`` with the domain canonical and the local part lower-cased.

    Mailbox lookups are case-insensitive, as in James; the local part as the client
    wrote it is kept in the envelope and headers (RFC 5321 section 2.4).

    Raises:
        InvalidName: no ``@``, or the domain has no canonical form.
    """
    local, sep, domain = address.rpartition("@")
    if not sep or not local:
        raise InvalidName(address)
    return f"{local.lower()}@{canonical_domain(domain)}"
