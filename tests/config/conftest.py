"""Fixtures for the configuration loader tests: a fake host and small file writers.

No test here touches DNS or the machine's real name: the loader is given a
:class:`HostLookup` with a fixed name and a dict-backed resolver.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kw_config_helpers import FQDN, fake_resolve, wrap

from kittiwake.config import Config, ConfigError, HostLookup, load_config


@pytest.fixture
def host() -> HostLookup:
    return HostLookup(fqdn=lambda: FQDN, resolve=fake_resolve)


@pytest.fixture
def conf_dir(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """Write ``{file name: text}`` into a fresh directory and return it."""

    def write(files: dict[str, str]) -> Path:
        directory = tmp_path / "conf"
        directory.mkdir(exist_ok=True)
        for name, text in files.items():
            (directory / name).write_text(text, encoding="utf-8")
        return directory

    return write


@pytest.fixture
def load_files(
    conf_dir: Callable[[dict[str, str]], Path], host: HostLookup
) -> Callable[[dict[str, str]], Config]:
    def load(files: dict[str, str]) -> Config:
        return load_config(conf_dir(files), host=host)

    return load


@pytest.fixture
def load_smtp(load_files: Callable[[dict[str, str]], Config]) -> Callable[..., Config]:
    """Load a smtpserver.xml made by :func:`wrap` (or given whole with ``raw=True``)."""

    def load(body: str, attributes: str = "", raw: bool = False) -> Config:
        return load_files({"smtpserver.xml": body if raw else wrap(body, attributes)})

    return load


@pytest.fixture
def smtp_error(load_smtp: Callable[..., Config]) -> Callable[..., ConfigError]:
    """The ConfigError that loading ``body`` (as :func:`wrap` builds it) raises."""

    def load(body: str, attributes: str = "", raw: bool = False) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            load_smtp(body, attributes, raw)
        return info.value

    return load
