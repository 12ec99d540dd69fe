"""RemoteDelivery's connections (issue 8, point 3), counted at an aiosmtpd destination
on 127.0.0.2 found through the loopback DNS server: one connection carries several
mails, at most maxConnectionsPerDomain are open per destination (across processes too),
idle ones are closed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kittiwake.mailet.remote_pool import ConnectionPool, Slot
from kw_dns import TestDns

from .remote_helpers import Context, Destination, deliver, mailet_with, make_mail


@pytest.fixture
def dest() -> Iterator[Destination]:
    d = Destination()
    yield d.start()
    d.stop()


def _mx(dns: TestDns, domain: str, host: str = "127.0.0.2") -> None:
    dns.add(domain, "MX", f"10 mx.{domain}")
    dns.add(f"mx.{domain}", "A", host)


def test_one_connection_carries_several_mails(
    tmp_path: Path, dns_server: TestDns, dest: Destination
) -> None:
    _mx(dns_server, "reuse.pool.test")
    ctx = Context(tmp_path / "repositories")
    mailet = mailet_with(ctx, **{"mail.smtp.port": str(dest.port), "deliveryThreads": "1"})
    assert mailet.max_connections == 10  # the default
    for i in range(5):
        mailet.service(make_mail(f"R{i}", [f"carol{i}@reuse.pool.test"], subject=f"m{i}"))
    assert deliver(mailet, dns_server) == []
    assert len(dest.messages) == 5
    assert sorted(m.rcpts[0] for m in dest.messages) == [
        f"carol{i}@reuse.pool.test" for i in range(5)
    ]
    assert dest.connections == 1 and mailet.pool.opened == 1
    # back from a transaction a moment ago: reused without an RSET round trip (the 250
    # to the data reset the server's state, RFC 5321 4.1.1.4)
    assert dest.rsets == 0
    dest.settled()
    assert dest.open == 0  # closed at stop


def test_a_connection_idle_for_a_while_is_checked_with_rset(
    tmp_path: Path, dns_server: TestDns, dest: Destination, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 5321 4.1.1.5: a kept connection that sat idle gets an RSET before its next
    mail (a clean state, and proof the server is still there)."""
    from kittiwake.mailet import remote

    monkeypatch.setattr(remote, "_FRESH_IDLE", 0.0)  # every reuse counts as idle
    _mx(dns_server, "idle.pool.test")
    ctx = Context(tmp_path / "repositories")
    mailet = mailet_with(ctx, **{"mail.smtp.port": str(dest.port), "deliveryThreads": "1"})
    for i in range(4):
        mailet.service(make_mail(f"I{i}", [f"carol{i}@idle.pool.test"], subject=f"m{i}"))
    assert deliver(mailet, dns_server) == []
    assert len(dest.messages) == 4
    assert dest.connections == 1 and dest.rsets == 3


def test_a_connection_the_server_closed_is_not_reused(tmp_path: Path, dns_server: TestDns) -> None:
    """A server that hangs up after each message (some do, with or without a 421):
    every mail goes on a new connection, none is deferred for it."""

    class Hangup(Destination):
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            reply = await super().handle_DATA(server, session, envelope)
            asyncio.get_running_loop().call_soon(server.transport.close)
            return reply

    dest = Hangup().start()
    try:
        _mx(dns_server, "hangup.pool.test")
        ctx = Context(tmp_path / "repositories")
        mailet = mailet_with(ctx, **{"mail.smtp.port": str(dest.port), "deliveryThreads": "1"})
        for i in range(4):
            mailet.service(make_mail(f"H{i}", [f"carol{i}@hangup.pool.test"], subject=f"m{i}"))
        assert deliver(mailet, dns_server) == []
        assert len(dest.messages) == 4 and dest.connections == 4
    finally:
        dest.stop()


def test_recipients_of_one_domain_go_in_one_transaction(
    tmp_path: Path, dns_server: TestDns, dest: Destination
) -> None:
    _mx(dns_server, "group.pool.test")
    ctx = Context(tmp_path / "repositories")
    mailet = mailet_with(ctx, **{"mail.smtp.port": str(dest.port)})
    rcpts = [f"r{i}@group.pool.test" for i in range(4)]
    mailet.service(make_mail("G1", rcpts))
    deliver(mailet, dns_server)
    assert [m.rcpts for m in dest.messages] == [rcpts]


def test_messages_per_connection_and_idle_close(
    tmp_path: Path, dns_server: TestDns, dest: Destination
) -> None:
    _mx(dns_server, "count.pool.test")
    ctx = Context(tmp_path / "repositories")
    mailet = mailet_with(
        ctx,
        **{
            "mail.smtp.port": str(dest.port),
            "maxMessagesPerConnection": "2",
            "connectionIdleTime": "300",
        },
    )
    for i in range(5):
        mailet.service(make_mail(f"C{i}", [f"dan{i}@count.pool.test"]))
    closed_while_running: list[bool] = []

    def idle_closed() -> bool:
        if len(mailet.repo) == 0 and len(dest.messages) == 5 and dest.open == 0:
            closed_while_running.append(True)
            return True
        return False

    deliver(mailet, dns_server, until=idle_closed)
    assert len(dest.messages) == 5
    assert dest.connections == 3  # 2 + 2 + 1
    assert closed_while_running  # the last one closed by the idle timer, not by stop


