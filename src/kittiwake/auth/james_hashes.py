"""Verifying password hashes exported from Apache James, so that its users can be
imported as they are and re-hashed to argon2id at their next login (as James re-hashes
to its preferred algorithm, ``DefaultUser``).

James (``org.apache.james.user.lib.model.Algorithm``) stores ``algorithm`` and a
Base64 hash per user. The algorithm is ``NAME[/MODE]``:

* ``PBKDF2-SHA512[-iterations[-keysize]]``: PBKDF2 with HMAC-SHA512, 1000 iterations
  and a 512-**bit** key by default (the size goes to ``PBEKeySpec`` in bits; James's
  docs say bytes); ``PBKDF2[-iterations[-keysize]]``: the same with HMAC-SHA1.
* any ``MessageDigest`` name (``SHA-512``, ``SHA-256``, ``SHA-1``, ``MD5``, ...): one
  digest of the password, or of salt + password when the mode is ``salted``.
* MODE: ``plain`` (default), ``salted``, ``legacy``, ``legacy_salted``; when absent,
  the repository's ``hashingMode``. PBKDF2 always uses the salt.

The salt is the user name as James knew it (the full address with virtual hosting).
Digests take the text as ISO-8859-1 (a character outside it becomes ``?``, as Java
does), PBKDF2 takes the password as UTF-8. The hash is MIME Base64 (lines of 76 with
CRLF, compared here without white space); ``legacy`` modes never closed the encoder,
so their hash lacks the last incomplete 3-byte group.

Kittiwake keeps such a hash as ``$james$<algorithm/mode>$<base64 salt>$<hash>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

__all__ = [
    "PREFIX",
    "JamesHash",
    "UnsupportedAlgorithm",
    "digest",
    "is_james_hash",
    "parse_stored",
    "to_stored",
    "verify",
]

PREFIX = "$james$"
_MODES = ("plain", "salted", "legacy", "legacy_salted")
_PBKDF2_DEFAULTS = (1000, 512)


class UnsupportedAlgorithm(ValueError):
    """An algorithm name or mode kittiwake cannot compute."""


@dataclass(frozen=True, slots=True)
class JamesHash:
    """A James password hash with what is needed to check it."""

    algorithm: str  # NAME/mode, the mode always explicit
    salt: str  # the user name James salted with
    hash: str  # Base64, white space removed

    def __repr__(self) -> str:
        return f"JamesHash({self.algorithm!r}, salt={self.salt!r})"


def normalize_algorithm(algorithm: str, default_mode: str = "plain") -> str:
    """``NAME/mode`` with the mode explicit and lower-case; checks that it computes.

    Raises:
        UnsupportedAlgorithm: unknown digest, bad PBKDF2 numbers, or unknown mode.
    """
    name, slash, mode = algorithm.strip().partition("/")
    mode = (mode if slash else default_mode).lower()
    if mode not in _MODES:
        raise UnsupportedAlgorithm(f"{algorithm!r}: hashing mode must be one of {_MODES}")
    if not name:
        raise UnsupportedAlgorithm(f"{algorithm!r}: no algorithm name")
    _hasher(name)  # raises when it cannot compute
    return f"{name}/{mode}"


def _pbkdf2_parameters(name: str, first: int) -> tuple[int, int]:
    parts = name.split("-")
    try:
        iterations = int(parts[first]) if len(parts) > first else _PBKDF2_DEFAULTS[0]
        bits = int(parts[first + 1]) if len(parts) > first + 1 else _PBKDF2_DEFAULTS[1]
    except ValueError:
        raise UnsupportedAlgorithm(f"{name!r}: iterations and key size are numbers") from None
    if iterations <= 0 or bits < 8 or len(parts) > first + 2:
        raise UnsupportedAlgorithm(f"{name!r}: bad iterations or key size")
    return iterations, bits


def _hasher(name: str) -> tuple[str, str, int, int]:
    """(kind, hashlib name, iterations, key bits) for an algorithm name."""
    upper = name.upper()
    if upper.startswith("PBKDF2-SHA512"):
        return ("pbkdf2", "sha512", *_pbkdf2_parameters(upper, 2))
    if upper.startswith("PBKDF2"):
        return ("pbkdf2", "sha1", *_pbkdf2_parameters(upper, 1))
    # Java MessageDigest names: "SHA-256" is hashlib "sha256", "SHA3-256" "sha3_256",
    # "SHA" an alias of SHA-1.
    lowered = name.lower()
    py = {"sha": "sha1"}.get(lowered) or (
        lowered.replace("-", "_") if lowered.startswith("sha3-") else lowered.replace("-", "")
    )
    if py not in hashlib.algorithms_available or py.startswith("shake"):
        raise UnsupportedAlgorithm(f"{name!r} is not a digest kittiwake knows")
    return ("digest", py, 0, 0)


def digest(algorithm: str, password: str, salt: str) -> str:
    """The Base64 hash James stores for ``password`` (without line breaks).

    Args:
        algorithm: ``NAME/mode`` (see :func:`normalize_algorithm`).
        password: the clear-text password.
        salt: the user name.

    Raises:
        UnsupportedAlgorithm: see :func:`normalize_algorithm`.
    """
    name, _, mode = algorithm.partition("/")
    kind, py, iterations, bits = _hasher(name)
    if kind == "pbkdf2":
        raw = hashlib.pbkdf2_hmac(
            py, password.encode("utf-8"), salt.encode("latin-1", "replace"), iterations, bits // 8
        )
    else:
        text = salt + password if mode in ("salted", "legacy_salted") else password
        raw = hashlib.new(py, text.encode("latin-1", "replace")).digest()
    if mode.startswith("legacy"):
        raw = raw[: len(raw) // 3 * 3]  # the encoder was never closed: last group lost
    return base64.b64encode(raw).decode("ascii")


def verify(stored: JamesHash, password: str) -> bool:
    """True if ``password`` gives ``stored``'s hash (constant-time comparison)."""
    try:
        computed = digest(stored.algorithm, password, stored.salt)
    except UnsupportedAlgorithm:
        return False
    return hmac.compare_digest(computed.encode("ascii"), stored.hash.encode("ascii"))


def to_stored(algorithm: str, salt: str, hash_b64: str, default_mode: str = "plain") -> str:
    """The form kittiwake stores an imported James hash in.

    Raises:
        UnsupportedAlgorithm: the algorithm cannot be computed.
        ValueError: the hash is not Base64, or not as long as the algorithm's.
    """
    compact = "".join(hash_b64.split())
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the hash is not Base64") from None
    algo = normalize_algorithm(algorithm, default_mode)
    want = len(digest(algo, "", ""))
    if len(compact) != want:
        # A hash of another algorithm, or cut: it could never match.
        raise ValueError(f"the hash has {len(compact)} characters; {algo} gives {want}")
    salt_b64 = base64.b64encode(salt.encode("utf-8")).decode("ascii")
    return f"{PREFIX}{algo}${salt_b64}${compact}"


def is_james_hash(stored: str) -> bool:
    return stored.startswith(PREFIX)


def parse_stored(stored: str) -> JamesHash | None:
    """The James hash in kittiwake's stored form, None if ``stored`` is not one."""
    if not stored.startswith(PREFIX):
        return None
    parts = stored[len(PREFIX) :].split("$")
    if len(parts) != 3:
        return None
    algorithm, salt_b64, hash_b64 = parts
    try:
        salt = base64.b64decode(salt_b64, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return JamesHash(algorithm, salt, hash_b64)
