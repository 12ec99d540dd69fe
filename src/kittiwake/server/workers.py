"""Several worker processes, to use every core (issue 2, point 6).

The supervisor binds every listening socket, then forks the workers: they share each
socket's accept queue, so the kernel spreads connections over them. Each worker owns
its own spool slot (the spool is built for several processes), and connection limits
are counted in shared memory (``limits.SharedLimits``). The supervisor forwards SIGTERM
and SIGINT, restarts a worker that dies unexpectedly, and exits when all have stopped.
A worker dies with its supervisor (PR_SET_PDEATHSIG), so a SIGKILL of the supervisor
leaves no orphan holding the ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from pathlib import Path

from kittiwake.config.model import Config
from kittiwake.delivery.maildir import MaildirOwner

from .limits import SharedLimits
from .lmtp import remove_unix_socket, unix_socket_files
from .sockets import bind_sockets
from .tls import TlsContexts

__all__ = ["supervise"]

log = logging.getLogger("kittiwake")

_PR_SET_PDEATHSIG = 1
_RESTART_BACKOFF = 1.0  # seconds before restarting a worker that died


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def supervise(
    config: Config,
    data_dir: Path,
    workers: int,
    *,
    sockets: dict[tuple[int, int], socket.socket] | None = None,
    tls: TlsContexts | None = None,
    maildir: MaildirOwner | None = None,
) -> int:
    """Run ``workers`` worker processes until SIGTERM/SIGINT; SIGHUP (certificate
    reload) is passed on to every worker.

    Args:
        sockets: bound already (before privileges were dropped); None: bind them here.
        tls: the listeners' TLS contexts, loaded already; None: each worker loads them.
        maildir: owner and mode of delivered mail.

    Returns:
        0 when every worker stopped cleanly, else 1.
    """
    from .runtime import serve_forever

    if sockets is None:
        sockets = bind_sockets(config)
    unix_files = unix_socket_files(sockets.values())  # LMTP's; removed when all stop
    limits = SharedLimits(len(config.listeners), workers)
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False
    status = 0

    def spawn(index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with_parent()
                if os.getppid() != parent:  # the supervisor died before prctl
                    os._exit(1)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop takes it
                limits.bind_worker(index)
                serve_forever(config, data_dir, sockets, limits, tls, maildir)
                code = 0
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index
        log.info("worker %d started (pid %d)", index, pid)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def reload(signum: int, _frame: object) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, reload)
    for index in range(workers):
        spawn(index)
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
            continue
        if pid not in children:
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        limits.reset_worker(index)
        if stopping:
            # A worker still starting when the signal came dies of it: nothing was open.
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                status = 1
            continue
        log.error("worker %d (pid %d) exited with %d; restarting it", index, pid, code)
        time.sleep(_RESTART_BACKOFF)
        if not stopping:
            spawn(index)
    for sock in sockets.values():
        sock.close()
    for path, inode in unix_files:
        remove_unix_socket(path, inode)
    return status
