"""James password hashes: known values computed by James's own Algorithm class (its
AlgorithmTest: password hashed with salt "salt"), then kittiwake's stored form."""

from __future__ import annotations

import pytest

from kittiwake.auth import james_hashes as jh
from kittiwake.auth.passwords import hash_password, needs_rehash, verify_password

# (algorithm as James names it, password, hash exactly as James returns it)
JAMES = [
    ("SHA-1", "myPassword", "VBPuJHI7uixaa6LQGWx4s+5GKNE=\r\n"),
    ("SHA-1", "", "2jmj7l5rSw0yVb/vlWAYkK/YBwk=\r\n"),
    ("SHA-1/legacy", "myPassword", "VBPuJHI7uixaa6LQGWx4s+5G"),
    ("SHA-1/legacy", "a", "hvfkN/qlp/zhXR3cuerq6jd2"),
    (
        "SHA-512",
        "myPassword",
        "RQrQPbk5XfzLXgMGb9fxbPuith4j1RY3NxRHFFkFLskKmkvzoVHmAOqKrtNuO4who9OKsXBYOXSd\r\n"
        "Ew2kOA8USA==\r\n",
    ),
    (
        "SHA-512/legacy",
        "a",
        "H0D8ktokFpR1CXnubPWC8tXX0o4YM13gWrxU0FYOD1MChgxlK/CNVgJSql50IQVG82n7u86MEs/H\r\nlXsmUv6a",
    ),
    (
        "PBKDF2",
        "myPassword",
        "Ag2g49zxor0w11yguLUMQ7EKBokU81LkvLyDqubWtQq7R5V21HVqZ+CEjEQxBLGfi35RFyesJtxb\r\n"
        "L5/VRCpI3g==\r\n",
    ),
    (
        "PBKDF2-10",
        "a",
        "i1iWZzuaqsFotT998+stRqyrcyUrZ0diBJf9RJ52mUo0a074ykh8joWdrxhEsyd2Fh2DNO38TWxC\r\n"
        "KkIK6taLxA==\r\n",
    ),
    ("PBKDF2-10-128", "otherPassword", "e4+swbwo1s3X665INoRVsA==\r\n"),
    (
        "PBKDF2-SHA512",
        "myPassword",
        "uakKCXTKBGN1JxbE0bAuLKn8Bzkf+NU9J+2l50tqJlZYzXNe86EJ2jEXkI1Fp1uy2sXLfOrSxCFT\r\n"
        "/fQRPxgZmw==\r\n",
    ),
    (
        "PBKDF2-SHA512",
        "",
        "+TC9GqSNLoOwICQGAw7WSxYWHE4lKwjRm1RTHnKxfcOA66mou8G8/h2sCDiLLFxqBU7E2wHh2bo4\r\n"
        "LEqh8dwFdQ==\r\n",
    ),
]


@pytest.mark.parametrize("algorithm, password, expected", JAMES)
def test_same_digest_as_james(algorithm: str, password: str, expected: str) -> None:
    algo = jh.normalize_algorithm(algorithm)
    assert jh.digest(algo, password, "salt") == "".join(expected.split())


@pytest.mark.parametrize("algorithm, password, expected", JAMES)
def test_import_then_verify(algorithm: str, password: str, expected: str) -> None:
    stored = jh.to_stored(algorithm, "salt", expected)
    assert stored.startswith("$james$")
    assert verify_password(stored, password)
    assert not verify_password(stored, password + "x")
    assert needs_rehash(stored)


def test_salted_modes_prepend_the_user_name() -> None:
    import base64
    import hashlib

    want = base64.b64encode(hashlib.sha256(b"alice@a.testpw").digest()).decode()
    assert jh.digest("SHA-256/salted", "pw", "alice@a.test") == want
    legacy = base64.b64encode(hashlib.sha256(b"alice@a.testpw").digest()[:30]).decode()
    assert jh.digest("SHA-256/legacy_salted", "pw", "alice@a.test") == legacy


def test_repository_hashing_mode_is_the_default_mode() -> None:
    assert jh.normalize_algorithm("SHA-1", "legacy") == "SHA-1/legacy"
    assert jh.normalize_algorithm("SHA-1/salted", "legacy") == "SHA-1/salted"
    assert jh.normalize_algorithm("sha-512/PLAIN") == "sha-512/plain"


def test_latin1_like_java() -> None:
    # Java's getBytes(ISO_8859_1) turns a character outside Latin-1 into "?".
    assert jh.digest("SHA-1/plain", "€", "") == jh.digest("SHA-1/plain", "?", "")


@pytest.mark.parametrize(
    "algorithm",
    [
        "NOPE-1",
        "PBKDF2-bad",
        "PBKDF2-",
        "PBKDF2--1",
        "PBKDF2-0",
        "PBKDF2-1-0",
        "SHA-1/weird",
        "/plain",
        "SHAKE128",
    ],
)
def test_unsupported(algorithm: str) -> None:
    with pytest.raises(jh.UnsupportedAlgorithm):
        jh.normalize_algorithm(algorithm)


def test_not_base64_refused() -> None:
    with pytest.raises(ValueError, match="Base64"):
        jh.to_stored("SHA-1", "salt", "not*base64")


def test_damaged_stored_hash_never_matches() -> None:
    assert not verify_password("$james$SHA-1/plain$!!$x", "")
    assert not verify_password("garbage", "")


def test_argon2_is_current() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "s3cret")
    assert not verify_password(stored, "S3cret")
    assert not needs_rehash(stored)
    assert needs_rehash("garbage")