def test_at_most_max_connections_per_domain(tmp_path: Path, dns_server: TestDns) -> None:
    # the destination holds each DATA for a while, so that every delivery thread wants
    # a connection at once
    dest = Destination(hold=0.6).start()
    try:
        _mx(dns_server, "limit.pool.test")
        _mx(dns_server, "other.pool.test")
        ctx = Context(tmp_path / "repositories")
        mailet = mailet_with(
            ctx,
            **{
                "mail.smtp.port": str(dest.port),
                "deliveryThreads": "12",
                "maxConnectionsPerDomain": "3",
            },
        )
        for i in range(10):
            mailet.service(make_mail(f"L{i:02}", [f"erin{i}@limit.pool.test"]))
        mailet.service(make_mail("O1", ["frank@other.pool.test"]))
        deliver(mailet, dns_server, timeout=60)
        assert len(dest.messages) == 11
        # 3 for limit.pool.test, reused by the other 7 mails; 1 for other.pool.test,
        # which the full domain did not hold up
        assert dest.connections == 4
        assert dest.most_open == 4
    finally:
        dest.stop()


_CHILD = """
import asyncio, sys
from pathlib import Path
from kittiwake.mailet.remote_pool import ConnectionPool

async def main():
    pool = ConnectionPool(2, 0, 1.0, Path(sys.argv[1]))
    pool.start()
    held = [await pool.lease("shared.pool.test", "192.0.2.1", 25) for _ in range(2)]
    print("held", len(held), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await pool.stop()

asyncio.run(main())
"""


def test_slots_are_counted_across_worker_processes(tmp_path: Path) -> None:
    lock = tmp_path / "outgoing" / ".connections"
    lock.parent.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "held 2"

        async def here() -> None:
            pool = ConnectionPool(2, 0, 1.0, lock)
            pool.start()
            try:
                # the other process holds both slots of this destination
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(pool.lease("shared.pool.test", "192.0.2.1", 25), 0.6)
                other = await pool.lease("another.pool.test", "192.0.2.1", 25)
                assert isinstance(other, Slot)
                assert child.stdin is not None
                child.stdin.write("\n")
                child.stdin.flush()
                got = await asyncio.wait_for(pool.lease("shared.pool.test", "192.0.2.1", 25), 10)
                assert isinstance(got, Slot) and pool.in_use("shared.pool.test") == 1
            finally:
                await pool.stop()

        asyncio.run(here())
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


_IDLE_CHILD = """
import asyncio, sys
from pathlib import Path
from kittiwake.mailet.remote_pool import ConnectionPool

class Kept:  # stands for an open aiosmtplib.SMTP (is_connected, quit, close)
    is_connected = True
    async def quit(self):
        pass
    def close(self):
        print("closed", flush=True)

async def main():
    pool = ConnectionPool(2, 0, 60.0, Path(sys.argv[1]))  # kept idle for a minute
    pool.start()
    slots = [await pool.lease("shared.pool.test", "192.0.2.1", 25) for _ in range(2)]
    for slot in slots:
        pool.put_back(pool.opened_with(Kept(), slot, "192.0.2.1", 25))
    print("idle", len(pool._idle["shared.pool.test"]), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await pool.stop()

asyncio.run(main())
"""


def test_slots_kept_idle_by_another_process_are_given_up_to_a_waiting_one(
    tmp_path: Path,
) -> None:
    """Another worker keeps every slot of a destination idle (connectionIdleTime one
    minute): a worker that needs one says so on the want byte, and the other closes an
    idle connection for it within a fraction of a second."""
    lock = tmp_path / "outgoing" / ".connections"
    lock.parent.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", _IDLE_CHILD, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "idle 2"

        async def here() -> float:
            pool = ConnectionPool(2, 0, 1.0, lock)
            pool.start()
            try:
                started = time.monotonic()
                got = await asyncio.wait_for(pool.lease("shared.pool.test", "192.0.2.1", 25), 10)
                assert isinstance(got, Slot)
                assert pool.wanted_elsewhere("shared.pool.test") is False  # no one waits
                return time.monotonic() - started
            finally:
                await pool.stop()

        waited = asyncio.run(here())
        assert waited < 2.0
        assert child.stdout.readline().strip() == "closed"
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_kept_connection_found_gone_at_mail_takes_another(
    tmp_path: Path, dns_server: TestDns
) -> None:
    """A connection reused at once (no RSET) that the server drops when the next MAIL
    comes, without a word: the mail goes on a new connection, not deferred."""

    class DropSecond(Destination):
        async def handle_MAIL(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
            if getattr(session, "carried", False):
                server.transport.abort()  # as a server that was gone
                return "421 4.4.2 not sent"
            session.carried = True
            envelope.mail_from = address
            envelope.mail_options.extend(options)
            return "250 OK"

    dest = DropSecond().start()
    try:
        _mx(dns_server, "drop.pool.test")
        ctx = Context(tmp_path / "repositories")
        mailet = mailet_with(ctx, **{"mail.smtp.port": str(dest.port), "deliveryThreads": "1"})
        for i in range(3):
            mailet.service(make_mail(f"D{i}", [f"carol{i}@drop.pool.test"], subject=f"m{i}"))
        assert deliver(mailet, dns_server) == []
        assert len(dest.messages) == 3 and dest.connections == 3
        assert not list((tmp_path / "repositories").rglob("*.retry"))  # none deferred
    finally:
        dest.stop()
