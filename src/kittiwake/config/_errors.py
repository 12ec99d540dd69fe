"""Configuration errors and the per-file collector of findings.

Loading does not stop at the first bad value: each file is read to the end and every
problem is collected, so that one ``kittiwake config check`` shows the administrator all
of them. Only when everything is read does the loader raise one :class:`ConfigError`
carrying them all, in document order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "Findings", "Invalid", "Problem"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason the configuration cannot be used.

    ``element`` is a path such as ``<smtpserver name="smtp">/<maxLineLength>``, or a line
    and column for XML that does not parse.
    """

    file: str
    element: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.element}: {self.reason}"


class ConfigError(Exception):
    """The configuration cannot be used; kittiwake does not start.

    ``str(error)`` has one line per problem, each naming file, element and reason, e.g.
    ``smtpserver.xml: <smtpserver name="smtp">/<maxLineLength>: 50 is out of range
    1000..1048576``.
    """

    problems: tuple[Problem, ...]

    def __init__(self, problems: Problem | Iterable[Problem]) -> None:
        found = (problems,) if isinstance(problems, Problem) else tuple(problems)
        if not found:
            raise ValueError("ConfigError needs at least one problem")
        self.problems = found
        super().__init__("\n".join(str(p) for p in found))

    @property
    def file(self) -> str:
        """The file of the first problem."""
        return self.problems[0].file

    @property
    def element(self) -> str:
        """The element of the first problem."""
        return self.problems[0].element

    @property
    def reason(self) -> str:
        """The reason of the first problem."""
        return self.problems[0].reason


class Invalid(ValueError):
    """A value parser's refusal; ``str()`` is the reason, the caller adds file and element."""


class Findings:
    """What reading one file found: problems (fatal) and options read but not acted on."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.unimplemented: list[str] = []

    def error(self, element: str, reason: str) -> None:
        """Record a problem; loading goes on so that all problems are reported at once."""
        self.problems.append(Problem(self.file, element, reason))

    def ignored(self, element: str, note: str | None = None) -> None:
        """Record an option that is present but not implemented yet (it is named at start)."""
        line = f"{self.file}: {element}"
        self.unimplemented.append(f"{line} ({note})" if note else line)
