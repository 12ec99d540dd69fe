"""Configuration: James's XML files in, frozen dataclasses out (see ``loader.py``)."""

from kittiwake.config.loader import ConfigError, HostLookup, format_report, load_config
from kittiwake.config.model import (
    Bind,
    Config,
    DomainListConfig,
    ListenerConfig,
    Protocol,
    ServerOptions,
    TlsConfig,
)

__all__ = [
    "Bind",
    "Config",
    "ConfigError",
    "DomainListConfig",
    "HostLookup",
    "ListenerConfig",
    "Protocol",
    "ServerOptions",
    "TlsConfig",
    "format_report",
    "load_config",
]
