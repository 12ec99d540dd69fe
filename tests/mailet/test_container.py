"""The container end to end below SMTP: default flow, splitting, exceptions, ghost,
repositories, bounces, rewrites, the failure count."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kittiwake.config._errors import ConfigError
from kittiwake.delivery.base import Status
from kittiwake.mailet.api import Mail, Mailet, Matcher
from kittiwake.policy.rewrite import MappingKind, normalize_mapping

from .helpers import Harness, processors


def test_default_flow_delivers_local_and_keeps_unknown_local_in_address_error(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    (out,) = h.run(h.job(["alice@a.test", "nobody@a.test"]))
    assert [o.status for o in out] == [Status.SENT, Status.FAILED]
    (msg,) = h.mailbox("alice@a.test")
    assert b"Bcc:" not in msg  # RemoveMimeHeader bcc
    assert len(h.repo("address-error")) == 1
    # the bounce went back to the remote sender: relay -> kept in outgoing (no RemoteDelivery)
    assert len(h.repo("outgoing")) == 1


def test_unchanged_message_is_hard_linked(tmp_path: Path) -> None:
    """The default flow adds Delivered-To (as James's); for a single recipient the
    spool file already starts with it, so the mailbox still gets a hard link."""
    h = Harness(tmp_path)
    job = h.job(["bob@a.test"], data=b"Subject: x\r\n\r\nbody\r\n")
    h.run(job)
    new = next((tmp_path / "mail" / "a.test" / "bob" / "new").iterdir())
    assert new.stat().st_ino == Path(job.data_path).stat().st_ino
    assert new.read_bytes() == b"Delivered-To: bob@a.test\r\nSubject: x\r\n\r\nbody\r\n"


def test_delivered_to_in_the_default_flow_one_file_per_mailbox(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.store.add_mapping(normalize_mapping(MappingKind.ADDRESS, "sales@a.test", "alice@a.test"))
    job = h.job(["bob@a.test", "sales@a.test"], sender="bob@a.test")
    h.run(job)
    (bob,) = h.mailbox("bob@a.test")
    (alice,) = h.mailbox("alice@a.test")
    assert bob.startswith(b"Delivered-To: bob@a.test\r\nReceived: from x\r\n")
    assert alice.startswith(b"Delivered-To: alice@a.test\r\nReceived: from x\r\n")
    assert alice.count(b"Delivered-To") == 1
    # run again as after a SIGKILL: nothing twice (Maildir names and journal hold)
    h2 = Harness(tmp_path)
    h2.store.add_mapping(normalize_mapping(MappingKind.ADDRESS, "sales@a.test", "alice@a.test"))
    (out,) = h2.run(dataclasses.replace(job, recovered=True))
    assert [o.status for o in out] == [Status.SENT, Status.SENT]
    assert len(h2.mailbox("bob@a.test")) == 1 and len(h2.mailbox("alice@a.test")) == 1


def test_single_recipient_stamp_is_hidden_where_it_does_not_apply(tmp_path: Path) -> None:
    """The Delivered-To written at reception belongs to that recipient's mailbox only:
    a rewritten recipient gets its own, and relayed or stored mail none."""
    h = Harness(tmp_path)
    h.store.add_mapping(normalize_mapping(MappingKind.ADDRESS, "sales@a.test", "alice@a.test"))
    h.run(h.job(["sales@a.test"]))
    (alice,) = h.mailbox("alice@a.test")
    assert alice.startswith(b"Delivered-To: alice@a.test\r\nReceived:")
    assert b"sales@a.test" not in alice
    h.run(h.job(["x@remote.test"], auth="alice@a.test"))
    h.run(h.job(["nobody@a.test"]))
    for name in ("outgoing", "address-error"):
        repo = h.deliverer.context.repositories.get(name)
        for stored in repo:
            head = repo.message_bytes(stored.key).split(b"\r\n\r\n")[0]
            assert b"Delivered-To" not in head


def test_delivered_to_loop_is_bounced_with_5_4_6(tmp_path: Path) -> None:
    """Postfix's check: a message that already says Delivered-To: bob came back for bob
    (a forward that loops); it is bounced, not delivered again."""
    h = Harness(tmp_path)
    looped = b"Delivered-To: Bob@A.test\r\nSubject: again\r\n\r\nx\r\n"
    (out,) = h.run(h.job(["bob@a.test", "postmaster@a.test"], sender="alice@a.test", data=looped))
    assert [o.status for o in out] == [Status.FAILED, Status.SENT]
    assert not h.mailbox("bob@a.test") and len(h.mailbox("postmaster@a.test")) == 1
    (dsn,) = h.mailbox("alice@a.test")
    assert b"Status: 5.4.6" in dsn and b"mail forwarding loop for bob@a.test" in dsn
    (key,) = h.repo("error")
    stored = h.deliverer.context.repositories.get("error").load(key)
    assert stored.recipients == ["bob@a.test"]


def test_relay_denied_and_relay_allowed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    (out,) = h.run(h.job(["x@remote.test"]))
    assert out[0].status is Status.FAILED
    assert len(h.repo("relay-denied")) == 1
    (out,) = h.run(h.job(["x@remote.test"], auth="alice@a.test"))
    assert len(h.repo("outgoing")) == 2  # one bounce of the denied mail, and this one


def test_split_matched_recipients_take_the_mailet_others_go_on(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        processors("""<processor state="root">
          <mailet match="RecipientIs=alice@a.test" class="SetMimeHeader">
            <name>X-Seen</name><value>yes</value></mailet>
          <mailet match="All" class="LocalDelivery"/></processor>"""),
    )
    h.run(h.job(["alice@a.test", "bob@a.test"]))
    assert b"X-Seen: yes" in h.mailbox("alice@a.test")[0]
    assert b"X-Seen" not in h.mailbox("bob@a.test")[0]


def test_notmatch_composite_and_named_matchers(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        processors("""<processor state="root">
          <matcher name="special" match="Or">
            <matcher match="RecipientIs=alice@a.test"/>
            <matcher match="SenderIs=boss@remote.test"/>
          </matcher>
          <matcher name="both" match="And">
            <matcher match="HasHeader=Subject"/>
            <matcher match="IsSingleRecipient"/>
          </matcher>
          <mailet match="special" class="AddHeader"><name>X-Special</name><value>1</value></mailet>
          <mailet match="both" class="AddHeader"><name>X-Both</name><value>1</value></mailet>
          <mailet notmatch="SenderIsNull" class="AddHeader"><name>X-Has-Sender</name>
            <value>1</value></mailet>
          <mailet match="All" class="LocalDelivery"/></processor>"""),
    )
    h.run(h.job(["alice@a.test", "bob@a.test"]))
    alice, bob = h.mailbox("alice@a.test")[0], h.mailbox("bob@a.test")[0]
    assert b"X-Special" in alice and b"X-Special" not in bob
    # after the split each part has one recipient: IsSingleRecipient holds for both
    assert b"X-Both" in alice and b"X-Both" in bob
    assert b"X-Has-Sender: 1" in alice
    h.run(h.job(["bob@a.test"], sender="boss@remote.test"))
    last = h.mailbox("bob@a.test")[-1]
    assert b"X-Special" in last and b"X-Both" in last


class Boom(Mailet):
    def service(self, mail: Mail) -> None:
        raise RuntimeError("boom")


class BoomMatcher(Matcher):
    def match(self, mail: Mail) -> list[str]:
        raise RuntimeError("matcher boom")


@pytest.mark.parametrize(
    "attrs, where",
    [
        ("", "error"),
        ('onMailetException="ignore"', "delivered"),
        ('onMailetException="oops"', "oops"),
    ],
)
def test_on_mailet_exception(tmp_path: Path, attrs: str, where: str) -> None:
    h = Harness(
        tmp_path,
        processors(f"""<processor state="root">
          <mailet match="All" class="mailet.test_container.Boom" {attrs}/>
          <mailet match="All" class="LocalDelivery"/></processor>
          <processor state="oops"><mailet match="All" class="ToRepository">
            <repositoryPath>file://var/mail/oops/</repositoryPath></mailet></processor>"""),
    )
    h.run(h.job(["alice@a.test"]))
    if where == "delivered":
        assert len(h.mailbox("alice@a.test")) == 1
    else:
        assert len(h.repo(where)) == 1
        stored = h.deliverer.context.repositories.get(where).load(h.repo(where)[0])
        assert "boom" in (stored.error_message or "")


