"""The standard matchers, by their James names.

Each answers with the recipients it matches: all of them (a condition on the mail),
some of them (a condition on each recipient: the mail is split), or none.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from kittiwake.mailet.api import Mail, MailetConfig, MailetError, Matcher
from kittiwake.policy.names import InvalidName, canonical_address, canonical_domain
from kittiwake.policy.networks import InvalidNetwork, Network, parse_networks

__all__ = ["MATCHERS", "SENT_BY_MAILET"]

#: the attribute that marks a mail made by a mailet (James ``SentByMailet``)
SENT_BY_MAILET = "org.apache.james.SentByMailet"
_NONE: tuple[str, ...] = ()


def _domain(address: str) -> str:
    _, at, domain = address.rpartition("@")
    if not at:
        return ""
    try:
        return canonical_domain(domain)
    except InvalidName:
        return domain.lower()


def _canon(address: str) -> str:
    try:
        return canonical_address(address)
    except InvalidName:
        return address.lower()


def _addresses(condition: str | None, what: str) -> frozenset[str]:
    if not condition:
        raise MailetError(f"{what} needs a list of addresses after '='")
    return frozenset(_canon(a) for a in re.split(r"[,\s]+", condition) if a)


class All(Matcher):
    def match(self, mail: Mail) -> Collection[str]:
        return mail.recipients


class RecipientIsLocal(Matcher):
    def match(self, mail: Mail) -> Collection[str]:
        is_local = self.context.is_local_email
        return [r for r in mail.recipients if is_local(r)]


class HostIsLocal(Matcher):
    def match(self, mail: Mail) -> Collection[str]:
        is_local = self.context.is_local_server
        return [r for r in mail.recipients if is_local(_domain(r))]


class RecipientIs(Matcher):
    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.addresses = _addresses(config.condition, "RecipientIs")

    def match(self, mail: Mail) -> Collection[str]:
        return [r for r in mail.recipients if _canon(r) in self.addresses]


class SenderIs(Matcher):
    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.addresses = _addresses(config.condition, "SenderIs")

    def match(self, mail: Mail) -> Collection[str]:
        if mail.sender is not None and _canon(mail.sender) in self.addresses:
            return mail.recipients
        return _NONE


class SenderIsNull(Matcher):
    def match(self, mail: Mail) -> Collection[str]:
        return mail.recipients if not mail.sender else _NONE


class _Network(Matcher):
    inside = True

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        from kittiwake.config._values import HostLookup

        try:
            self.networks: tuple[Network, ...] = parse_networks(
                config.condition or "", HostLookup().resolve
            )
        except InvalidNetwork as exc:
            raise MailetError(str(exc)) from None

    def match(self, mail: Mail) -> Collection[str]:
        import ipaddress

        try:
            ip = ipaddress.ip_address(mail.remote_addr)
        except ValueError:
            found = False
        else:
            found = any(ip in net for net in self.networks)
        return mail.recipients if found == self.inside else _NONE


class RemoteAddrInNetwork(_Network):
    inside = True


class RemoteAddrNotInNetwork(_Network):
    inside = False


class SMTPAuthSuccessful(Matcher):
    def match(self, mail: Mail) -> Collection[str]:
        return mail.recipients if mail.auth_user else _NONE


class SMTPAuthUserIs(Matcher):
    def init(self, config: MailetConfig) -> None:
        super().init(config)
        if not config.condition:
            raise MailetError("SMTPAuthUserIs needs a list of users after '='")
        self.users = frozenset(u.lower() for u in re.split(r"[,\s]+", config.condition) if u)

    def match(self, mail: Mail) -> Collection[str]:
        user = (mail.auth_user or "").lower()
        if user and (user in self.users or user.partition("@")[0] in self.users):
            return mail.recipients
        return _NONE


class SMTPIsAuthNetwork(Matcher):
    def match(self, mail: Mail) -> Collection[str]:
        return mail.recipients if mail.auth_network else _NONE


class HasHeader(Matcher):
    """``HasHeader=name`` or ``HasHeader=name=value``; several joined with ``+``
    (all must be present, as James)."""

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        if not config.condition:
            raise MailetError("HasHeader needs a header name after '='")
        self.conditions = []
        for part in config.condition.split("+"):
            name, eq, value = part.partition("=")
            self.conditions.append((name.strip(), value.strip() if eq else None))

    def match(self, mail: Mail) -> Collection[str]:
        msg = mail.message
        for name, value in self.conditions:
            values = msg.get_all(name)
            if not values or (value is not None and value not in values):
                return _NONE
        return mail.recipients


class HasMailAttribute(Matcher):
    def init(self, config: MailetConfig) -> None:
        super().init(config)
        self.attribute = (config.condition or "").strip()

    def match(self, mail: Mail) -> Collection[str]:
        return mail.recipients if self.attribute in mail.attributes else _NONE


_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1 << 20, "mb": 1 << 20}


class SizeGreaterThan(Matcher):
    def init(self, config: MailetConfig) -> None:
        super().init(config)
        m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", config.condition or "")
        if m is None or m.group(2).lower() not in _UNITS:
            raise MailetError(f"SizeGreaterThan: {config.condition!r} is not a size (1k, 2m)")
        self.limit = int(m.group(1)) * _UNITS[m.group(2).lower()]

    def match(self, mail: Mail) -> Collection[str]:
        return mail.recipients if mail.size > self.limit else _NONE


class RelayLimit(Matcher):
    """Matches when the message has at least ``n`` Received fields (a loop)."""

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        try:
            self.limit = int(config.condition or "30")
        except ValueError:
            raise MailetError(f"RelayLimit: {config.condition!r} is not a number") from None

    def match(self, mail: Mail) -> Collection[str]:
        return mail.recipients if mail.message.count("received") >= self.limit else _NONE


class AtMost(Matcher):
    """``AtMost=n`` (or ``AtMost=name:n``): matches the first ``n`` times a mail comes
    by, counted in a mail attribute (James's retry cap with RemoteDelivery)."""

    def init(self, config: MailetConfig) -> None:
        super().init(config)
        cond = (config.condition or "").strip()
        name, colon, count = cond.rpartition(":")
        self.attribute = f"AT_MOST_EXECUTIONS{'-' + name if colon else ''}"
        try:
            self.limit = int(count)
            if self.limit < 1:
                raise ValueError
        except ValueError:
            raise MailetError(f"AtMost: {cond!r} is not a positive number") from None

    def match(self, mail: Mail) -> Collection[str]:
        seen = int(mail.attributes.get(self.attribute, 0))
        if seen >= self.limit:
            return _NONE
        mail.attributes[self.attribute] = seen + 1
        return mail.recipients


class IsSingleRecipient(Matcher):
    def match(self, mail: Mail) -> Collection[str]:
        return mail.recipients if len(mail.recipients) == 1 else _NONE


class SentByMailet(Matcher):
    def match(self, mail: Mail) -> Collection[str]:
        return mail.recipients if mail.attributes.get(SENT_BY_MAILET) else _NONE


MATCHERS: dict[str, type[Matcher]] = {
    cls.__name__: cls
    for cls in (
        All,
        RecipientIsLocal,
        HostIsLocal,
        RemoteAddrInNetwork,
        RemoteAddrNotInNetwork,
        SMTPAuthSuccessful,
        SMTPAuthUserIs,
        SMTPIsAuthNetwork,
        SenderIsNull,
        SenderIs,
        RecipientIs,
        HasHeader,
        HasMailAttribute,
        SizeGreaterThan,
        RelayLimit,
        AtMost,
        IsSingleRecipient,
        SentByMailet,
    )
}
