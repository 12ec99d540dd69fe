"""Each listener's TLS context at start, and certificate reloads (SIGHUP,
``kittiwake cert reload``) that drop no connection.

A listener of the embedded default (``TlsConfig.self_signed``) uses ``DATA/tls/<helloName>
.key`` and ``.crt``, generated on first start and said so in the log. At start and at
every reload, a certificate that has expired or expires within 14 days is logged as a
warning. A reload that fails (a missing file, a key that does not match) is logged as an
error and the running certificate stays in use.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from pathlib import Path

from kittiwake.config.model import ListenerConfig, TlsConfig
from kittiwake.tls import (
    Identity,
    SelfSigned,
    TlsError,
    build_context,
    expiry_warning,
    generate_self_signed,
    reload_context,
)

__all__ = ["TlsContexts", "TlsStartError"]

log = logging.getLogger("kittiwake.tls")


class TlsStartError(Exception):
    """A listener's TLS cannot be set up; the message names listener, element, reason."""


class TlsContexts:
    """The TLS contexts of every listener that has ``<tls>``, by listener name."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.contexts: dict[str, ssl.SSLContext] = {}
        self._configs: dict[str, TlsConfig] = {}

    def build(self, listeners: tuple[ListenerConfig, ...]) -> None:
        """Build the context of each enabled listener with TLS.

        Raises:
            TlsStartError: a certificate cannot be loaded (the message says which and why).
        """
        for cfg in listeners:
            if not cfg.enabled or cfg.tls is None:
                continue
            tls = self._resolve(cfg)
            try:
                ctx, identity = build_context(tls)
            except TlsError as exc:
                raise TlsStartError(
                    f"listener {cfg.name}: <tls>/<{exc.element}>: {exc.reason}"
                ) from None
            self.contexts[cfg.name] = ctx
            self._configs[cfg.name] = tls
            mode = "STARTTLS" if tls.starttls else "implicit TLS"
            log.info(
                "listener %s: %s with %s (%s, valid until %s)",
                cfg.name,
                mode,
                identity.source,
                identity.subject,
                f"{identity.not_after:%Y-%m-%d}",
            )
            _warn_expiry(cfg.name, identity)

    def context(self, name: str) -> ssl.SSLContext | None:
        return self.contexts.get(name)

    def reload(self) -> int:
        """Reload every certificate in place; open connections keep theirs.

        Returns:
            how many listeners failed to reload (each logged as an error).
        """
        failed = 0
        for name, tls in self._configs.items():
            try:
                identity = reload_context(self.contexts[name], tls)
            except TlsError as exc:
                failed += 1
                log.error(
                    "listener %s: certificate reload failed, the old one stays in use: "
                    "<tls>/<%s>: %s",
                    name,
                    exc.element,
                    exc.reason,
                )
                continue
            log.info(
                "listener %s: certificate reloaded from %s (%s, valid until %s)",
                name,
                identity.source,
                identity.subject,
                f"{identity.not_after:%Y-%m-%d}",
            )
            _warn_expiry(name, identity)
        return failed

    def _resolve(self, cfg: ListenerConfig) -> TlsConfig:
        """The embedded default's self-signed pair, made on first start."""
        tls = cfg.tls
        assert tls is not None
        if not tls.self_signed:
            return tls
        pair = SelfSigned(self.data_dir, cfg.hello_name)
        if not pair.exists():
            generate_self_signed(pair.key, pair.cert, cfg.hello_name)
            log.warning(
                "generated a self-signed certificate for %s in %s (clients will not trust "
                "it; give a real one in <tls>, see the README)",
                cfg.hello_name,
                pair.cert.parent,
            )
        return dataclasses.replace(
            tls, private_key=str(pair.key), certificates=str(pair.cert), self_signed=False
        )


def _warn_expiry(name: str, identity: Identity) -> None:
    warning = expiry_warning(identity)
    if warning is not None:
        log.warning("listener %s: %s", name, warning)