@pytest.mark.parametrize("handler, delivered", [("nomatch", False), ("matchall", True)])
def test_on_match_exception(tmp_path: Path, handler: str, delivered: bool) -> None:
    h = Harness(
        tmp_path,
        processors(f"""<processor state="root">
          <mailet match="mailet.test_container.BoomMatcher" class="LocalDelivery"
            onMatchException="{handler}"/>
          <mailet match="All" class="Null"/></processor>"""),
    )
    h.run(h.job(["alice@a.test"]))
    assert bool(h.mailbox("alice@a.test")) is delivered


def test_propagate_fails_five_times_then_error_repository(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        processors("""<processor state="root">
          <mailet match="All" class="mailet.test_container.Boom"
            onMailetException="propagate"/></processor>"""),
    )
    job = h.job(["alice@a.test"])
    for _ in range(4):
        (out,) = h.run(job)
        assert out[0].status is Status.DEFERRED
    (out,) = h.run(job)
    assert out[0].status is Status.FAILED
    assert len(h.repo("error")) == 1


def test_failure_count_survives_a_restart(tmp_path: Path) -> None:
    """The count is on disk: 3 failures, a restart, 2 more: error repository."""
    xml = processors("""<processor state="root">
          <mailet match="All" class="mailet.test_container.Boom"
            onMailetException="propagate"/></processor>""")
    h = Harness(tmp_path, xml)
    job = h.job(["alice@a.test"])
    for _ in range(3):
        (out,) = h.run(job)
        assert out[0].status is Status.DEFERRED
    h.deliverer.close()
    h2 = Harness(tmp_path, xml)
    again = dataclasses.replace(job, recovered=True)
    (out,) = h2.run(again)
    assert out[0].status is Status.DEFERRED
    (out,) = h2.run(again)
    assert out[0].status is Status.FAILED
    assert len(h2.repo("error")) == 1
    assert not list((tmp_path / "mailet" / "failures").iterdir())  # forgotten with the mail


