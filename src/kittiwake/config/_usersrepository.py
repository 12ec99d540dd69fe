"""``usersrepository.xml`` (James ``UsersRepository`` configuration).

Read: ``<enableVirtualHosting>``, ``<algorithm>``, ``<hashingMode>``,
``<administratorIds><administratorId>`` (and a lone ``<administratorId>``). Kittiwake
keeps its users in its own store and hashes new passwords with argon2id, so
``algorithm`` and ``hashingMode`` only tell ``kittiwake user import`` how the imported
James hashes were made when a line does not say. Other options (``verifyFailureDelay``,
LDAP settings, ...) are named as not implemented. The root's ``class`` attribute (a James
implementation) is named and ignored.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from kittiwake.auth.james_hashes import UnsupportedAlgorithm, normalize_algorithm
from kittiwake.config._errors import ConfigError, Findings, Invalid, Problem
from kittiwake.config._values import parse_bool
from kittiwake.config._xml import element_text, read_xml
from kittiwake.config.model import UsersRepositoryConfig
from kittiwake.policy.names import InvalidName, canonical_address

__all__ = ["USERSREPOSITORY", "read_usersrepository"]

USERSREPOSITORY = "usersrepository.xml"
_MODES = ("plain", "salted", "legacy", "legacy_salted")


def read_usersrepository(
    path: Path, findings: Findings, default_domain: str = "localhost"
) -> UsersRepositoryConfig:
    """Read ``usersrepository.xml``; bad values go into ``findings``.

    Args:
        default_domain: appended to an administrator id without "@" (no virtual hosting).

    Raises:
        ConfigError: not well-formed, or the root is not ``<usersrepository>``.
    """
    root = read_xml(path, USERSREPOSITORY)
    if root.tag != "usersrepository":
        raise ConfigError(
            Problem(USERSREPOSITORY, f"<{root.tag}>", "the root must be <usersrepository>")
        )
    for name, value in root.attrib.items():
        findings.ignored(f'<usersrepository {name}="{value}">', "kittiwake keeps its own store")
    virtual = True
    algorithm = "PBKDF2-SHA512"
    mode = "plain"
    admin_ids: list[tuple[str, str]] = []
    for child in root:
        where = f"<usersrepository>/<{child.tag}>"
        if child.tag == "administratorIds":
            for inner in child:
                inner_where = f"{where}/<{inner.tag}>"
                if inner.tag != "administratorId":
                    findings.ignored(inner_where)
                    continue
                admin_ids.append((inner_where, _text(inner, inner_where, findings) or ""))
            continue
        text = _text(child, where, findings)
        if text is None:
            continue
        try:
            if child.tag == "enableVirtualHosting":
                virtual = parse_bool(text)
            elif child.tag == "algorithm":
                algorithm = text
            elif child.tag == "hashingMode":
                if text.lower() not in _MODES:
                    raise Invalid(f"{text!r} is not one of {', '.join(_MODES)}")
                mode = text.lower()
            elif child.tag == "administratorId":
                admin_ids.append((where, text))
            else:
                findings.ignored(where)
        except Invalid as exc:
            findings.error(where, str(exc))
    try:
        normalize_algorithm(algorithm, mode)
    except UnsupportedAlgorithm as exc:
        findings.error("<usersrepository>/<algorithm>", str(exc))
    admins: set[str] = set()
    for where, name in admin_ids:
        if not name:
            findings.error(where, "empty")
            continue
        full = name if "@" in name or virtual else f"{name}@{default_domain}"
        try:
            admins.add(canonical_address(full))
        except InvalidName:
            findings.error(where, f"{name!r} is not a user name (a full address)")
    return UsersRepositoryConfig(
        virtual_hosting=virtual,
        algorithm=algorithm,
        hashing_mode=mode,
        administrators=frozenset(admins),
    )


def _text(element: ET.Element, where: str, findings: Findings) -> str | None:
    try:
        return element_text(element)
    except Invalid as exc:
        findings.error(where, str(exc))
        return None
