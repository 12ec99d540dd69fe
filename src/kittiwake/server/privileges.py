"""Started as root, kittiwake binds its ports and then runs as an unprivileged user.

The user is ``--user`` (or ``KITTIWAKE_USER``), else ``kittiwake.xml``'s ``<user>``, else
``kittiwake``; the group is ``<group>``, else the user's login group; the user's other
groups are kept (so that a Maildir group such as Dovecot's ``vmail`` can be given).
A user that does not exist stops the start with the command that creates it. Naming
``root`` keeps root's privileges (a warning says so): for containers whose root is not
the machine's.

Before the drop, the data directory is handed to that user: DATA itself and everything
in it outside ``mail/`` that is not already theirs (a database created by ``sudo
kittiwake user add``, say), and the Maildir directories (not the messages) down to
``tmp/ new/ cur/``. The user database stays readable by its owner alone (0600).

Not started as root, kittiwake runs as whoever started it and drops nothing.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from kittiwake.config.model import ServerOptions
from kittiwake.delivery.maildir import MaildirOwner

__all__ = [
    "DEFAULT_USER",
    "PrivilegeError",
    "RunAs",
    "drop",
    "maildir_owner",
    "prepare",
    "run_as",
    "share_data_dir",
]

log = logging.getLogger("kittiwake")

DEFAULT_USER = "kittiwake"
_MAILDIR_DEPTH = 4  # mail/<domain>/<local part>/{tmp,new,cur}


class PrivilegeError(Exception):
    """The start cannot go on as configured; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class RunAs:
    """Who kittiwake runs as after the drop."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def run_as(options: ServerOptions, override: str | None = None) -> RunAs | None:
    """The user to drop to, or None when not running as root (nothing to drop).

    Raises:
        PrivilegeError: the user or group does not exist.
    """
    if os.geteuid() != 0:
        if override or options.user:
            log.info(
                "not started as root: running as %s (the configured user applies to root)",
                pwd.getpwuid(os.geteuid()).pw_name,
            )
        return None
    name = override or options.user or DEFAULT_USER
    where = "--user" if override else ("<user> in kittiwake.xml" if options.user else "")
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        hint = f"given by {where}" if where else "the default"
        raise PrivilegeError(
            f"started as root, kittiwake drops to user {name!r} ({hint}), which does not "
            f"exist. Create it: useradd --system --home-dir /var/lib/kittiwake "
            f"--shell /usr/sbin/nologin {name} -- or name an existing user with --user or "
            "<user> in kittiwake.xml"
        ) from None
    gid = pw.pw_gid
    if options.group:
        try:
            gid = grp.getgrnam(options.group).gr_gid
        except KeyError:
            raise PrivilegeError(
                f"<group> in kittiwake.xml names group {options.group!r}, which does not exist"
            ) from None
    groups = tuple(dict.fromkeys([gid, *os.getgrouplist(name, gid)]))
    return RunAs(name, pw.pw_uid, gid, groups)


def maildir_owner(options: ServerOptions, who: RunAs | None) -> MaildirOwner:
    """``<maildir>``'s settings, checked against the user kittiwake will run as.

    Raises:
        PrivilegeError: a uid other than the running user's (only root can give files
            away, and kittiwake does not keep root), or a group the user is not in.
    """
    uid = os.geteuid() if who is None else who.uid
    groups = set(os.getgroups()) | {os.getegid()} if who is None else set(who.groups)
    owner = MaildirOwner(
        -1 if options.maildir_uid is None else options.maildir_uid,
        -1 if options.maildir_gid is None else options.maildir_gid,
        options.maildir_mode,
    )
    if owner.uid not in (-1, uid) and uid != 0:
        raise PrivilegeError(
            f"<maildir uid={owner.uid}> in kittiwake.xml: kittiwake runs as uid {uid} and "
            "cannot give files to another user; run kittiwake as that user (<user>), or "
            "share the Maildirs through a group (<maildir gid=... mode=0660>)"
        )
    if owner.gid != -1 and owner.gid not in groups and uid != 0:
        raise PrivilegeError(
            f"<maildir gid={owner.gid}> in kittiwake.xml: kittiwake's user is not in that "
            "group; add it (usermod -aG GROUP USER)"
        )
    return owner


def prepare(data_dir: Path, who: RunAs, owner: MaildirOwner) -> None:
    """As root, before the drop: make ``data_dir`` the user's (see the module doc)."""
    data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    _own(data_dir, who.uid, who.gid)
    for entry in os.scandir(data_dir):
        path = Path(entry.path)
        if entry.name == "mail" and entry.is_dir(follow_symlinks=False):
            uid = who.uid if owner.uid == -1 else owner.uid
            gid = who.gid if owner.gid == -1 else owner.gid
            _own_tree(path, uid, gid, dirs_only=True, depth=_MAILDIR_DEPTH)
        else:
            _own_tree(path, who.uid, who.gid, dirs_only=False, depth=None)


def _own(path: Path, uid: int, gid: int) -> None:
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.lchown(path, uid, gid)


def _own_tree(path: Path, uid: int, gid: int, *, dirs_only: bool, depth: int | None) -> None:
    if path.is_symlink():
        return  # never follow a link out of DATA
    is_dir = path.is_dir()
    if is_dir or not dirs_only:
        _own(path, uid, gid)
    if not is_dir or depth == 0:
        return
    for entry in os.scandir(path):
        _own_tree(
            Path(entry.path),
            uid,
            gid,
            dirs_only=dirs_only,
            depth=None if depth is None else depth - 1,
        )


def drop(who: RunAs) -> None:
    """Become ``who`` for good (groups, then gid, then uid).

    Raises:
        PrivilegeError: root could be regained (the drop did not take).
    """
    if who.uid == 0:
        log.warning("running as root (user root was asked for): privileges are not dropped")
        return
    os.setgroups(list(who.groups))
    os.setgid(who.gid)
    os.setuid(who.uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - a kernel that lets us back is not one to run on
        raise PrivilegeError("could regain root after dropping privileges")
    log.info("dropped privileges: running as %s (uid %d, gid %d)", who.name, who.uid, who.gid)


def share_data_dir(data_dir: Path, owner: MaildirOwner) -> None:
    """With a Maildir group (``<maildir gid>``), let that group reach ``DATA/mail``:
    DATA gets the group and its search bit (0710), nothing more; everything else in DATA
    keeps its own, private mode."""
    if owner.gid == -1:
        return
    st = os.stat(data_dir)
    if st.st_gid != owner.gid:
        os.chown(data_dir, -1, owner.gid)
    if not st.st_mode & 0o010:
        os.chmod(data_dir, (st.st_mode & 0o7777) | 0o010)
