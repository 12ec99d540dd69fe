"""The mail log: one line per event, written in batches.

A line per connection, per message and per delivery is three ``write`` system calls per
message when each goes out at once; measured on the SMTP benchmark that was a fifth of
the server's CPU. Lines are therefore gathered and written together, at the latest
``FLUSH_INTERVAL`` seconds after they were logged; warnings and errors go out at once,
and everything is written before the process exits or forks.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TextIO

__all__ = ["FLUSH_INTERVAL", "BatchingHandler", "FastFormatter", "setup_logging"]

FLUSH_INTERVAL = 0.2  # seconds a line may wait before it is written
_MAX_BATCH = 256  # lines; a full batch is written at once


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes its lines in batches."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._wake = threading.Event()
        self._start_flusher()
        os.register_at_fork(before=self.flush, after_in_child=self._after_fork)

    def _start_flusher(self) -> None:
        thread = threading.Thread(target=self._flush_loop, name="kw-log", daemon=True)
        thread.start()

    def _after_fork(self) -> None:
        self._lines = []
        self._wake = threading.Event()
        self._start_flusher()  # threads do not survive fork

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            full = len(self._lines) >= _MAX_BATCH
        if full or record.levelno >= logging.WARNING:
            self.flush()

    def flush(self) -> None:
        if self.lock is None:
            return
        with self.lock:
            lines, self._lines = self._lines, []
            if lines:
                try:
                    self.stream.write("".join(lines))
                    self.stream.flush()
                except (OSError, ValueError):
                    pass  # stderr gone: nothing useful to do with a log line

    def close(self) -> None:
        self.flush()
        super().close()


class FastFormatter(logging.Formatter):
    """``%(asctime)s %(name)s %(levelname)s %(message)s``, with the date and time
    formatted once per second instead of once per line (``time.strftime`` and
    ``localtime`` were a quarter of the cost of a log line on the event loop).
    Exceptions and stack information are formatted as the standard formatter does."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            # Two threads may both refresh the cache: each writes a correct pair.
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


def setup_logging(level: str) -> None:
    """Log to standard error, batched, at ``level`` (DEBUG, INFO, WARNING...)."""
    # The format shows none of these; skipping them saves a getpid() and a thread lookup
    # per line.
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    # Nor the caller's file and line: without this, every record walks the stack
    # (findCaller), about a sixth of a log line's cost on the event loop.
    logging._srcfile = None
    handler = BatchingHandler(sys.stderr)
    handler.setFormatter(FastFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
