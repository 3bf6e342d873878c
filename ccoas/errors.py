"""Typed errors. The CLI turns every :class:`CcoasError` into a message and its exit code.

Exit codes: 2 for bad input or a failed preflight (nothing was built or created), 1 for an
apply the engine failed (:class:`EngineError`), and 3 for ``ccoas status`` when a service
is not running and healthy.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

EXIT_APPLY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_HEALTHY = 3


class CcoasError(Exception):
    """Base of every error ccoas reports to a user (no traceback)."""

    exit_code = EXIT_BAD_INPUT


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
    """The container engine refused or failed an operation: an apply failed (exit code 1)."""

    exit_code = EXIT_APPLY_FAILED


class PreflightError(HostError):
    """The host lacks what ``up`` needs; one line per failure, each naming its fix."""

    def __init__(self, failures: list[str]):
        self.failures = list(failures)
        super().__init__("\n".join(self.failures))


def engine_words(exc: BaseException) -> str:
    """What the engine said, without the client library's wrapping."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation).strip()
    return str(exc).strip() or type(exc).__name__


def is_engine_failure(exc: BaseException) -> bool:
    """An error raised by the Docker SDK or its HTTP transport (API error, connection, build)."""
    import docker.errors
    import requests.exceptions

    return isinstance(exc, (docker.errors.DockerException, requests.exceptions.RequestException, ConnectionError))


@contextmanager
def engine_step(service: str, step: str) -> Iterator[None]:
    """Name the service and step (build, create, start, health, hook, ...) in any engine failure."""
    try:
        yield
    except Exception as exc:
        if not is_engine_failure(exc):
            raise
        raise EngineError(f"{service}: {step} failed: {engine_words(exc)}") from None


class MissingToolError(CcoasError):
    """An external tool (e.g. the Pulumi CLI) is not installed."""
