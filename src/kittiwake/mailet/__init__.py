"""The mailet container: processors, matchers, mailets, mail repositories.

``build_container`` reads ``mailetcontainer.xml`` (or the built-in default) and compiles
it; :class:`~.container.MailetDeliverer` runs it where the spool runner delivers.
See ``docs/mailets.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kittiwake.delivery.maildir import MaildirDeliverer
from kittiwake.mailet.api import Mail, Mailet, MailetConfig, MailetContext, MailetError, Matcher
from kittiwake.mailet.config import ContainerSpec, parse_mailetcontainer, parse_mailetcontainer_text
from kittiwake.mailet.container import Container, ContainerContext, MailetDeliverer
from kittiwake.mailet.default import DEFAULT_MAILETCONTAINER
from kittiwake.mailet.message import Message
from kittiwake.mailet.repository import MailRepository, RepositoryStore
from kittiwake.policy.rewrite import EMPTY_TABLE, RewriteTable

__all__ = [
    "Container",
    "ContainerContext",
    "Mail",
    "MailRepository",
    "Mailet",
    "MailetConfig",
    "MailetContext",
    "MailetDeliverer",
    "MailetError",
    "Matcher",
    "Message",
    "RepositoryStore",
    "build_container",
    "load_spec",
    "mailet_deliverer",
]


def load_spec(conf_dir: str | Path | None) -> ContainerSpec:
    """The container's configuration: ``conf_dir/mailetcontainer.xml`` when it has
    ``<processors>``, the built-in default otherwise.

    Raises:
        ConfigError: the file is unusable.
    """
    if conf_dir is not None:
        path = Path(conf_dir) / "mailetcontainer.xml"
        if path.is_file():
            spec = parse_mailetcontainer(path)
            if spec.processors:
                return spec
    return parse_mailetcontainer_text(DEFAULT_MAILETCONTAINER, "(built-in mailetcontainer.xml)")


def build_container(
    spec: ContainerSpec,
    data_dir: Path,
    *,
    postmaster: str,
    hostname: str,
    is_local_domain: Callable[[str], bool] = lambda d: False,
    mailbox_of: Callable[[str], str | None] = lambda a: None,
    rewrite_table: Callable[[], RewriteTable] = lambda: EMPTY_TABLE,
    conf_dir: str | Path | None = None,
    over_quota: Callable[[str, int], str | None] = lambda a, n: None,
) -> Container:
    """Compile ``spec`` with its services.

    Raises:
        ConfigError: a class that cannot be loaded, a bad parameter.
    """
    context = ContainerContext(
        postmaster=postmaster,
        hostname=hostname,
        repositories=RepositoryStore(data_dir / "repositories"),
        is_local_domain=is_local_domain,
        mailbox_of=mailbox_of,
        rewrite_table=rewrite_table,
        data_dir=data_dir,
        conf_dir=Path(conf_dir) if conf_dir is not None else None,
        over_quota=over_quota,
    )
    return Container(spec, context)


def mailet_deliverer(
    conf_dir: str | Path | None,
    data_dir: Path,
    maildir: MaildirDeliverer,
    store: Any,
    *,
    postmaster: str,
    hostname: str,
) -> MailetDeliverer:
    """The runtime's deliverer: ``mailetcontainer.xml`` (or the default) compiled over
    the store (domains, users, rewrite table: a ``SqliteStore`` or ``MemoryStore``)
    and the Maildir deliverer.

    Raises:
        ConfigError: the container configuration is unusable.
    """
    from kittiwake.server.recipients import LocalResolver

    resolver = LocalResolver(store, store, postmaster)

    def over_quota(address: str, size: int) -> str | None:
        # the context's answer: kept for the batch (the spool runner resolved it)
        mailbox = container.context.mailbox_of(address)
        if mailbox is None:
            return None
        try:
            used = maildir.quota_usage(mailbox)
        except OSError:
            return None  # the delivery itself will tell (deferred)
        return used.describe() if used is not None and not used.allows(size) else None

    container = build_container(
        load_spec(conf_dir),
        data_dir,
        postmaster=resolver.postmaster,
        hostname=hostname,
        is_local_domain=store.contains_domain,
        mailbox_of=resolver.resolve,
        rewrite_table=store.rewrite_table,
        conf_dir=conf_dir,
        over_quota=over_quota,
    )
    return MailetDeliverer(container, maildir, data_dir / "mailet")