def test_ghost_and_null(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        processors("""<processor state="root">
          <mailet match="RecipientIs=alice@a.test" class="Null"/>
          <mailet match="All" class="ToProcessor"><processor>ghost</processor></mailet>
          <mailet match="All" class="LocalDelivery"/></processor>"""),
    )
    (out,) = h.run(h.job(["alice@a.test", "bob@a.test"]))
    assert [o.status for o in out] == [Status.SENT, Status.SENT]
    assert not h.mailbox("alice@a.test") and not h.mailbox("bob@a.test")


def test_rewrite_table_alias_forward_regex_and_loop(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for kind, src, dst in [
        (MappingKind.ADDRESS, "sales@a.test", "alice@a.test"),
        (MappingKind.FORWARD, "team@a.test", "bob@a.test"),
        (MappingKind.REGEX, r"(.*)\+.*@a\.test", "${1}@a.test"),
        (MappingKind.ADDRESS, "loop1@a.test", "loop2@a.test"),
        (MappingKind.ADDRESS, "loop2@a.test", "loop1@a.test"),
    ]:
        h.store.add_mapping(normalize_mapping(kind, src, dst))
    h.run(h.job(["sales@a.test", "team@a.test", "bob+tag@a.test", "loop1@a.test"]))
    assert len(h.mailbox("alice@a.test")) == 1
    assert len(h.mailbox("bob@a.test")) == 1  # team and bob+tag: one copy per mailbox
    assert len(h.repo("rrt-error")) == 1


def test_delivered_to_per_recipient(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        processors("""<processor state="root">
          <mailet match="All" class="AddDeliveredToHeader"/>
          <mailet match="All" class="LocalDelivery"/></processor>"""),
    )
    h.run(h.job(["alice@a.test", "bob@a.test"]))
    assert h.mailbox("alice@a.test")[0].startswith(b"Delivered-To: alice@a.test\r\n")
    assert h.mailbox("bob@a.test")[0].startswith(b"Delivered-To: bob@a.test\r\n")
    assert not [p for p in (tmp_path / "mailet").iterdir() if p.is_file()]  # work files gone


def test_rerun_delivers_nothing_twice(tmp_path: Path) -> None:
    """A job run again (as after a crash) changes nothing: Maildir names, journal,
    repository keys and bounce names are functions of the mail."""
    h = Harness(tmp_path)
    job = h.job(["alice@a.test", "nobody@a.test", "postmaster@a.test"], sender="bob@a.test")
    h.run(job)
    before = (h.mailbox("alice@a.test"), h.mailbox("bob@a.test"), h.repo("address-error"))
    h2 = Harness(tmp_path)  # a restarted process: new journal file, same data
    h2.run(dataclasses.replace(job, recovered=True))
    after = (h2.mailbox("alice@a.test"), h2.mailbox("bob@a.test"), h2.repo("address-error"))
    assert before == after
    assert len(after[1]) == 1  # bob got one bounce, not two
    assert b"multipart/report" in after[1][0]


def test_relay_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    data = b"Received: x\r\n" * 30 + b"Subject: loop\r\n\r\nx\r\n"
    h.run(h.job(["alice@a.test"], data=data))
    assert len(h.repo("relay-limit-exceeded")) == 1
    assert not h.mailbox("alice@a.test")


def test_postmaster_alias(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.store.add_domain("b.test")
    h.run(h.job(["postmaster@b.test"]))
    assert len(h.mailbox("postmaster@a.test")) == 1


def test_bad_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        Harness(
            tmp_path,
            processors("""<processor state="root">
              <mailet match="All" class="ToProcessor"><processor>nowhere</processor></mailet>
              <mailet match="SizeGreaterThan=lots" class="Null"/>
              <mailet match="All" class="my.missing.Mailet"/></processor>"""),
        )
    text = str(err.value)
    assert "nowhere" in text and "lots" in text and "my.missing.Mailet" in text


def test_reprocess_into_chosen_processor(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.run(h.job(["x@remote.test"]))
    assert len(h.repo("relay-denied")) == 1
    # sent back into local-delivery by state= (what `kittiwake repo reprocess` does)
    h.run(h.job(["alice@a.test"], state="local-delivery"))
    assert len(h.mailbox("alice@a.test")) == 1
