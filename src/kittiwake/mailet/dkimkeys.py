"""DKIM signing keys (RFC 6376, RFC 8463), and the DNS records that publish them.

Kittiwake keeps one directory per signing domain under ``DATA/dkim``, one private key
per selector, so that ``kittiwake dkim keygen`` is all an administrator does (no XML):

    DATA/dkim/                             0700
    DATA/dkim/example.com/                 0700  (the A-label form of the domain)
    DATA/dkim/example.com/kittiwake.key    0600  PEM, PKCS#8, RSA or Ed25519

Every key of a domain signs that domain's mail, each with its own DKIM-Signature: an
Ed25519 key beside an RSA one is what RFC 8463 advises in its usage notes (verifiers that do not
know Ed25519 yet still find the RSA signature), and a key rotation is a new selector
published, then the old key file removed (``kittiwake dkim remove``).

Keys are read when a mail needs them (a new key signs at once, as every CLI change
takes effect at once) and cached by file identity and modification time.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from kittiwake._files import write_all
from kittiwake.policy.names import InvalidName, canonical_domain

__all__ = [
    "DkimKey",
    "DkimKeyError",
    "KeyStore",
    "generate_key",
    "key_record",
    "load_private_key",
    "split_txt",
    "valid_domain",
    "valid_selector",
]

#: RFC 8301 section 3.2: signers MUST use at least 1024 bits, SHOULD use 2048
MIN_RSA_BITS = 1024
MAX_RSA_BITS = 4096
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SUFFIX = ".key"


class DkimKeyError(Exception):
    """A key that cannot be made, read or used; the text says why."""


def _labels_ok(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def valid_domain(name: str) -> str:
    """The signing domain ``name`` in its lower-case A-label form (RFC 6376 3.5 ``d=``).

    Raises:
        DkimKeyError: not a host name made of LDH labels (it names a directory: nothing
            like ``..`` or ``/`` gets through).
    """
    try:
        domain = canonical_domain(name.strip().rstrip("."))
    except InvalidName:
        raise DkimKeyError(f"not a valid domain name: {name!r}") from None
    if "." not in domain or not _labels_ok(domain):
        raise DkimKeyError(f"not a valid domain name: {name!r}")
    return domain


def valid_selector(name: str) -> str:
    """A selector (RFC 6376 3.1: dot-separated labels), lower-cased.

    Raises:
        DkimKeyError: anything else.
    """
    selector = name.strip().lower()
    if not _labels_ok(selector):
        raise DkimKeyError(f"not a valid selector: {name!r} (letters, digits, '-' and '.')")
    return selector


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A private key ready for dkimpy, and what to publish for it."""

    #: ``rsa`` or ``ed25519`` (the ``k=`` tag)
    kind: str
    #: dkimpy's form: PEM for RSA, the base64 of the 32-byte seed for Ed25519 (RFC 8463)
    private: bytes
    #: the ``p=`` tag: base64 SubjectPublicKeyInfo (RSA), base64 raw key (Ed25519)
    public: str
    #: RSA modulus bits (0 for Ed25519)
    bits: int = 0
    domain: str = ""
    selector: str = ""
    path: Path | None = None

    @property
    def algorithm(self) -> str:
        """The signature's ``a=`` tag."""
        return "rsa-sha256" if self.kind == "rsa" else "ed25519-sha256"

    @property
    def description(self) -> str:
        return f"rsa-{self.bits}" if self.kind == "rsa" else "ed25519"

    @property
    def record_name(self) -> str:
        """Where verifiers look the key up (RFC 6376 3.6.2.1)."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def record(self) -> str:
        return key_record(self.kind, self.public)


def key_record(kind: str, public: str) -> str:
    """The TXT record's value (RFC 6376 3.6.1)."""
    return f"v=DKIM1; k={kind}; p={public}"


def split_txt(value: str) -> list[str]:
    """``value`` in character-strings of at most 255 bytes (RFC 1035 3.3.14): a 2048-bit
    RSA key does not fit in one; verifiers join them (RFC 6376 3.6.2.2)."""
    data = value.encode("ascii")
    return [data[i : i + 255].decode("ascii") for i in range(0, len(data), 255)]


def _from_private(key: object, password_hint: str = "") -> DkimKey:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(f"an RSA key of {key.key_size} bits (RFC 8301: at least 1024)")
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return DkimKey("rsa", pem, base64.b64encode(spki).decode("ascii"), key.key_size)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return DkimKey("ed25519", base64.b64encode(seed), base64.b64encode(raw).decode("ascii"))
    raise DkimKeyError(f"not an RSA or Ed25519 private key{password_hint}")


