"""The mailet container in a real kittiwake process, over SMTP: a mailetcontainer.xml
per feature, repositories through the CLI, SIGKILL mid-pipeline, sendmail -t."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.conftest import KITTIWAKE, Kittiwake, make_kittiwake, wait_for_port
from kittiwake.mailet import load_spec
from kittiwake.mailet.loader import compile_container

from .helpers import Harness

SAMPLES = Path(__file__).parent / "james-samples"

PIPELINE = """<?xml version="1.0"?>
<mailetcontainer>
  <context><postmaster>postmaster</postmaster></context>
  <spooler><threads>2</threads><errorRepository>file://var/mail/error/</errorRepository></spooler>
  <processors>
    <processor state="root">
      <mailet match="RecipientIs=bob@kittiwake.test" class="ToRepository">
        <repositoryPath>file://var/mail/quarantine/</repositoryPath>
      </mailet>
      <mailet match="All" class="ToProcessor"><processor>local-delivery</processor></mailet>
    </processor>
    <processor state="local-delivery">
      <mailet match="All" class="SetMimeHeader"><name>X-Pipeline</name><value>kw</value></mailet>
      <mailet match="All" class="AddDeliveredToHeader"/>
      <mailet match="All" class="LocalDelivery"/>
    </processor>
    <processor state="error">
      <mailet match="All" class="ToRepository">
        <repositoryPath>file://var/mail/error/</repositoryPath>
      </mailet>
    </processor>
  </processors>
</mailetcontainer>
"""


@pytest.fixture
def kw(tmp_path: Path) -> Iterator[Kittiwake]:
    k = make_kittiwake(tmp_path, users=("alice@kittiwake.test", "bob@kittiwake.test"))
    (k.conf / "mailetcontainer.xml").write_text(PIPELINE)
    k.start()
    yield k
    if k.proc is not None:
        assert k.stop() == 0, k.log_text()[-3000:]


def _send(port: int, rcpts: list[str], n: int = 1) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for i in range(n):
            s.sendmail(
                "carol@remote.test",
                rcpts,
                f"Subject: m{i}\r\nMessage-ID: <m{i}@t>\r\n\r\nbody {i}\r\n",
            )


def test_pipeline_over_smtp_and_repository_cli(kw: Kittiwake) -> None:
    _send(kw.port, ["alice@kittiwake.test", "bob@kittiwake.test"])
    (msg,) = kw.wait_messages("alice@kittiwake.test", 1)
    assert msg.startswith(b"Delivered-To: alice@kittiwake.test\r\n")
    assert b"X-Pipeline: kw" in msg
    deadline = time.monotonic() + 10
    while "quarantine" not in kw.cli("repo", "list").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    listing = kw.cli("repo", "list", "quarantine")
    assert listing.returncode == 0 and "bob@kittiwake.test" in listing.stdout
    key = listing.stdout.split("\t")[0]
    shown = kw.cli("repo", "show", "quarantine", key)
    assert "Subject: m0" in shown.stdout
    done = kw.cli("repo", "reprocess", "quarantine", key, "--processor", "local-delivery")
    assert done.returncode == 0, done.stderr
    assert kw.cli("repo", "list", "quarantine").stdout == ""
    (msg,) = kw.wait_messages("bob@kittiwake.test", 1, timeout=30)  # after a spool sweep
    assert b"X-Pipeline: kw" in msg


def test_sigkill_mid_pipeline_loses_nothing_and_delivers_nothing_twice(kw: Kittiwake) -> None:
    n = 60
    _send(kw.port, ["alice@kittiwake.test"], n)
    time.sleep(0.05)
    kw.kill()
    kw.start()
    msgs = kw.wait_messages("alice@kittiwake.test", n, timeout=30)
    time.sleep(0.5)
    msgs = kw.messages("alice@kittiwake.test")
    ids = sorted(m.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in msgs)
    assert len(ids) == n and len(set(ids)) == n


def test_sendmail_t_from_a_script(kw: Kittiwake) -> None:
    script = (
        "import subprocess, sys\n"
        f"p = subprocess.run({[*KITTIWAKE, 'sendmail', '-t', '-oi']!r} + "
        f"['--data', {str(kw.data)!r}, '--conf', {str(kw.conf)!r}], "
        "input=b'To: alice@kittiwake.test\\nBcc: bob@kittiwake.test\\n'\n"
        "b'Subject: cron\\n\\n.\\nok\\n')\n"
        "sys.exit(p.returncode)\n"
    )
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 0
    (msg,) = kw.wait_messages("alice@kittiwake.test", 1, timeout=30)
    assert b"Subject: cron" in msg and b"Bcc" not in msg
    assert b"\r\n.\r\nok" in msg  # -oi: a lone dot is text
    assert b"Received: by " in msg


def test_default_flow_delivered_to_and_forwarding_loop(tmp_path: Path) -> None:
    """James's default flow has AddDeliveredToHeader: one recipient, several, and a
    message that already went through a recipient's mailbox (bounced, 5.4.6)."""
    k = make_kittiwake(tmp_path, users=("alice@kittiwake.test", "bob@kittiwake.test"))
    k.start()
    try:
        with smtplib.SMTP("127.0.0.1", k.port, timeout=30) as s:
            s.sendmail("carol@remote.test", ["alice@kittiwake.test"], "Subject: one\r\n\r\n1\r\n")
            s.sendmail(
                "carol@remote.test",
                ["alice@kittiwake.test", "bob@kittiwake.test"],
                "Subject: two\r\n\r\n2\r\n",
            )
            # null sender: no bounce leaves the machine
            s.sendmail("<>", ["bob@kittiwake.test"], "Delivered-To: bob@kittiwake.test\r\n"
                       "Subject: looped\r\n\r\n3\r\n")  # fmt: skip
        one, two = k.wait_messages("alice@kittiwake.test", 2, timeout=30)
        assert one.startswith(b"Delivered-To: alice@kittiwake.test\r\nReturn-Path: <carol@")
        assert b"Subject: one" in one and one.count(b"Delivered-To") == 1
        assert two.startswith(b"Delivered-To: alice@kittiwake.test\r\n")
        (bob,) = k.wait_messages("bob@kittiwake.test", 1, timeout=30)
        assert bob.startswith(b"Delivered-To: bob@kittiwake.test\r\n") and b"Subject: two" in bob
        error = k.data / "repositories" / "error"
        deadline = time.monotonic() + 30
        while not (error.is_dir() and list(error.glob("*.json"))):
            assert time.monotonic() < deadline, k.log_text()[-3000:]
            time.sleep(0.05)
        assert "mail forwarding loop for bob@kittiwake.test" in k.log_text()
        assert len(k.messages("bob@kittiwake.test")) == 1
    finally:
        assert k.stop() == 0, k.log_text()[-3000:]


