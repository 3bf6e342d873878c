"""Typed errors. The CLI turns every :class:`CcoasError` into a message and exit code 2."""

from __future__ import annotations

from dataclasses import dataclass


class CcoasError(Exception):
    """Base of every error ccoas reports to a user (exit code 2, no traceback)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a stack file: where, and what was expected."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class StackError(CcoasError):
    """A stack file is invalid. Carries one :class:`Problem` per defect."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class HostError(CcoasError):
    """The host cannot do what the plan asks (engine missing, socket down, ...)."""


class EngineError(CcoasError):
    """The container engine refused or failed an operation."""


class MissingToolError(CcoasError):
    """An external tool (e.g. the Pulumi CLI) is not installed."""
