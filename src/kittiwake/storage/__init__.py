"""Users, domains and recipient rewrites (aliases), and what the server remembers of
its clients (greylisting, rate limits, spam traps, failed AUTHs), behind narrow
interfaces (:mod:`kittiwake.storage.base`).

``SqliteStore`` and the ``Sqlite*Store`` classes are the embedded default;
``MemoryStore`` is the fake for tests.
"""

from kittiwake.storage._names import InvalidName, domain_key, mailbox_parts, user_key
from kittiwake.storage.base import (
    AuthFailureStore,
    DomainStore,
    GreylistStore,
    HookStores,
    RateLimitStore,
    RewriteStore,
    SpamTrapStore,
    UserStore,
)
from kittiwake.storage.errors import STORE_ERRORS
from kittiwake.storage.memory import MemoryStore
from kittiwake.storage.sqlite import SCHEMA_VERSION, SchemaVersionError, SqliteStore
from kittiwake.storage.sqlite_auth import SqliteAuthFailureStore
from kittiwake.storage.sqlite_hooks import (
    SqliteGreylistStore,
    SqliteHookStores,
    SqliteRateLimitStore,
    SqliteSpamTrapStore,
)

__all__ = [
    "SCHEMA_VERSION",
    "STORE_ERRORS",
    "AuthFailureStore",
    "DomainStore",
    "GreylistStore",
    "HookStores",
    "InvalidName",
    "MemoryStore",
    "RateLimitStore",
    "RewriteStore",
    "SchemaVersionError",
    "SpamTrapStore",
    "SqliteAuthFailureStore",
    "SqliteGreylistStore",
    "SqliteHookStores",
    "SqliteRateLimitStore",
    "SqliteSpamTrapStore",
    "SqliteStore",
    "UserStore",
    "domain_key",
    "mailbox_parts",
    "user_key",
]
