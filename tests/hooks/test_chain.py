"""The hook contract (issue 3, point 1): the chain runner and the session's use of it."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from kw_hooks_helpers import data, greet, mail, rcpt, session, spooled

from kittiwake.hooks.api import Hook, Message, SessionInfo
from kittiwake.hooks.chain import Chain
from kittiwake.hooks.result import DECLINED, DENY, DENYSOFT, OK, Action, HookResult
from kittiwake.protocol import MailFrom, RcptTo, Reply

pytestmark = pytest.mark.timeout(30)
CUSTOM = Reply(550, "5.7.0", "Not from you")


class Answer(Hook):
    """Answers ``result`` at every point and records the calls."""

    def __init__(self, result: HookResult, calls: list[str] | None = None) -> None:
        super().__init__()
        self.result = result
        self.calls = calls if calls is not None else []

    async def on_connect(self, session: SessionInfo) -> HookResult:
        self.calls.append(f"{id(self)}:connect")
        return self.result

    async def on_helo(self, session: SessionInfo, name: str) -> HookResult:
        self.calls.append(f"{id(self)}:helo")
        return self.result

    async def on_mail(self, session: SessionInfo, mail: MailFrom) -> HookResult:
        self.calls.append(f"{id(self)}:mail")
        return self.result

    async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
        self.calls.append(f"{id(self)}:rcpt")
        return self.result

    async def on_message(self, session: SessionInfo, message: Message) -> HookResult:
        self.calls.append(f"{id(self)}:message")
        return self.result

    async def on_quit(self, session: SessionInfo) -> HookResult:
        return self.result

    async def on_unknown(self, session: SessionInfo, verb: str) -> HookResult:
        return self.result


def info() -> SessionInfo:
    return SessionInfo("smtp", "SMTP", "192.0.2.1", 1234, "t.1")


# ---- the runner ---------------------------------------------------------------------


async def test_declined_passes_on_and_the_first_answer_wins() -> None:
    calls: list[str] = []
    a, b, c = Answer(DECLINED, calls), Answer(DENY, calls), Answer(OK, calls)
    result = await Chain([a, b, c]).run("on_rcpt", info(), RcptTo("x@y.test"))
    assert result is DENY
    assert calls == [f"{id(a)}:rcpt", f"{id(b)}:rcpt"]  # c never asked


async def test_all_declined_is_declined_and_no_hook_is_declined() -> None:
    assert await Chain([Answer(DECLINED)]).run("on_helo", info(), "x") is DECLINED
    assert await Chain([]).run("on_helo", info(), "x") is DECLINED
    assert await Chain([Hook()]).run("on_rcpt", info(), RcptTo("x@y.test")) is DECLINED


def test_only_implemented_points_are_asked() -> None:
    class RcptOnly(Hook):
        async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
            return DECLINED

    chain = Chain([RcptOnly()])
    assert chain.wants("on_rcpt")
    assert not chain.wants("on_mail") and not chain.wants("on_message")


def test_default_refusals() -> None:
    assert DENY.refusal() == Reply(554, "5.7.1", "Rejected")
    assert DENYSOFT.refusal().code == 451 and DENYSOFT.refusal().status == "4.7.1"
    assert HookResult.deny(CUSTOM).refusal() is CUSTOM


async def test_a_hook_that_raises_gets_451_430_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Hook):
        async def on_mail(self, session: SessionInfo, mail: MailFrom) -> HookResult:
            raise RuntimeError("database is down")

    after = Answer(OK)
    chain = Chain([Broken(), after])
    with caplog.at_level(logging.ERROR, "kittiwake.hooks"):
        result = await chain.run("on_mail", info(), MailFrom("a@b.test"))
    assert result.refusal() == Reply(451, "4.3.0", "Local error in processing, try again later")
    assert not after.calls  # the chain stops at the failure
    assert "hook Broken.on_mail failed" in caplog.text and "database is down" in caplog.text
    assert chain.stats[("Broken", "on_mail")].answers == {"DENYSOFT": 1}


async def test_a_hook_that_returns_garbage_or_hangs_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Garbage(Hook):
        async def on_helo(self, session: SessionInfo, name: str) -> HookResult:
            return "OK"  # type: ignore[return-value]

    class Hangs(Hook):
        async def on_helo(self, session: SessionInfo, name: str) -> HookResult:
            await asyncio.sleep(60)
            return DECLINED

    assert (await Chain([Garbage()]).run("on_helo", info(), "x")).reply is not None
    started = time.monotonic()
    result = await Chain([Hangs()], timeout=0.2).run("on_helo", info(), "x")
    assert time.monotonic() - started < 2
    assert result.refusal().status == "4.3.0"
    assert "took longer than 0.2s" in caplog.text


async def test_a_slow_hook_does_not_block_other_sessions() -> None:
    class Slow(Hook):
        async def on_rcpt(self, session: SessionInfo, rcpt: RcptTo) -> HookResult:
            if rcpt.address.startswith("slow"):
                await asyncio.sleep(1.0)
            return DECLINED

    chain = Chain([Slow()])
    slow = asyncio.ensure_future(chain.run("on_rcpt", info(), RcptTo("slow@x.test")))
    started = time.monotonic()
    for _ in range(50):
        await chain.run("on_rcpt", info(), RcptTo("fast@x.test"))
    assert time.monotonic() - started < 0.5
    assert not slow.done()
    await slow


async def test_disconnect_hooks_all_run_and_never_raise() -> None:
    seen: list[str] = []

    class Bad(Hook):
        async def on_disconnect(self, session: SessionInfo) -> None:
            raise RuntimeError("boom")

    class Good(Hook):
        async def on_disconnect(self, session: SessionInfo) -> None:
            seen.append("good")

    await Chain([Bad(), Good()]).disconnected(info())
    assert seen == ["good"]


async def test_mail_parameter_hooks_are_asked_only_for_their_names() -> None:
    asked: list[tuple[str, str | None]] = []

    class Param(Hook):
        mail_parameters = frozenset({"XFOO"})

        async def on_mail_parameter(
            self, session: SessionInfo, name: str, value: str | None
        ) -> HookResult:
            asked.append((name, value))
            return HookResult.deny(CUSTOM) if value == "bad" else DECLINED

    chain = Chain([Param()])
    assert chain.mail_parameters == {"XFOO"}
    assert await chain.run_mail_parameter(info(), "SIZE", "10") is DECLINED
    assert (await chain.run_mail_parameter(info(), "XFOO", "bad")).refusal() is CUSTOM
    assert asked == [("XFOO", "bad")]


# ---- the session: James's semantics plus the mandatory rules -------------------------


async def test_ok_from_a_hook_never_opens_relaying(tmp_path: Path) -> None:
    """Issue 3, point 5: OK to a non-local recipient from an unauthenticated client
    still gets the relay refusal."""
    async with session(tmp_path, [Answer(OK)]) as s:
        await greet(s)
        assert (await mail(s)).code == 250
        reply = await rcpt(s, "victim@elsewhere.test")
        assert (reply.code, reply.status) == (550, "5.7.1")
        assert (await rcpt(s, "nobody@kittiwake.test")).status == "5.1.1"  # unknown user
        assert (await rcpt(s, "alice@kittiwake.test")).code == 250  # core rule passes


async def test_ok_from_a_hook_never_skips_auth_required(tmp_path: Path) -> None:
    """auth.required (a submission port): an anonymous MAIL FROM gets 530 even when a
    hook says OK."""
    async with session(tmp_path, [Answer(OK)], ctx_kw={"auth_required": True}) as s:
        await greet(s)
        reply = await mail(s, "alice@kittiwake.test")
        assert (reply.code, reply.status) == (530, "5.7.0")


async def test_deny_and_denysoft_with_own_reply_and_defaults(tmp_path: Path) -> None:
    async with session(tmp_path, [Answer(HookResult.deny(CUSTOM))]) as s:
        assert await greet(s) == CUSTOM
    async with session(tmp_path / "b", [Answer(DENYSOFT)]) as s:
        assert (await greet(s)).code == 451


async def test_disconnect_is_passed_to_the_listener(tmp_path: Path) -> None:
    async with session(tmp_path, [Answer(HookResult(Action.OK, disconnect=True))]) as s:
        assert (await greet(s)).code == 250  # the core's reply, then the close
        assert s.disconnect


async def test_connect_refusal_and_failure(tmp_path: Path) -> None:
    async with session(tmp_path, [Answer(HookResult.deny(CUSTOM))]) as s:
        assert await s.start() == CUSTOM and s.disconnect
    async with session(tmp_path / "b", [Answer(DECLINED)]) as s:
        assert await s.start() is None and not s.disconnect

    class Broken(Hook):
        async def on_connect(self, session: SessionInfo) -> HookResult:
            raise OSError("no")

    async with session(tmp_path / "c", [Broken()]) as s:
        reply = await s.start()
        assert reply is not None and (reply.code, reply.status) == (421, "4.3.0")


async def test_quit_and_unknown(tmp_path: Path) -> None:
    from kittiwake.protocol import Quit, Unknown

    async with session(tmp_path, [Answer(HookResult.deny(CUSTOM))]) as s:
        assert await s.decide(Unknown("XYZZY", "")) == CUSTOM
        assert await s.decide(Quit()) == CUSTOM
    async with session(tmp_path / "b", [Answer(OK)]) as s:
        reply = await s.decide(Unknown("XYZZY", ""))
        assert isinstance(reply, Reply) and reply.code == 500  # OK runs the core: unknown


async def test_auth_result_can_refuse_a_success_never_grant_a_failure(tmp_path: Path) -> None:
    results: list[tuple[str, str | None, bool]] = []

    class Auth(Hook):
        async def on_auth(
            self, session: SessionInfo, mechanism: str, user: str | None, success: bool
        ) -> HookResult:
            results.append((mechanism, user, success))
            return HookResult.deny(CUSTOM) if user == "mallory" else OK

    async with session(tmp_path, [Auth()]) as s:
        assert await s.auth_result("PLAIN", "alice", True) is None
        assert await s.auth_result("PLAIN", "mallory", True) == CUSTOM
        assert await s.auth_result("LOGIN", "bob", False) is None  # the 535 stands
    assert results[-1] == ("LOGIN", "bob", False)


async def test_mail_parameter_refusal_comes_before_mail_hooks(tmp_path: Path) -> None:
    calls: list[str] = []

    class Param(Hook):
        mail_parameters = frozenset({"XFOO"})

        async def on_mail_parameter(
            self, session: SessionInfo, name: str, value: str | None
        ) -> HookResult:
            calls.append(f"param {name}={value}")
            return HookResult.denysoft() if value == "no" else DECLINED

    async with session(tmp_path, [Param(), Answer(DECLINED, calls)]) as s:
        await greet(s)
        assert (await mail(s, XFOO="no")).code == 451
        assert (await mail(s, XFOO="yes")).code == 250
    assert [c for c in calls if not c.endswith(":helo")][:3] == [
        "param XFOO=no",
        "param XFOO=yes",
        calls[-1],
    ]
    assert calls[-1].endswith(":mail")  # MAIL hooks only after the parameter passed


class Headers(Hook):
    def __init__(self, *edits: tuple[str, str, bool]) -> None:
        super().__init__()
        self.edits = edits
        self.seen: list[Message] = []

    async def on_message(self, session: SessionInfo, message: Message) -> HookResult:
        self.seen.append(message)
        for name, value, replace in self.edits:
            (message.set_header if replace else message.add_header)(name, value)
        return DECLINED


TEXT = b"Subject: hi\r\nX-Tag: old\r\n\tfolded\r\nFrom: a@b.test\r\n\r\nbody\r\n"


@pytest.mark.parametrize("size", [len(TEXT), 200_000])
async def test_message_hooks_see_the_header_and_edit_it(tmp_path: Path, size: int) -> None:
    """In memory and spilled to the file (past the spool's 64 KiB threshold)."""
    text = TEXT + b"x" * (size - len(TEXT) - 2) + b"\r\n" if size > len(TEXT) else TEXT
    hook = Headers(("X-Added", "1", False), ("X-Tag", "new", True))
    async with session(tmp_path, [hook]) as s:
        await greet(s)
        await mail(s)
        await rcpt(s, "alice@kittiwake.test")
        assert (await data(s, text, chunk=7)).code == 250
    (message,) = hook.seen
    assert message.header_complete
    assert message.header == TEXT[: TEXT.index(b"\r\n\r\n") + 4]
    assert message.get_all("X-Tag") == ["old\tfolded"]
    (spooled_text,) = spooled(tmp_path)
    client = spooled_text[spooled_text.index(b"X-Added") :]
    assert client.startswith(b"X-Added: 1\r\nX-Tag: new\r\nSubject: hi\r\nFrom: a@b.test\r\n\r\n")
    assert b"old" not in client and client.endswith(text[text.index(b"\r\n\r\n") + 4 :])


async def test_a_message_without_header_or_without_body(tmp_path: Path) -> None:
    for i, text in enumerate((b"\r\njust a body\r\n", b"Subject: only\r\n")):
        hook = Headers(("X-Added", "1", True))
        async with session(tmp_path / str(i), [hook]) as s:
            await greet(s)
            await mail(s)
            await rcpt(s, "alice@kittiwake.test")
            assert (await data(s, text)).code == 250
        assert hook.seen[0].header_complete
        (out,) = spooled(tmp_path / str(i))
        assert out.endswith(b"X-Added: 1\r\n" + text)


async def test_message_refusal_queues_nothing(tmp_path: Path) -> None:
    async with session(tmp_path, [Answer(HookResult.deny(CUSTOM))]) as s:
        s.ctx.hooks._by_point["on_helo"] = ()  # let the greeting through
        s.ctx.hooks._by_point["on_mail"] = ()
        s.ctx.hooks._by_point["on_rcpt"] = ()
        await greet(s)
        await mail(s)
        await rcpt(s, "alice@kittiwake.test")
        assert await data(s, TEXT) == CUSTOM
    assert spooled(tmp_path) == []


def test_message_header_names_and_values_are_checked() -> None:
    message = Message("q", 0, b"", True)
    with pytest.raises(ValueError):
        message.add_header("Bad Name", "x")
    with pytest.raises(ValueError):
        message.set_header("X-Ok", "two\r\nlines")
    with pytest.raises(RuntimeError):
        message.path()


async def test_hooks_that_wait_several_times_or_fail_after_waiting() -> None:
    class Steps(Hook):
        async def on_helo(self, session: SessionInfo, name: str) -> HookResult:
            for _ in range(3):
                await asyncio.sleep(0)
            fut: asyncio.Future[HookResult] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(fut.set_result, HookResult.deny(CUSTOM))
            return await fut

    class LateFailure(Hook):
        async def on_helo(self, session: SessionInfo, name: str) -> HookResult:
            await asyncio.sleep(0.01)
            raise ValueError("late")

    assert (await Chain([Steps()]).run("on_helo", info(), "x")).refusal() is CUSTOM
    result = await Chain([LateFailure()]).run("on_helo", info(), "x")
    assert result.refusal().status == "4.3.0"
