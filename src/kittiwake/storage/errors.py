"""What a store raises when it cannot answer now (a locked or unreadable file, a lost
database connection): callers catch :data:`STORE_ERRORS` and answer "try again later"
(``454 4.7.0``, ``451``) instead of naming a database driver outside storage/.
A PostgreSQL store adds its driver's base error here."""

from __future__ import annotations

import sqlite3

__all__ = ["STORE_ERRORS"]

#: the exception types that mean "the store failed", not "the code is wrong"
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, OSError)
