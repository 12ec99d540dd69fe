"""Listening sockets, bound before anything else runs: before worker processes are
forked (they share each socket's accept queue) and before privileges are dropped."""

from __future__ import annotations

import socket

from kittiwake.config.model import Bind, Config, ListenerConfig

from .lmtp import bind_unix_socket

__all__ = ["bind_sockets"]


def bind_socket(cfg: ListenerConfig, bind: Bind) -> socket.socket:
    """A non-blocking listening TCP socket for ``bind``.

    Raises:
        OSError: the address cannot be bound; the message names listener and address.
    """
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((bind.host, bind.port))
        sock.listen(cfg.connection_backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"listener {cfg.name}: cannot bind {bind}: {exc.strerror}"
        ) from exc
    return sock


def bind_sockets(config: Config) -> dict[tuple[int, int], socket.socket]:
    """Every enabled listener's sockets, keyed by (listener index, bind index); a
    listener's Unix-domain sockets (``unix_sockets``) come after its TCP binds.

    Raises:
        OSError: one cannot be bound (those already bound are closed).
    """
    out: dict[tuple[int, int], socket.socket] = {}
    try:
        for li, cfg in enumerate(config.listeners):
            if not cfg.enabled:
                continue
            for bi, bind in enumerate(cfg.binds):
                out[li, bi] = bind_socket(cfg, bind)
            for k, path in enumerate(cfg.unix_sockets):  # LMTP: after the TCP binds
                out[li, len(cfg.binds) + k] = bind_unix_socket(cfg, path)[0]
    except OSError:
        for sock in out.values():
            sock.close()
        raise
    return out
