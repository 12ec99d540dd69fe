"""Turning the specs of ``mailetcontainer.xml`` into plain Python callables, once.

Class names are looked up in this order:

1. kittiwake's own matchers and mailets by their James names (``RecipientIsLocal``),
   also written with James's package (``org.apache.james.transport.matchers.All``);
2. the composite matchers ``And``, ``Or``, ``Not``
   (``org.apache.james.mailetcontainer.impl.matchers.Or``);
3. a Python class by dotted path: ``package.module.Class`` or ``package.module:Class``;
4. otherwise a James class kittiwake does not have: it is named at start, and the
   matcher matches nothing (the mail goes on), the mailet lets mail through unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kittiwake.config._errors import ConfigError, Problem
from kittiwake.mailet.api import Mail, Mailet, MailetConfig, MailetError, Matcher, MatchFn
from kittiwake.mailet.config import FILE, ContainerSpec, MailetSpec, MatcherSpec
from kittiwake.mailet.mailets import MAILETS, NOT_IMPLEMENTED_PASS
from kittiwake.mailet.matchers import MATCHERS

if TYPE_CHECKING:
    from kittiwake.mailet.container import ContainerContext

__all__ = ["Compiled", "Step", "compile_container"]

_COMPOSITES = frozenset({"And", "Or", "Not"})
_NOTHING: tuple[str, ...] = ()


@dataclass(slots=True)
class Step:
    """One ``<mailet>`` of a processor, compiled."""

    match: MatchFn
    mailet: Mailet
    on_mailet: str
    on_match: str
    label: str
    #: the matcher is All: skip calling it
    all: bool = False


@dataclass
class Compiled:
    processors: dict[str, list[Step]]
    notes: list[str] = field(default_factory=list)


def _short(name: str) -> str:
    return name.rpartition(".")[2] if name.startswith("org.apache.james.") else name


def _python_class(name: str, base: type) -> type | None:
    module, colon, attr = name.partition(":")
    if not colon:
        module, _, attr = name.rpartition(".")
    if not module or not attr:
        return None
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, base) else None


def compile_container(
    spec: ContainerSpec, context: ContainerContext, *, python_classes: bool = True
) -> Compiled:
    """Load and initialise every matcher and mailet.

    Raises:
        ConfigError: a Python class that cannot be loaded, a bad parameter, or a
            reference to a processor that does not exist.
    """
    problems: list[Problem] = []
    notes: list[str] = list(f"{FILE}: {n}" for n in spec.notes)
    missing: set[str] = set()
    states = {p.state for p in spec.processors}
    processors: dict[str, list[Step]] = {}

    def matcher(m: MatcherSpec, where: str) -> tuple[MatchFn, bool]:
        name = _short(m.name)
        fn: MatchFn
        is_all = False
        if name in _COMPOSITES:
            parts = [matcher(c, where)[0] for c in m.children]
            fn = _composite(name, parts)
        else:
            cls: type | None = MATCHERS.get(name)
            if cls is None and python_classes and "." in m.name:
                cls = _python_class(m.name, Matcher)
            if cls is None:
                if m.name not in missing:
                    missing.add(m.name)
                    notes.append(f"{FILE}: matcher {m.name} (not in kittiwake: matches nothing)")
                fn = _none
            else:
                inst = cls()
                try:
                    inst.init(MailetConfig(m.name, {}, context, m.condition))
                except MailetError as exc:
                    problems.append(Problem(FILE, f"{where} match={m.name!r}", str(exc)))
                    fn = _none
                else:
                    fn = inst.match
                    is_all = name == "All" and not m.negate
        if m.negate:
            fn = _negate(fn)
        return fn, is_all

    def mailet(s: MailetSpec) -> Mailet:
        name = _short(s.class_name)
        cls: type | None = MAILETS.get(name)
        if (
            cls is None
            and python_classes
            and "." in s.class_name
            and not s.class_name.startswith("org.apache.james.")
        ):
            cls = _python_class(s.class_name, Mailet)
            if cls is None:
                problems.append(Problem(FILE, s.path, f"cannot load Python class {s.class_name!r}"))
        if cls is None:
            if s.class_name not in missing:
                missing.add(s.class_name)
                notes.append(f"{FILE}: mailet {s.class_name} (not in kittiwake: mail passes)")
            cls = NOT_IMPLEMENTED_PASS
        inst: Mailet = cls()
        config = MailetConfig(s.class_name, dict(s.params), context)
        try:
            inst.init(config)
        except MailetError as exc:
            problems.append(Problem(FILE, s.path, str(exc)))
        if cls is not NOT_IMPLEMENTED_PASS:
            for key in config.params:
                if key not in config.read:
                    notes.append(f"{FILE}: {s.path}/<{key}> (not read by kittiwake)")
        return inst

    for proc in spec.processors:
        steps = []
        for s in proc.mailets:
            fn, is_all = matcher(s.matcher, s.path)
            inst = mailet(s)
            for target in (s.on_mailet_exception, s.on_match_exception):
                if target not in ("ignore", "propagate", "nomatch", "matchall", "error") and (
                    target not in states
                ):
                    problems.append(Problem(FILE, s.path, f"no processor {target!r}"))
            for key in ("processor", "errorProcessor", "bounceProcessor", "onSuccess"):
                goto = dict(s.params).get(key)
                if goto and goto not in states and goto != "ghost":
                    problems.append(Problem(FILE, f"{s.path}/<{key}>", f"no processor {goto!r}"))
            steps.append(
                Step(fn, inst, s.on_mailet_exception, s.on_match_exception, s.path, is_all)
            )
        processors[proc.state] = steps
    if problems:
        raise ConfigError(problems)
    return Compiled(processors, notes)


def _none(mail: Mail) -> Collection[str]:
    return _NOTHING


def _negate(fn: MatchFn) -> MatchFn:
    def negated(mail: Mail) -> Collection[str]:
        hit = set(fn(mail))
        return [r for r in mail.recipients if r not in hit]

    return negated


def _composite(kind: str, parts: list[MatchFn]) -> MatchFn:
    if kind == "Not":
        # James's Not: the recipients matched by none of the children
        def not_(mail: Mail) -> Collection[str]:
            hit: set[str] = set()
            for p in parts:
                hit.update(p(mail))
            return [r for r in mail.recipients if r not in hit]

        return not_
    if kind == "Or":

        def or_(mail: Mail) -> Collection[str]:
            hit: set[str] = set()
            for p in parts:
                hit.update(p(mail))
            return [r for r in mail.recipients if r in hit]

        return or_

    def and_(mail: Mail) -> Collection[str]:
        result: set[str] | None = None
        for p in parts:
            got = set(p(mail))
            result = got if result is None else result & got
            if not result:
                return _NOTHING
        return [r for r in mail.recipients if result is not None and r in result]

    return and_


MatcherFactory = Callable[[MatcherSpec], MatchFn]
