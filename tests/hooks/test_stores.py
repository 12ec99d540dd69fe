"""Handlers that remember, in their stores under DATA: greylisting, rate limits, spam
traps (the stores' own contract: ``tests/storage/test_hook_stores_contract.py``).

Issue 3, point 4: the rate limits hold across worker processes (several processes
counting in one file), with 421 4.7.0 for connections and 450 4.7.1 for messages and
recipients.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from kittiwake.config.model import OptionNode
from kittiwake.dnsservice import DnsService
from kittiwake.hooks.api import Services, SessionInfo
from kittiwake.hooks.handlers.greylist import GreylistHandler, client_network
from kittiwake.hooks.handlers.recipients import SpamTrapHandler
from kittiwake.hooks.options import HandlerOptions
from kittiwake.hooks.ratelimit import RateLimitHandler, client_key
from kittiwake.protocol import MailFrom, RcptTo
from kittiwake.storage.memory import MemoryStore
from kittiwake.storage.sqlite_hooks import SqliteHookStores


def options(**values: str) -> HandlerOptions:
    return HandlerOptions(
        OptionNode("handler", children=tuple(OptionNode(k, v) for k, v in values.items()))
    )


def services(data: Path, listener: str = "smtp") -> Services:
    store = MemoryStore()
    return Services(listener, "mx.test", data, DnsService(), store, store, SqliteHookStores(data))


def info(ip: str = "192.0.2.7", sender: str | None = "s@remote.test") -> SessionInfo:
    i = SessionInfo("smtp", "SMTP", ip, 1, "t.1")
    i.sender = sender
    return i


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_greylisting_lifecycle(tmp_path: Path) -> None:
    hook = GreylistHandler(options(tempBlockTime="10s", unseenLifeTime="100s"))
    hook.clock = clock = Clock()
    await hook.start(services(tmp_path))
    try:
        rcpt = RcptTo("alice@local.test")
        first = await hook.on_rcpt(info(), rcpt)
        assert first.refused and first.refusal().code == 451
        clock.now += 5
        assert "too fast" in (await hook.on_rcpt(info(), rcpt)).refusal().text
        clock.now += 6  # past tempBlockTime: accepted, and whitelisted from now on
        assert not (await hook.on_rcpt(info("192.0.2.99"), rcpt)).refused  # same /24
        clock.now += 1
        assert not (await hook.on_rcpt(info(), rcpt)).refused
        # another sender, recipient or network is another triplet
        assert (await hook.on_rcpt(info(sender=""), rcpt)).refused
        assert (await hook.on_rcpt(info("198.51.100.1"), rcpt)).refused
        # a triplet never retried is forgotten after unseenLifeTime: greylisted afresh
        other = RcptTo("bob@local.test")
        assert (await hook.on_rcpt(info(), other)).refused
        clock.now += 200
        assert (await hook.on_rcpt(info(), other)).refused
        # authenticated clients are never greylisted
        authed = info("203.0.113.5")
        authed.authenticated_user = "alice@local.test"
        assert not (await hook.on_rcpt(authed, rcpt)).refused
    finally:
        await hook.stop()


def test_client_networks() -> None:
    assert client_network("192.0.2.77") == "192.0.2.0/24"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_key("192.0.2.77") == "192.0.2.77"


async def test_rate_limits_slide_and_refused_events_are_not_counted(tmp_path: Path) -> None:
    hook = RateLimitHandler(
        options(connectionsPerMinute="2", messagesPerHour="3", recipientsPerHour="4")
    )
    hook.clock = clock = Clock()
    clock.now = 3600.0 * 1000  # at the start of a window
    await hook.start(services(tmp_path))
    try:
        a = info("192.0.2.1")
        assert not (await hook.on_connect(a)).refused
        assert not (await hook.on_connect(a)).refused
        over = await hook.on_connect(a)
        assert over.disconnect and (over.refusal().code, over.refusal().status) == (421, "4.7.0")
        assert not (await hook.on_connect(info("192.0.2.2"))).refused  # another client
        # half a minute into the next window, half of the previous one still counts:
        clock.now += 90
        assert not (await hook.on_connect(a)).refused  # 2 * 0.5 + 0 < 2
        assert (await hook.on_connect(a)).refused  # 2 * 0.5 + 1 + 1 > 2
        clock.now += 60
        assert not (await hook.on_connect(a)).refused

        mail = MailFrom("s@remote.test")
        for _ in range(3):
            assert not (await hook.on_mail(a, mail)).refused
        refused = (await hook.on_mail(a, mail)).refusal()
        assert (refused.code, refused.status) == (450, "4.7.1")
        for n in range(4):
            assert not (await hook.on_rcpt(a, RcptTo(f"r{n}@local.test"))).refused
        assert (await hook.on_rcpt(a, RcptTo("r9@local.test"))).refusal().code == 450
    finally:
        await hook.stop()


async def test_rate_limits_per_user_and_per_listener(tmp_path: Path) -> None:
    hook = RateLimitHandler(options(messagesPerHourPerUser="1", messagesPerHour="5"))
    other = RateLimitHandler(options(messagesPerHour="1"))
    await hook.start(services(tmp_path, "submission"))
    await other.start(services(tmp_path, "smtp"))
    try:
        mail = MailFrom("s@remote.test")
        alice = info("192.0.2.1")
        alice.authenticated_user = "alice@local.test"
        assert not (await hook.on_mail(alice, mail)).refused
        assert (await hook.on_mail(alice, mail)).refused  # alice's hour is used up
        bob = info("192.0.2.1")
        bob.authenticated_user = "bob@local.test"
        assert not (await hook.on_mail(bob, mail)).refused  # same address, other user
        # the other listener counts apart
        assert not (await other.on_mail(info("192.0.2.1"), mail)).refused
    finally:
        await hook.stop()
        await other.stop()


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_stores import options, services, info
    from kittiwake.hooks.ratelimit import RateLimitHandler
    from kittiwake.protocol import MailFrom

    async def main():
        hook = RateLimitHandler(options(messagesPerHour="25"))
        await hook.start(services(Path(sys.argv[1])))
        accepted = 0
        for _ in range(40):
            if not (await hook.on_mail(info("192.0.2.1"), MailFrom("s@r.test"))).refused:
                accepted += 1
        await hook.stop()
        print(accepted)

    asyncio.run(main())
    """
)


