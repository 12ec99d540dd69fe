"""``kittiwake queue ...`` on an outgoing repository written as RemoteDelivery writes it
(stored mail, ``KEY.retry``), with another holder of the mail's lock (``KEY.json``)
standing in for a server delivering the mail."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kittiwake.cli import main
from kittiwake.mailet.api import Mail
from kittiwake.mailet.config import parse_mailetcontainer_text
from kittiwake.mailet.message import Message
from kittiwake.mailet.outgoing import outgoing_names
from kittiwake.mailet.repository import MailRepository

MESSAGE = b"From: <alice@a.test>\r\nSubject: queued\r\nX-Test: 1\r\n\r\nthe body\r\n"


def _store(data: Path, name: str, rcpts: list[str], retry: dict[str, object] | None) -> str:
    repo = MailRepository(data / "repositories", "outgoing")
    mail = Mail(
        name=name,
        sender="alice@a.test",
        recipients=rcpts,
        message=Message(None, len(MESSAGE), MESSAGE),
        state="relay",
    )
    key = repo.store(mail)
    if retry is not None:
        (repo.path / f"{key}.retry").write_text(json.dumps(retry))
    return key


@contextmanager
def _held(data: Path, key: str) -> Iterator[None]:
    """Hold the mail's lock as a delivering RemoteDelivery does (flock on KEY.json)."""
    fd = os.open(data / "repositories/outgoing" / f"{key}.json", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield
    finally:
        os.close(fd)


def _run(capsys: pytest.CaptureFixture[str], data: Path, *args: str) -> tuple[int, str, str]:
    code = main(["queue", *args, "--data", str(data)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("KITTIWAKE_CONF", raising=False)
    return tmp_path / "data"


def test_list_show_retry_remove(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    later = time.time() + 3600
    deferred = _store(
        data,
        "0AAAAAAAAAA1",
        ["carol@remote.test", "dave@remote.test"],
        {"attempts": 2, "next": later, "error": "451 4.3.0 try again later"},
    )
    fresh = _store(data, "0AAAAAAAAAA2", ["erin@other.test"], None)

    code, out, err = _run(capsys, data, "list")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and "2 mail(s) in outgoing, 0 in the spool" in err
    first = dict(f.split("=", 1) for f in lines[0].split("\t")[1:])
    assert lines[0].split("\t")[0] == deferred
    assert first["from"] == "<alice@a.test>"
    assert first["to"] == "carol@remote.test,dave@remote.test"
    assert first["size"] == str(len(MESSAGE))
    assert first["attempts"] == "2" and "(in 60 min)" in first["next"]
    assert first["error"] == "451 4.3.0 try again later"
    second = dict(f.split("=", 1) for f in lines[1].split("\t")[1:])
    assert second["attempts"] == "0" and second["next"] == "now" and second["error"] == "-"

    # show, by the queue ID the log names (a prefix of the key)
    code, out, _ = _run(capsys, data, "show", "0AAAAAAAAAA1")
    assert code == 0
    assert f"Key: {deferred}" in out and "Envelope-To: carol@remote.test, dave@remote.test" in out
    assert "Attempts: 2" in out and "Last-Error: 451 4.3.0 try again later" in out
    assert "Subject: queued" in out and "the body" not in out
    code, out, _ = _run(capsys, data, "show", deferred, "--full")
    assert "the body" in out

    # retry: due now, attempts and error kept
    code, out, _ = _run(capsys, data, "retry", deferred)
    assert code == 0 and f"{deferred}: due now" in out
    retry = json.loads((data / "repositories/outgoing" / f"{deferred}.retry").read_text())
    assert retry == {"attempts": 2, "next": 0.0, "error": "451 4.3.0 try again later"}
    code, out, _ = _run(capsys, data, "retry", fresh)
    assert code == 0 and "due already" in out

    # remove
    code, out, _ = _run(capsys, data, "remove", fresh)
    assert code == 0 and f"removed {fresh}" in out
    assert sorted(os.listdir(data / "repositories/outgoing")) == sorted(
        [f"{deferred}.eml", f"{deferred}.json", f"{deferred}.retry"]
    )
    code, _, err = _run(capsys, data, "remove", fresh)
    assert code == 1 and f"no mail {fresh}" in err
    # --repository is a name, never a path out of DATA/repositories
    code, out, err = _run(capsys, data, "list", "--repository", "..")
    assert code == 0 and out == "" and "0 mail(s) in default" in err


def test_a_mail_being_delivered_is_left_alone(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    later = time.time() + 3600
    key = _store(data, "0BBBBBBBBBB1", ["carol@remote.test"], {"attempts": 1, "next": later})
    other = _store(data, "0BBBBBBBBBB2", ["dave@remote.test"], {"attempts": 1, "next": later})
    repo = data / "repositories/outgoing"
    with _held(data, key):
        code, out, _ = _run(capsys, data, "list")
        assert "next=delivering" in out.splitlines()[0]
        code, _, err = _run(capsys, data, "remove", key)
        assert code == 1 and "is being delivered right now" in err
        assert (repo / f"{key}.json").exists() and (repo / f"{key}.eml").exists()
        code, _, err = _run(capsys, data, "retry", key)
        assert code == 1 and "being delivered" in err
        assert json.loads((repo / f"{key}.retry").read_text())["next"] == later
        code, out, _ = _run(capsys, data, "flush")
        assert code == 0
        assert "1 deferred mail(s) made due now" in out
        assert "1 mail(s) being delivered right now" in out
        assert "no server is running" in out
        assert json.loads((repo / f"{other}.retry").read_text())["next"] == 0.0
    code, out, _ = _run(capsys, data, "remove", key)
    assert code == 0 and not (repo / f"{key}.json").exists()


def test_spool_entries_are_listed(
    data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A mail accepted while no server runs (kittiwake sendmail) waits in the spool."""
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kittiwake.cli",
            "sendmail",
            "--data",
            str(data),
            "-f",
            "alice@a.test",
            "bob@b.test",
        ],
        input=b"Subject: spooled\r\n\r\nbody\r\n",
        capture_output=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "KITTIWAKE_CONF"},
    )
    assert result.returncode == 0, result.stderr
    code, out, err = _run(capsys, data, "list")
    (line,) = out.splitlines()
    assert "from=<alice@a.test>" in line and "to=bob@b.test" in line and "next=spool" in line
    assert "0 mail(s) in outgoing, 1 in the spool" in err
    qid = line.split("\t")[0]
    code, out, _ = _run(capsys, data, "show", qid)
    assert code == 0 and "in the spool" in out and "Subject: spooled" in out
    code, _, err = _run(capsys, data, "remove", qid)
    assert code == 1 and "no mail" in err


def test_outgoing_names_come_from_the_container() -> None:
    spec = parse_mailetcontainer_text(
        """<mailetcontainer><processors>
        <processor state="root"><mailet match="All" class="ToProcessor">
          <processor>relay</processor></mailet></processor>
        <processor state="relay">
          <mailet match="All" class="org.apache.james.transport.mailets.RemoteDelivery">
            <outgoingQueue>file://var/mail/out-a/</outgoingQueue></mailet>
          <mailet match="All" class="RemoteDelivery"/></processor>
        <processor state="error"><mailet match="All" class="Null"/></processor>
        </processors></mailetcontainer>"""
    )
    assert outgoing_names(spec) == ["out-a", "outgoing"]
