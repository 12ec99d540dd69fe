"""``kittiwake alias`` and ``kittiwake user import`` (cli_accounts), on the memory store,
and through the real command for what only the command does."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import pytest

from kittiwake.auth.passwords import verify_password
from kittiwake.cli_accounts import CommandError, alias_command, import_users, login_name
from kittiwake.config.model import Config, DomainListConfig, UsersRepositoryConfig
from kittiwake.policy.rewrite import expand
from kittiwake.storage import MemoryStore

CONFIG = Config(listeners=(), domains=DomainListConfig(("a.test",), "a.test"))
NO_VHOST = dataclasses.replace(
    CONFIG, users=UsersRepositoryConfig(virtual_hosting=False, algorithm="SHA-1")
)
# James's AlgorithmTest values: "myPassword" hashed with salt "salt"
PBKDF2_MYPASSWORD = (
    "uakKCXTKBGN1JxbE0bAuLKn8Bzkf+NU9J+2l50tqJlZYzXNe86EJ2jEXkI1Fp1uy2sXLfOrSxCFT/fQRPxgZmw=="
)
SHA1_MYPASSWORD = "VBPuJHI7uixaa6LQGWx4s+5GKNE="


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.add_domain("a.test")
    s.add_user("alice@a.test", None)
    return s


def test_alias_add_list_remove(store: MemoryStore) -> None:
    assert alias_command(store, "add", "Sales@A.test", "alice@a.test", None) == [
        "added address sales@a.test -> alice@a.test"
    ]
    assert alias_command(store, "add", "@alias.test", "@a.test", None) == [
        "added domain  @alias.test -> @a.test"
    ]
    alias_command(store, "add", "bob@a.test", "Bob@Remote.test", "forward")
    alias_command(store, "add", r"(.*)\+.*@a\.test", "${1}@a.test", "regex")
    table = store.rewrite_table()
    assert expand("sales@alias.test", table).addresses == ("alice@a.test",)
    assert expand("alice+x@a.test", table).addresses == ("alice@a.test",)
    assert expand("bob@a.test", table).addresses == ("Bob@remote.test",)
    assert alias_command(store, "list", None, None, None) == [
        r"regex   (.*)\+.*@a\.test -> ${1}@a.test",
        "domain  @alias.test -> @a.test",
        "forward bob@a.test -> Bob@remote.test",
        "address sales@a.test -> alice@a.test",
    ]
    assert alias_command(store, "list", "sales", None, None) == [
        "address sales@a.test -> alice@a.test"
    ]
    assert alias_command(store, "remove", "sales@a.test", "alice@a.test", None) == [
        "removed address sales@a.test -> alice@a.test"
    ]
    with pytest.raises(CommandError, match="no such mapping"):
        alias_command(store, "remove", "sales@a.test", "alice@a.test", None)


def test_alias_refusals(store: MemoryStore) -> None:
    alias_command(store, "add", "ping@a.test", "pong@a.test", None)
    with pytest.raises(CommandError, match="loop"):
        alias_command(store, "add", "pong@a.test", "ping@a.test", None)
    with pytest.raises(CommandError, match="not a local domain"):
        alias_command(store, "add", "x@elsewhere.test", "alice@a.test", None)
    with pytest.raises(CommandError, match="exists already"):
        alias_command(store, "add", "ping@a.test", "pong@a.test", None)
    with pytest.raises(CommandError, match="not a valid regex mapping"):
        alias_command(store, "add", "(", "x@a.test", "regex")
    # an address in an aliased domain may have its own mapping
    alias_command(store, "add", "@alias.test", "@a.test", None)
    alias_command(store, "add", "boss@alias.test", "alice@a.test", None)
    note = alias_command(store, "add", "@out.test", "@remote.test", None)
    assert note[1] == "note: remote.test is not a local domain: its mail is relayed"


def test_import(store: MemoryStore) -> None:
    err = io.StringIO()
    lines = [
        "# USER_NAME PASSWORD_HASH_ALGORITHM PASSWORD\n",
        f"salt PBKDF2-SHA512 {PBKDF2_MYPASSWORD}\n",  # James salted with its name: "salt"
        f"alice@a.test,SHA-1,{SHA1_MYPASSWORD}\n",  # exists: refused without --replace
        "bob@a.test NOPE-1 abcd\n",
        "carol@a.test SHA-1 shortish\n",
        "dave@elsewhere.test SHA-1 " + SHA1_MYPASSWORD + "\n",
        "one two three four\n",
        "\n",
    ]
    imported, refused = import_users(store, CONFIG, lines, domain="a.test", err=err)
    assert (imported, refused) == (1, 5)
    assert err.getvalue().splitlines() == [
        "line 3: user alice@a.test exists already (--replace replaces it)",
        "line 4: 'NOPE-1' is not a digest kittiwake knows",
        "line 5: the hash has 8 characters; SHA-1/plain gives 28",
        "line 6: elsewhere.test is not a local domain",
        "line 7: expected NAME [ALGORITHM] HASH",
    ]
    stored = store.get_password_hash("salt@a.test")
    assert stored is not None and verify_password(stored, "myPassword")
    assert PBKDF2_MYPASSWORD not in err.getvalue()


def test_import_without_virtual_hosting_and_replace(store: MemoryStore) -> None:
    # usersrepository.xml: no virtual hosting, algorithm SHA-1: "salt" is salt@a.test
    assert import_users(store, NO_VHOST, [f"salt {SHA1_MYPASSWORD}"]) == (1, 0)
    stored = store.get_password_hash("salt@a.test")
    assert stored is not None and verify_password(stored, "myPassword")
    assert import_users(store, NO_VHOST, [f"salt {SHA1_MYPASSWORD}"], err=io.StringIO()) == (0, 1)
    assert import_users(store, NO_VHOST, [f"salt {SHA1_MYPASSWORD}"], replace=True) == (1, 0)
    # with virtual hosting a bare name needs --domain
    err = io.StringIO()
    assert import_users(store, CONFIG, [f"salt {SHA1_MYPASSWORD}"], err=err) == (0, 1)
    assert "has no domain (give --domain)" in err.getvalue()


def test_login_name() -> None:
    assert login_name(CONFIG, "Alice@A.TEST") == "alice@a.test"
    assert login_name(NO_VHOST, "Alice") == "alice@a.test"
    with pytest.raises(CommandError):
        login_name(CONFIG, "alice")


def test_the_command(tmp_path: Path) -> None:
    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kittiwake.cli", *args, "--data", str(tmp_path / "d")],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert run("domain", "add", "a.test").returncode == 0
    assert run("user", "add", "alice@a.test", stdin="pw\n").returncode == 0
    done = run("alias", "add", "sales@a.test", "alice@a.test")
    assert done.returncode == 0 and done.stdout == "added address sales@a.test -> alice@a.test\n"
    assert run("alias", "list").stdout == "address sales@a.test -> alice@a.test\n"
    bad = run("alias", "add", "sales@a.test", "alice@a.test")
    assert bad.returncode == 1 and "exists already" in bad.stderr
    imported = run("user", "import", "--domain", "a.test", stdin=f"salt SHA-1 {SHA1_MYPASSWORD}\n")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == "imported 1 user(s); 0 line(s) refused\n"
    assert run("user", "list").stdout == "alice@a.test\nsalt@a.test\n"
    refused = run("user", "import", stdin="garbage\n")
    assert refused.returncode == 1 and "line 1: expected NAME [ALGORITHM] HASH" in refused.stderr