def test_rate_limits_hold_across_processes(tmp_path: Path) -> None:
    """Four processes, as four workers would, share one limit of 25 messages."""
    here = str(Path(__file__).parent)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), here],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    counts = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        counts.append(int(out))
    assert sum(counts) == 25, counts


async def test_spam_trap_blocks_across_instances_sharing_data(tmp_path: Path) -> None:
    opts = options(spamTrapRecip="trap@local.test", blockTime="1 hour")
    first, second = SpamTrapHandler(opts), SpamTrapHandler(opts)
    first.clock = second.clock = clock = Clock()
    await first.start(services(tmp_path))
    await second.start(services(tmp_path))  # another worker of the same listener
    try:
        assert not (await first.on_rcpt(info(), RcptTo("alice@local.test"))).refused
        assert (await first.on_rcpt(info(), RcptTo("TRAP@local.test"))).refused
        assert (await second.on_rcpt(info(), RcptTo("alice@local.test"))).refused
        assert not (await second.on_rcpt(info("192.0.2.8"), RcptTo("alice@local.test"))).refused
        clock.now += 3601
        assert not (await second.on_rcpt(info(), RcptTo("alice@local.test"))).refused
    finally:
        await first.stop()
        await second.stop()


async def test_valid_rcpt_handler_modes_with_the_rewrite_table(tmp_path: Path) -> None:
    from kittiwake.hooks.handlers.recipients import ValidRcptHandler
    from kittiwake.policy.rewrite import MappingKind, normalize_mapping

    store = MemoryStore()
    store.add_domain("local.test")
    store.add_user("alice@local.test", None)
    for source, target in (
        ("sales@local.test", "alice@local.test"),  # to a user
        ("team@local.test", "alice@local.test"),  # to a user and to a ghost
        ("team@local.test", "ghost@local.test"),
        ("ext@local.test", "someone@remote.test"),  # forwarded away
        ("dead@local.test", "ghost@local.test"),  # to nobody
    ):
        store.add_mapping(normalize_mapping(MappingKind.ADDRESS, source, target))
    svc = Services(
        "smtp", "mx.test", tmp_path, DnsService(), store, store, SqliteHookStores(tmp_path)
    )

    async def verdicts(**opts: str) -> dict[str, int]:
        hook = ValidRcptHandler(options(**opts))
        await hook.start(svc)
        out = {}
        for local in ("alice", "sales", "team", "ext", "dead", "nobody", "postmaster"):
            result = await hook.on_rcpt(info(), RcptTo(f"{local}@local.test"))
            out[local] = result.refusal().code if result.refused else 250
        assert not (await hook.on_rcpt(info(), RcptTo("x@remote.test"))).refused  # not local
        return out

    assert await verdicts() == {
        "alice": 250, "sales": 250, "team": 250, "ext": 250, "dead": 250, "nobody": 550,
        "postmaster": 250,
    }  # fmt: skip
    assert await verdicts(recipientRewriteTableCheck="anyMappingValid") == {
        "alice": 250, "sales": 250, "team": 250, "ext": 250, "dead": 550, "nobody": 550,
        "postmaster": 250,
    }  # fmt: skip
    assert await verdicts(recipientRewriteTableCheck="allMappingsValid") == {
        "alice": 250, "sales": 250, "team": 550, "ext": 250, "dead": 550, "nobody": 550,
        "postmaster": 250,
    }  # fmt: skip
    assert await verdicts(enableRecipientRewriteTable="false") == {
        "alice": 250, "sales": 550, "team": 550, "ext": 550, "dead": 550, "nobody": 550,
        "postmaster": 250,
    }  # fmt: skip
