"""From ``<handlerchain>`` to a :class:`~kittiwake.hooks.chain.Chain` per listener.

A ``<handler class="...">`` names either

* a James handler, by its class name (``org.apache.james.smtpserver.fastfail.
  MaxRcptHandler``; the James 2.x ``core.filter.fastfail`` and the
  ``protocols.smtp.core.fastfail`` packages, or the bare class name, work too), mapped
  to kittiwake's implementation in :data:`PROVIDED`; James's core loaders and core
  command handlers (:data:`CORE`) are kittiwake's built-in core and add nothing;
* or a Python class, ``package.module:Class`` or ``package.module.Class``: an
  administrator's own hook. The configuration directory is on the import path, so a
  ``myhooks.py`` next to ``smtpserver.xml`` loads as ``myhooks.MyHook``.

The class is called with the handler's options (:class:`HandlerOptions`), or with no
argument if it takes none. A class name kittiwake does not know, a module that does
not import, a bad or missing option: each stops the start with file, element and
reason (:class:`~kittiwake.config.ConfigError`). Options a handler never read are
returned as notes, named at start like other options kittiwake does not act on.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kittiwake.config._errors import ConfigError, Problem
from kittiwake.config.model import Config, HandlerConfig, ListenerConfig

from .api import Hook
from .chain import HOOK_POINTS, Chain
from .options import HandlerOptions, OptionError

__all__ = ["CORE", "PROVIDED", "LoadedChains", "load_chain", "load_chains"]

_H = "kittiwake.hooks.handlers."
#: James's handler names -> kittiwake's implementations ("module:Class")
PROVIDED: dict[str, str] = {
    "ValidRcptHandler": _H + "recipients:ValidRcptHandler",
    "MaxRcptHandler": _H + "recipients:MaxRcptHandler",
    "SpamTrapHandler": _H + "recipients:SpamTrapHandler",
    "MaxUnknownCmdHandler": _H + "connection:MaxUnknownCmdHandler",
    "MaxConnectionLifespanHandler": _H + "connection:MaxConnectionLifespanHandler",
    "DNSRBLHandler": _H + "dnscheck:DNSRBLHandler",
    "ResolvableEhloHeloHandler": _H + "dnscheck:ResolvableEhloHeloHandler",
    "ReverseEqualsEhloHeloHandler": _H + "dnscheck:ReverseEqualsEhloHeloHandler",
    "ValidSenderDomainHandler": _H + "dnscheck:ValidSenderDomainHandler",
    "SPFHandler": _H + "spf:SPFHandler",
    "JDBCGreylistHandler": _H + "greylist:GreylistHandler",
    "GreylistHandler": _H + "greylist:GreylistHandler",
    "AllowedUnauthenticatedSender": _H + "sender:AllowedUnauthenticatedSender",
    "EnforceHeaderLimitationsMessageHook": _H + "message:EnforceHeaderLimitationsMessageHook",
    "SetMimeHeaderHandler": _H + "message:SetMimeHeaderHandler",
    # kittiwake's own (no James equivalent)
    "RateLimitHandler": "kittiwake.hooks.ratelimit:RateLimitHandler",
}
#: James names of what kittiwake's built-in core already does
CORE = frozenset(
    {
        "CoreCmdHandlerLoader",
        "NoAuthCmdHandlerLoader",
        "CoreFilterCmdHandlerLoader",
        "SendMailHandler",
        "JMXHandlersLoader",
        "AuthRequiredToRelayRcptHook",
        "PostmasterAbuseRcptHook",
        "ReceivedDataLineFilter",
        "DataLineJamesMessageHookHandler",
        "AddDefaultAttributesMessageHook",
        "UnknownCmdHandler",
        "CommandDispatcher",
        "WelcomeMessageHandler",
        "JamesWelcomeMessageHandler",
        # James's LMTP core (lmtpserver.CoreCmdHandlerLoader)
        "LhloCmdHandler",
        "DataLineLMTPHandler",
        "MailboxDeliverToRecipientHandler",
    }
    | {
        f"{verb}CmdHandler"
        for verb in (
            *("Helo", "Ehlo", "Auth", "Mail", "Rcpt", "Data", "Rset", "Noop", "Quit"),
            *("Vrfy", "Expn", "Help", "JamesMail", "JamesRcpt", "JamesData"),
        )
    }
)
_JAMES = "org.apache.james."


@dataclass(frozen=True, slots=True)
class LoadedChains:
    """Every enabled listener's chain, and options no handler read."""

    chains: dict[str, Chain]
    notes: tuple[str, ...]


