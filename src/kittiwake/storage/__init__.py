"""Users, domains and recipient rewrites (aliases) behind narrow interfaces.

``SqliteStore`` is the embedded default; ``MemoryStore`` is the fake for tests.
"""

from kittiwake.storage._names import InvalidName, domain_key, mailbox_parts, user_key
from kittiwake.storage.base import DomainStore, RewriteStore, UserStore
from kittiwake.storage.memory import MemoryStore
from kittiwake.storage.sqlite import SCHEMA_VERSION, SchemaVersionError, SqliteStore

__all__ = [
    "SCHEMA_VERSION",
    "DomainStore",
    "InvalidName",
    "MemoryStore",
    "RewriteStore",
    "SchemaVersionError",
    "SqliteStore",
    "UserStore",
    "domain_key",
    "mailbox_parts",
    "user_key",
]
