"""Configuration: James's XML files in, frozen dataclasses out (see ``loader.py``)."""

from kittiwake.config.loader import ConfigError, HostLookup, format_report, load_config
from kittiwake.config.model import (
    AuthAnnounce,
    AuthConfig,
    Bind,
    Config,
    DomainListConfig,
    ListenerConfig,
    Protocol,
    ServerOptions,
    TlsConfig,
    UsersRepositoryConfig,
)

__all__ = [
    "AuthAnnounce",
    "AuthConfig",
    "Bind",
    "Config",
    "ConfigError",
    "DomainListConfig",
    "HostLookup",
    "ListenerConfig",
    "Protocol",
    "ServerOptions",
    "TlsConfig",
    "UsersRepositoryConfig",
    "format_report",
    "load_config",
]
