"""Keys under which domains and users are stored, and the file-system safety rules
that every such name obeys.

A domain and a user's local part become directory names (``DATA/mail/<domain>/<local>/``),
so a stored name must be harmless as a path component: no ``/``, no NUL, no leading ``.``
(no ``.``, ``..`` or hidden directory), and short enough for one component (255 bytes).
Every store and the Maildir writer go through these functions, so a name that passed
here is safe to join onto a path.
"""

from __future__ import annotations

import re
from functools import lru_cache

from kittiwake.policy.names import InvalidName, canonical_address, canonical_domain

__all__ = ["InvalidName", "domain_key", "mailbox_parts", "user_key"]

#: bytes in one path component on every file system we care about (ext4, xfs, tmpfs)
_MAX_COMPONENT = 255
#: a user name is at most this many characters, the whole address
MAX_USERNAME = 255
# Control characters are legal in neither a domain nor an unquoted local part, and they
# make directory listings and log lines misleading; "/" and "\\" are path separators.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def _safe_component(part: str, whole: str) -> None:
    if (
        not part
        or part[0] == "."
        or _UNSAFE.search(part) is not None
        or len(part.encode("utf-8", "surrogateescape")) > _MAX_COMPONENT
    ):
        raise InvalidName(whole)


def _check_domain(key: str, whole: str) -> None:
    _safe_component(key, whole)
    # "a..b" and "a.b." are not host names; a trailing dot would also make
    # "example.test." a second spelling of a local domain (policy/names.py refuses it).
    if ".." in key or key[-1] == ".":
        raise InvalidName(whole)


# Both keys are pure functions of their argument, asked for several times per message
# (RCPT, verifyIdentity, delivery): cached, they cost a dict lookup. Bounded, as the
# names come from clients. A name that raises is not cached (and stays refused).
@lru_cache(maxsize=4096)
def domain_key(domain: str) -> str:
    """Return the stored form of ``domain``: its canonical A-label form, checked safe.

    Args:
        domain: a domain as given by a user or a client, any case, U- or A-labels.

    Returns:
        The lower-case A-label form (``Bücher.Example`` -> ``xn--bcher-kva.example``).

    Raises:
        InvalidName: no canonical form, or unsafe as a directory name.
    """
    key = canonical_domain(domain)
    _check_domain(key, domain)
    return key


@lru_cache(maxsize=4096)
def user_key(username: str) -> str:
    """Return the stored form of a user name (a full address ``local@domain``).

    The rules: exactly one canonical form (local part lower-cased, domain as an A-label),
    at most 255 characters, and both parts safe as directory names (no ``/``, no NUL or
    other control character, no leading ``.``; so never ``.`` or ``..``).

    Args:
        username: the address as given.

    Returns:
        The canonical address.

    Raises:
        InvalidName: not an address, too long, or unsafe as a path.
    """
    key = canonical_address(username)
    if len(key) > MAX_USERNAME:
        raise InvalidName(username)
    local, _, domain = key.rpartition("@")
    _safe_component(local, username)
    _check_domain(domain, username)
    return key


def mailbox_parts(mailbox: str) -> tuple[str, str]:
    """Split a canonical mailbox address into ``(domain, local)`` directory names.

    Args:
        mailbox: a name that :func:`user_key` returns unchanged.

    Returns:
        ``(domain, local)``.

    Raises:
        InvalidName: ``mailbox`` is not in canonical form or is unsafe as a path.
    """
    if user_key(mailbox) != mailbox:
        raise InvalidName(mailbox)
    local, _, domain = mailbox.rpartition("@")
    return domain, local
