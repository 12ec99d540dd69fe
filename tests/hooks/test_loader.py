"""Issue 3, point 2: handler names, Python paths, options, and what stops the start."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kittiwake.config import ConfigError, load_config
from kittiwake.hooks.handlers.connection import MaxUnknownCmdHandler
from kittiwake.hooks.handlers.greylist import GreylistHandler
from kittiwake.hooks.handlers.recipients import MaxRcptHandler, ValidRcptHandler
from kittiwake.hooks.loader import PROVIDED, LoadedChains, load_chains
from kittiwake.hooks.options import HandlerOptions, OptionError, parse_duration, parse_networks
from kittiwake.hooks.ratelimit import RateLimitHandler

J = "org.apache.james.smtpserver."


def load(
    tmp_path: Path, chain: str, attrs: str = "", files: dict[str, str] | None = None
) -> LoadedChains:
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    (conf / "smtpserver.xml").write_text(
        "<smtpservers><smtpserver><jmxName>smtp</jmxName><bind>127.0.0.1:2525</bind>"
        f"<handlerchain{attrs}>{chain}</handlerchain></smtpserver></smtpservers>"
    )
    for name, text in (files or {}).items():
        (conf / name).write_text(text)
    return load_chains(load_config(conf))


def error(tmp_path: Path, chain: str, **kw: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, chain, **kw)  # type: ignore[arg-type]
    return exc.value


@pytest.mark.parametrize(
    "name",
    [
        J + "fastfail.MaxRcptHandler",
        J + "core.filter.fastfail.MaxRcptHandler",  # James 2.x
        "org.apache.james.protocols.smtp.core.fastfail.MaxRcptHandler",
        "MaxRcptHandler",
        "kittiwake.hooks.handlers.recipients.MaxRcptHandler",
        "kittiwake.hooks.handlers.recipients:MaxRcptHandler",
    ],
)
def test_james_names_and_python_paths(tmp_path: Path, name: str) -> None:
    chains = load(tmp_path, f'<handler class="{name}"><maxRcpt>3</maxRcpt></handler>')
    (hook,) = chains.chains["smtp"].hooks
    assert isinstance(hook, MaxRcptHandler) and hook.max == 3
    assert chains.notes == ()


def test_every_provided_name_resolves(tmp_path: Path) -> None:
    import importlib

    for target in set(PROVIDED.values()):
        module, _, cls = target.partition(":")
        assert hasattr(importlib.import_module(module), cls), target


def test_core_loaders_add_no_hook_and_configured_ones_keep_their_order(tmp_path: Path) -> None:
    chains = load(
        tmp_path,
        f'<handler class="{J}fastfail.ValidRcptHandler"/>'
        f'<handler class="{J}CoreCmdHandlerLoader"/>'
        f'<handler class="{J}fastfail.MaxUnknownCmdHandler"/>'
        f'<handler class="{J}SendMailHandler"/>',
        attrs=f' coreHandlersPackage="{J}NoAuthCmdHandlerLoader"',
    )
    hooks = chains.chains["smtp"].hooks
    assert [type(h) for h in hooks] == [ValidRcptHandler, MaxUnknownCmdHandler]
    assert hooks[1].max == 5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("chain", "element", "reason"),
    [
        (
            f'<handler class="{J}fastfail.URIRBLHandler"/>',
            f'<handler class="{J}fastfail.URIRBLHandler">',
            "James handler 'URIRBLHandler' is not provided by kittiwake; provided: ",
        ),
        ('<handler class="NoSuchHandler"/>', "", "'NoSuchHandler' is not provided"),
        ('<handler class="no_such_module.Hook"/>', "", "cannot import module 'no_such_module'"),
        ('<handler class="kittiwake.hooks.api.Nope"/>', "", "has no 'Nope'"),
        ('<handler class="kittiwake.hooks.api.HEADER_LIMIT"/>', "", "is not a class"),
        ('<handler class="kittiwake.hooks.options.HandlerOptions"/>', "", "is not a hook"),
        (
            f'<handler class="{J}fastfail.MaxRcptHandler"/>',
            f'<handler class="{J}fastfail.MaxRcptHandler">/<maxRcpt>',
            "is required",
        ),
        (
            f'<handler class="{J}fastfail.MaxRcptHandler"><maxRcpt>0</maxRcpt></handler>',
            "/<maxRcpt>",
            "0 is less than 1",
        ),
        (
            f'<handler class="{J}fastfail.ValidRcptHandler"><recipientRewriteTableCheck>'
            "someMapping</recipientRewriteTableCheck></handler>",
            "/<recipientRewriteTableCheck>",
            "'someMapping' is not one of mappingExists",
        ),
        (
            f'<handler class="{J}fastfail.JDBCGreylistHandler"><tempBlockTime>1 fortnight'
            "</tempBlockTime></handler>",
            "/<tempBlockTime>",
            "unknown unit 'fortnight'",
        ),
        (
            f'<handler class="{J}fastfail.DNSRBLHandler"/>',
            "/<rblservers>",
            "at least one <blacklist>",
        ),
        (
            f'<handler class="{J}netty.MaxConnectionLifespanHandler"/>',
            "/<duration>",
            "is required",
        ),
        (
            f'<handler class="{J}SetMimeHeaderHandler"><headername>X</headername></handler>',
            "/<headervalue>",
            "is required",
        ),
        (
            f'<handler class="{J}fastfail.AllowedUnauthenticatedSender"><allowedSenders>'
            '<allowedSender fromIps="10.0.0.0/33">a@b.test</allowedSender></allowedSenders>'
            "</handler>",
            "/<allowedSenders>/<allowedSender>/@fromIps",
            "'10.0.0.0/33' is not an address or network",
        ),
        (
            '<handler class="RateLimitHandler"><whitelistedNetworks>10.*.1</whitelistedNetworks>'
            "</handler>",
            "/<whitelistedNetworks>",
            "wildcard",
        ),
    ],
)
def test_what_stops_the_start(tmp_path: Path, chain: str, element: str, reason: str) -> None:
    err = error(tmp_path, chain)
    (problem,) = err.problems
    assert problem.file == "smtpserver.xml"
    assert problem.element.startswith('<smtpserver name="smtp">/<handlerchain>/<handler class=')
    if element:
        assert problem.element.endswith(element), problem.element
    assert reason in problem.reason, problem.reason


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    err = error(tmp_path, '<handler class="A"/><handler class="b.C"/><handler class="D"/>')
    assert len(err.problems) == 3


def test_a_hook_from_the_configuration_directory(tmp_path: Path) -> None:
    source = '''
from kittiwake.hooks.api import Hook
from kittiwake.hooks.result import DECLINED


class Plain:
    """Not a Hook subclass and no options: duck typing is enough."""

    async def on_rcpt(self, session, rcpt):
        return DECLINED


class WithOptions(Hook):
    def __init__(self, options):
        super().__init__(options)
        self.level = options.integer("level", 1)
        self.names = options.texts("name")


class Sync(Hook):
    def on_rcpt(self, session, rcpt):
        return DECLINED
'''
    module = f"kw_test_hooks_{abs(hash(str(tmp_path)))}"
    try:
        chains = load(
            tmp_path,
            f'<handler class="{module}.Plain"/>'
            f'<handler class="{module}:WithOptions"><level>3</level><name>a</name>'
            "<name>b</name><unused>1</unused></handler>",
            files={f"{module}.py": source},
        )
        plain, with_options = chains.chains["smtp"].hooks
        assert type(plain).__name__ == "Plain"
        assert with_options.level == 3 and with_options.names == ["a", "b"]  # type: ignore[attr-defined]
        assert chains.notes == (
            f'smtpserver.xml: <smtpserver name="smtp">/<handlerchain>/<handler class="{module}:'
            'WithOptions">/<unused> (not read by the handler)',
        )
        err = error(tmp_path, f'<handler class="{module}.Sync"/>')
        assert "Sync.on_rcpt must be a coroutine function" in err.reason
    finally:
        sys.modules.pop(module, None)


def test_options_values() -> None:
    assert parse_duration("1 hour") == 3600
    assert parse_duration("36 days") == 36 * 86400
    assert parse_duration("4320000") == 4320  # James: plain numbers are milliseconds
    assert parse_duration("30", "s") == 30
    assert parse_duration("5m") == 300 and parse_duration("250ms") == 0.25
    assert [str(n) for n in parse_networks("127.0.0.1, 10.0.0.0/8 192.168.*,::1")] == [
        "127.0.0.1/32",
        "10.0.0.0/8",
        "192.168.0.0/16",
        "::1/128",
    ]
    assert [str(n) for n in parse_networks("172.16.0.0/255.240.0.0")] == ["172.16.0.0/12"]


def test_option_error_paths() -> None:
    from kittiwake.config.model import OptionNode

    node = OptionNode(
        "handler",
        children=(OptionNode("outer", children=(OptionNode("inner", "x"),)),),
    )
    options = HandlerOptions(node)
    outer = options.child("outer")
    assert outer is not None
    with pytest.raises(OptionError) as exc:
        outer.integer("inner")
    assert exc.value.where == "<outer>/<inner>"
    with pytest.raises(OptionError):
        options.text("outer")  # has children: not a plain value


def test_greylist_and_ratelimit_defaults() -> None:
    grey = GreylistHandler(HandlerOptions())
    times = grey.times
    assert (times.temp_block, times.whitelist_life, times.unseen_life) == (
        3600,
        36 * 86400,
        4 * 3600,
    )
    rate = RateLimitHandler(HandlerOptions())
    assert rate.connections is None and rate.messages is None


def test_the_documented_example_works(tmp_path: Path) -> None:
    """docs/hooks.md's worked example: its hook file and its smtpserver.xml, as printed."""
    import asyncio
    import re

    from kittiwake.hooks.api import Message, SessionInfo
    from kittiwake.protocol import MailFrom

    doc = (Path(__file__).parents[2] / "docs" / "hooks.md").read_text()
    section = doc[doc.index("## Writing your own") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    chain = re.search(r"```xml\n<handlerchain>\n(.*?)</handlerchain>\n```", section, re.S)
    assert code is not None and chain is not None
    module = f"myhooks_{abs(hash(str(tmp_path)))}"
    xml = chain.group(1).replace('class="myhooks.', f'class="{module}.')
    try:
        chains = load(tmp_path, xml, files={f"{module}.py": code.group(1)})
        (hook,) = chains.chains["smtp"].hooks
        assert chains.notes == ()
        session = SessionInfo("smtp", "SMTP", "192.0.2.1", 1, "t.1", helo="mail-x.gmail.com")

        async def run() -> None:
            refused = await hook.on_mail(session, MailFrom("ceo@example.org"))  # type: ignore[attr-defined]
            assert refused.refusal().code == 550
            ok = await hook.on_mail(session, MailFrom("someone@gmail.com"))  # type: ignore[attr-defined]
            assert not ok.refused
            message = Message("q", 10, b"Subject: x\r\n\r\n", True)
            await hook.on_message(session, message)  # type: ignore[attr-defined]
            assert message.edits == [("X-Screened-By", "yes; client=192.0.2.1", False)]

        asyncio.run(run())
    finally:
        sys.modules.pop(module, None)


def test_config_check_names_the_chain_and_the_resolvers(tmp_path: Path) -> None:
    from kittiwake.config import format_report

    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "smtpserver.xml").write_text(
        "<smtpservers><smtpserver><jmxName>smtp</jmxName><bind>127.0.0.1:2525</bind>"
        f'<handlerchain coreHandlersPackage="{J}NoAuthCmdHandlerLoader">'
        f'<handler class="{J}fastfail.ValidRcptHandler"/><handler class="RateLimitHandler"/>'
        "</handlerchain></smtpserver></smtpservers>"
    )
    (conf / "dnsservice.xml").write_text(
        "<dnsservice><servers><server>127.0.0.1:5353</server></servers>"
        "<autodiscover>false</autodiscover></dnsservice>"
    )
    report = format_report(load_config(conf))
    assert "    handlers: ValidRcptHandler, RateLimitHandler (core: NoAuthCmdHandlerLoader)" in (
        report.splitlines()
    )
    assert "dns: 127.0.0.1:5353; timeout 5 s" in report.splitlines()