CRASHER = """<?xml version="1.0"?>
<mailetcontainer>
  <spooler><threads>2</threads><errorRepository>file://var/mail/error/</errorRepository></spooler>
  <processors>
    <processor state="root">
      <mailet match="All" class="mailet.crashers.ExitOnSubject"><subject>poison</subject></mailet>
      <mailet match="All" class="LocalDelivery"/>
    </processor>
    <processor state="error">
      <mailet match="All" class="ToRepository">
        <repositoryPath>file://var/mail/error/</repositoryPath>
      </mailet>
    </processor>
  </processors>
</mailetcontainer>
"""


def test_a_mail_that_kills_its_process_ends_in_the_error_repository(tmp_path: Path) -> None:
    """James gives up on a mail after 5 failures; a mail that kills the process each
    time is counted too (durably), so the crash loop ends after 5 tries."""
    k = make_kittiwake(tmp_path, users=("alice@kittiwake.test",))
    (k.conf / "mailetcontainer.xml").write_text(CRASHER)
    k.env["PYTHONPATH"] = str(Path(__file__).parent.parent)  # mailet.crashers
    k.start()
    with smtplib.SMTP("127.0.0.1", k.port, timeout=30) as s:
        s.sendmail("carol@remote.test", ["alice@kittiwake.test"], "Subject: poison\r\n\r\nx\r\n")
    error = k.data / "repositories" / "error"
    deaths = 0
    deadline = time.monotonic() + 120
    while not (error.is_dir() and list(error.glob("*.json"))):
        assert time.monotonic() < deadline, k.log_text()[-3000:]
        assert k.proc is not None
        code = k.proc.poll()
        if code is None:
            time.sleep(0.05)
            continue
        assert code == 70, k.log_text()[-3000:]
        deaths += 1
        assert deaths <= 5, k.log_text()[-3000:]
        k.start(wait=False)  # it may die before it listens: the spool is recovered first
    assert deaths == 5
    wait_for_port(k.port, k.proc)
    listing = k.cli("repo", "list", "error")
    assert listing.returncode == 0 and "alice@kittiwake.test" in listing.stdout, listing
    key = listing.stdout.split("\t")[0]
    assert "Subject: poison" in k.cli("repo", "show", "error", key).stdout
    log = k.log_text()
    assert "processing failed 5 times" in log
    assert "its process died while processing it (failure 5)" in log
    # the server works on, and the mail is gone from the spool (and its count with it)
    _send(k.port, ["alice@kittiwake.test"])
    k.wait_messages("alice@kittiwake.test", 1, timeout=30)
    assert not list((k.data / "mailet" / "failures").iterdir())
    assert k.stop() == 0


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="James samples not fetched")
@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.xml")))
def test_james_sample_loads_and_names_missing_classes(tmp_path: Path, sample: str) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "mailetcontainer.xml").write_bytes((SAMPLES / sample).read_bytes())
    spec = load_spec(conf)
    h = Harness(tmp_path)
    compiled = compile_container(spec, h.deliverer.context)
    assert "root" in compiled.processors and "error" in compiled.processors
    text = "\n".join(compiled.notes)
    assert "MetricsMailet" in text or "Sieve" in text or "SMIME" in text or not text