def load_chains(config: Config) -> LoadedChains:
    """Build the chain of every listener in ``config``.

    Raises:
        ConfigError: every unknown class, failed import and bad option, each with
            file, element and reason.
    """
    problems: list[Problem] = []
    notes: list[str] = []
    chains: dict[str, Chain] = {}
    _add_to_path(config.source)
    for listener in config.listeners:
        chains[listener.name] = load_chain(listener, problems, notes)
    if problems:
        raise ConfigError(problems)
    return LoadedChains(chains, tuple(notes))


def load_chain(
    listener: ListenerConfig, problems: list[Problem], notes: list[str] | None = None
) -> Chain:
    """One listener's chain; problems and notes are appended to the lists given."""
    hooks: list[object] = []
    for handler in listener.handlers:
        hook = _load(handler, problems, notes if notes is not None else [])
        if hook is not None:
            hooks.append(hook)
    return Chain(hooks)


def _load(handler: HandlerConfig, problems: list[Problem], notes: list[str]) -> object | None:
    def problem(reason: str, where: str = "") -> None:
        problems.append(
            Problem(handler.file, handler.path + (f"/{where}" if where else ""), reason)
        )

    name = handler.class_name
    bare = "." not in name and ":" not in name
    simple = name.rpartition(".")[2] if name.startswith(_JAMES) or bare else None
    if simple is not None:
        if simple in CORE:
            for child in handler.options.children:
                notes.append(f"{handler.file}: {handler.path}/<{child.tag}> (core handler option)")
            return None
        target = PROVIDED.get(simple)
        if target is None:
            problem(
                f"{'James handler ' if name.startswith(_JAMES) else ''}{simple!r} is not "
                "provided by kittiwake; provided: " + ", ".join(sorted(PROVIDED))
            )
            return None
    else:
        target = name
    try:
        cls = _import(target)
    except _LoadError as exc:
        problem(str(exc))
        return None
    options = HandlerOptions(handler.options)
    try:
        hook = _instantiate(cls, options)
    except OptionError as exc:
        problem(exc.reason, exc.where.lstrip("/"))
        return None
    except Exception as exc:
        problem(f"{target} could not be created: {type(exc).__name__}: {exc}")
        return None
    reason = _check_hook(hook)
    if reason is not None:
        problem(reason)
        return None
    # the name logs give it; a class with __slots__ keeps its class name
    with contextlib.suppress(AttributeError):
        hook.hook_name = simple or name.rpartition(":")[2].rpartition(".")[2]  # type: ignore[attr-defined]
    for where in options.unread():
        if not where.startswith("<handler"):
            notes.append(f"{handler.file}: {handler.path}/{where} (not read by the handler)")
    return hook


class _LoadError(Exception):
    pass


def _import(target: str) -> type[Any] | Callable[..., Any]:
    """``module:Class`` or ``module.Class`` (``Class`` may be ``Outer.Inner``)."""
    if ":" in target:
        module_name, _, attr = target.partition(":")
    else:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise _LoadError(
            f"{target!r} is neither a handler kittiwake provides nor a Python class path "
            "(package.module:Class)"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise _LoadError(f"cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:
        raise _LoadError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _LoadError(f"module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise _LoadError(f"{target!r} is not a class")
    return obj  # type: ignore[no-any-return]


def _instantiate(cls: Callable[..., Any], options: HandlerOptions) -> object:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return cls(options)
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return cls(options) if positional else cls()


def _check_hook(hook: object) -> str | None:
    points = [p for p in HOOK_POINTS if hasattr(hook, p)]
    if not points:
        return (
            f"{type(hook).__name__} is not a hook: it has none of the on_* methods "
            "(subclass kittiwake.hooks.api.Hook)"
        )
    for point in (*points, "start", "stop"):
        method = getattr(hook, point, None)
        if method is not None and not inspect.iscoroutinefunction(method):
            return f"{type(hook).__name__}.{point} must be a coroutine function (async def)"
    if isinstance(hook, Hook) or hasattr(hook, "mail_parameters"):
        params = getattr(hook, "mail_parameters", ())
        if not all(isinstance(p, str) for p in params):
            return f"{type(hook).__name__}.mail_parameters must be a set of names"
    return None


def _add_to_path(source: str | None) -> None:
    """The configuration directory goes at the end of ``sys.path`` and stays there:
    hook modules may import their siblings lazily, at run time."""
    if source and source not in sys.path:
        sys.path.append(source)
