"""Password hashing: argon2id (argon2-cffi), the current OWASP recommendation.

Hashes imported from Apache James (``kittiwake user import``) are verified too
(:mod:`kittiwake.auth.james_hashes`); :func:`needs_rehash` says so, and the session
re-hashes such a user to argon2id at the next successful login, as James re-hashes to
its preferred algorithm.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from kittiwake.auth import james_hashes

__all__ = ["hash_password", "needs_rehash", "verify_password"]

_hasher = PasswordHasher()  # argon2id with the library's maintained defaults


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """True if ``password`` matches ``stored_hash`` (argon2, or an imported James hash)."""
    james = james_hashes.parse_stored(stored_hash)
    if james is not None:
        return james_hashes.verify(james, password)
    if james_hashes.is_james_hash(stored_hash):
        return False  # damaged: never matches
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """The hash is not argon2id with today's parameters: re-hash after a good login."""
    if james_hashes.is_james_hash(stored_hash):
        return True
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True