def load_private_key(data: bytes, password: bytes | None = None) -> DkimKey:
    """A private key from PEM (PKCS#1 or PKCS#8, encrypted with ``password`` or not), or
    from dkimpy's ``dknewkey`` Ed25519 form (one line: the base64 of the 32-byte seed).

    Raises:
        DkimKeyError: not a usable key, or a wrong or missing password.
    """
    text = data.strip()
    if b"-----BEGIN" not in text:
        try:
            seed = base64.b64decode(text, validate=True)
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise DkimKeyError("not a PEM private key (nor an Ed25519 seed in base64)")
        return _from_private(ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    # an inline <privateKey> comes indented as the XML around it: PEM lines start at 0
    pem = b"\n".join(line.strip() for line in text.splitlines()) + b"\n"
    try:
        key = serialization.load_pem_private_key(pem, password=password or None)
    except TypeError as exc:  # encrypted without a password, or a password for a clear key
        raise DkimKeyError(f"cannot read the private key: {exc}") from None
    except ValueError as exc:
        raise DkimKeyError(f"cannot read the private key: {exc}") from None
    except Exception as exc:  # cryptography's UnsupportedAlgorithm and the like
        raise DkimKeyError(f"cannot read the private key: {exc}") from None
    return _from_private(key)


def generate_key(kind: str, bits: int = 2048) -> tuple[bytes, DkimKey]:
    """A new key: (its PEM for the file, the key).

    Raises:
        DkimKeyError: an unknown kind or an RSA size out of 1024..4096.
    """
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if kind == "rsa":
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise DkimKeyError(f"--bits {bits}: RSA keys of 1024 to 4096 bits (2048 advised)")
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise DkimKeyError(f"unknown algorithm {kind!r} (rsa or ed25519)")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, _from_private(private)


class KeyStore:
    """``DATA/dkim``: the keys of every signing domain."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, tuple[tuple[int, int, int], DkimKey]] = {}
        self._lock = threading.Lock()

    def path(self, domain: str, selector: str) -> Path:
        return self.root / valid_domain(domain) / f"{valid_selector(selector)}{_SUFFIX}"

    def domains(self) -> list[str]:
        try:
            names = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        except FileNotFoundError:
            return []
        return [n for n in names if _labels_ok(n)]

    def selectors(self, domain: str) -> list[str]:
        """The selectors that have a key for ``domain`` (already canonical)."""
        try:
            entries = list(os.scandir(self.root / domain))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for entry in entries:
            name = entry.name
            if name.endswith(_SUFFIX) and _labels_ok(name[: -len(_SUFFIX)]):
                out.append(name[: -len(_SUFFIX)])
        return sorted(out)

    def keys(self, domain: str) -> list[DkimKey]:
        """Every key of ``domain`` (canonical form), by selector; none: not signed.

        Raises:
            DkimKeyError: a key file that cannot be read or used (named).
        """
        return [self.load(domain, s) for s in self.selectors(domain)]

    def load(self, domain: str, selector: str) -> DkimKey:
        """One key, read again only when its file changed.

        Raises:
            DkimKeyError: no such key, or one that cannot be read or used.
        """
        path = self.root / domain / f"{selector}{_SUFFIX}"
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DkimKeyError(f"no key {selector} for {domain} ({path})") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._cache.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DkimKeyError(f"cannot read {path}: {exc.strerror}") from None
        try:
            key = load_private_key(data)
        except DkimKeyError as exc:
            raise DkimKeyError(f"{path}: {exc}") from None
        key = DkimKey(key.kind, key.private, key.public, key.bits, domain, selector, path)
        with self._lock:
            self._cache[path] = (stamp, key)
        return key

    def generate(
        self, domain: str, selector: str, kind: str, bits: int = 2048, *, force: bool = False
    ) -> DkimKey:
        """Make and store a new key (mode 0600, written whole and fsynced).

        Raises:
            DkimKeyError: a bad name, algorithm or size, or a key that exists already
                (unless ``force``).
        """
        domain, selector = valid_domain(domain), valid_selector(selector)
        path = self.root / domain / f"{selector}{_SUFFIX}"
        if path.exists() and not force:
            raise DkimKeyError(f"{path} exists already (--force replaces it)")
        pem, key = generate_key(kind, bits)
        owner = _data_owner(self.root.parent)
        for directory in (self.root, path.parent):
            if not directory.is_dir():
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                _chown(directory, owner)
        _write_key(path, pem, force=force, owner=owner)
        return DkimKey(key.kind, key.private, key.public, key.bits, domain, selector, path)

    def remove(self, domain: str, selector: str) -> Path:
        """Delete a key; its domain's directory goes with its last key.

        Raises:
            DkimKeyError: no such key.
        """
        path = self.path(domain, selector)
        try:
            path.unlink()
        except FileNotFoundError:
            raise DkimKeyError(f"no key {selector} for {domain} ({path})") from None
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only if empty
        return path


def _data_owner(data: Path) -> tuple[int, int] | None:
    """Run as root on a DATA that belongs to kittiwake's user (after a first start), the
    new files must be that user's, or the server could not read them until a restart."""
    if os.geteuid() != 0:
        return None
    try:
        st = data.stat()
    except FileNotFoundError:
        return None
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def _chown(path: Path, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.chown(path, *owner)


def _write_key(path: Path, pem: bytes, *, force: bool, owner: tuple[int, int] | None) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            write_all(fd, pem)  # a bare os.write may write less than all
            os.fsync(fd)
        finally:
            os.close(fd)
        _chown(tmp, owner)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if another keygen made it meanwhile
            except FileExistsError:
                raise DkimKeyError(f"{path} exists already (--force replaces it)") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
