"""``kittiwake.xml``: settings that are kittiwake's own (James has no equivalent).

```xml
<kittiwake>
  <user>kittiwake</user>            <!-- run as this user when started as root -->
  <group>kittiwake</group>          <!-- and this group (default: the user's own) -->
  <maildir uid="vmail" gid="vmail" mode="0660"/>   <!-- what Dovecot expects -->
  <tlsHandshakeTimeout>30</tlsHandshakeTimeout>    <!-- seconds -->
  <quota storage="1G" messages="0" tempfail="false"/>  <!-- per mailbox, Maildir++ -->
  <spoolSync>filesystem</spoolSync> <!-- or "file": see below -->
</kittiwake>
```

``<user>`` and ``<group>`` are names, looked up at start (a missing user stops the start
with a clear message). ``<maildir>``'s ``uid`` and ``gid`` are names or numbers, looked
up here; ``mode`` is octal and must keep read and write for the owner.

``<quota>``: the default limit of every mailbox (``docs/quota.md``): ``storage`` a
size as Dovecot's ``quota_rule`` reads it (``512M``, ``1G``; a plain number is KiB;
``0`` or ``unlimited``: none), ``messages`` a count (0: none); ``tempfail="true"``
makes over quota a temporary LMTP failure (452 4.2.2, Dovecot's
``quota_full_tempfail``) instead of 552 5.2.2.

``<spoolSync>``: how a group commit makes the accepted messages durable before their
``250``. ``filesystem`` (the default): one ``syncfs(2)`` for the whole batch, the
cheapest, but it also waits for anything else dirty on the filesystem of ``DATA/spool``;
``file``: an ``fsync`` per message file, for a spool that shares a busy filesystem
(``kittiwake.queue.spool`` explains both).
"""

from __future__ import annotations

import grp
import pwd
from pathlib import Path
from typing import Any

from kittiwake.config._errors import ConfigError, Findings, Invalid, Problem
from kittiwake.config._values import parse_bool, parse_int, parse_size
from kittiwake.config._xml import element_text, note_attributes, read_xml

__all__ = ["FILE", "read_kittiwake"]

FILE = "kittiwake.xml"
#: ``<spoolSync>``'s values (kittiwake.queue.spool.SYNC_MODES; the config layer reads
#: files and imports nothing from the layers that use it)
SPOOL_SYNC_MODES = ("filesystem", "file")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-$")


def _account(text: str, what: str) -> str:
    if not text or not set(text) <= _NAME_CHARS or text.startswith("-"):
        raise Invalid(f"{text!r} is not a {what} name")
    return text


def _id(text: str, kind: str) -> int:
    """A uid or gid given as a number or a name."""
    if text.isdigit():
        return parse_int(text, 0, 2**31 - 1)
    try:
        if kind == "uid":
            return pwd.getpwnam(text).pw_uid
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise Invalid(f"no {'user' if kind == 'uid' else 'group'} named {text!r}") from None


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise Invalid(f"{text!r} is not an octal mode such as 0640") from None
    if not 0 <= mode <= 0o777:
        raise Invalid(f"{text} is not a file mode (0000..0777; no setuid, setgid or sticky)")
    if mode & 0o600 != 0o600:
        raise Invalid(f"{text}: the owner must keep read and write (0600)")
    if mode & 0o002:
        raise Invalid(f"{text}: mail must not be writable by everyone")
    return mode


def read_kittiwake(path: Path, findings: Findings) -> dict[str, Any]:
    """The ``ServerOptions`` fields ``kittiwake.xml`` sets.

    Raises:
        ConfigError: not well-formed, or the root is not ``<kittiwake>``.
    """
    root = read_xml(path, FILE)
    if root.tag != "kittiwake":
        raise ConfigError(Problem(FILE, f"<{root.tag}>", "the root must be <kittiwake>"))
    note_attributes(root, "<kittiwake>", findings)
    out: dict[str, Any] = {}
    for child in root:
        where = f"<kittiwake>/<{child.tag}>"
        try:
            if child.tag == "user":
                note_attributes(child, where, findings)
                out["user"] = _account(element_text(child), "user")
            elif child.tag == "group":
                note_attributes(child, where, findings)
                out["group"] = _account(element_text(child), "group")
            elif child.tag == "tlsHandshakeTimeout":
                note_attributes(child, where, findings)
                out["tls_handshake_timeout"] = float(parse_int(element_text(child), 1, 3600))
            elif child.tag == "maildir":
                note_attributes(child, where, findings, frozenset({"uid", "gid", "mode"}))
                element_text(child)  # no children
                for attr, key in (("uid", "maildir_uid"), ("gid", "maildir_gid")):
                    raw = child.get(attr)
                    if raw is not None:
                        try:
                            out[key] = _id(raw.strip(), attr)
                        except Invalid as exc:
                            findings.error(f"{where}/@{attr}", str(exc))
                raw = child.get("mode")
                if raw is not None:
                    try:
                        out["maildir_mode"] = _mode(raw.strip())
                    except Invalid as exc:
                        findings.error(f"{where}/@mode", str(exc))
            elif child.tag == "spoolSync":
                note_attributes(child, where, findings)
                mode = element_text(child).strip()
                if mode not in SPOOL_SYNC_MODES:
                    raise Invalid(f"{mode!r} is not one of: {', '.join(SPOOL_SYNC_MODES)}")
                out["spool_sync"] = mode
            elif child.tag == "quota":
                _quota(child, where, findings, out)
            else:
                findings.ignored(where)
        except Invalid as exc:
            findings.error(where, str(exc))
    return out


def _quota(child: Any, where: str, findings: Findings, out: dict[str, Any]) -> None:
    note_attributes(child, where, findings, frozenset({"storage", "messages", "tempfail"}))
    element_text(child)  # no children
    readers: dict[str, tuple[str, Any]] = {
        "storage": ("quota_storage", parse_size),
        "messages": ("quota_messages", lambda t: parse_int(t, 0, 2**62)),
        "tempfail": ("quota_tempfail", parse_bool),
    }
    for attr, (key, parse) in readers.items():
        raw = child.get(attr)
        if raw is not None:
            try:
                out[key] = parse(raw.strip())
            except Invalid as exc:
                findings.error(f"{where}/@{attr}", str(exc))
