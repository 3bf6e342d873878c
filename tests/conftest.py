"""Shared fixtures of the fast tier: where the repository is, how to get a plan, a stack file
and a CLI runner. Generic on purpose; anything specific to one test module lives there."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from typer.testing import CliRunner

REPO_ROOT = Path(__file__).resolve().parent.parent
STACKS_DIR = REPO_ROOT / "stacks"
STACK_NAMES = tuple(sorted(p.stem for p in STACKS_DIR.glob("*.yaml")))
"""The shipped stacks (``dev``, ``ci``, ``prod``), for ``pytest.mark.parametrize``."""


def stack_path(stack: str | Path) -> Path:
    """``"prod"`` → ``stacks/prod.yaml``; a path is returned as is."""
    if isinstance(stack, Path) or "/" in stack or stack.endswith((".yaml", ".yml")):
        return Path(stack)
    return STACKS_DIR / f"{stack}.yaml"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def load_plan() -> Callable[..., Any]:
    """``load_plan("prod")``, ``load_plan("ci", name="pr-42")`` or ``load_plan(path)``: a fresh plan."""
    from ccoas.planner import build_plan, load_stack

    def _load_plan(stack: str | Path, name: str | None = None):
        return build_plan(load_stack(stack_path(stack)), name=name)

    return _load_plan


@pytest.fixture(scope="session")
def stack_document() -> Callable[[str], dict[str, Any]]:
    """``stack_document("prod")``: a deep copy of a shipped stack's parsed YAML, free to mutate."""
    cache: dict[str, Any] = {}

    def _stack_document(stack: str) -> dict[str, Any]:
        if stack not in cache:
            cache[stack] = yaml.safe_load(stack_path(stack).read_text(encoding="utf-8"))
        return copy.deepcopy(cache[stack])

    return _stack_document


def write_stack_file(directory: Path, data: Any, filename: str = "stack.yaml") -> Path:
    """Write ``data`` (a tree dumped as YAML, or raw text written verbatim) and return the path."""
    path = Path(directory) / filename
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def write_stack() -> Callable[..., Path]:
    """``write_stack(tmp_path, data)`` → the path of a stack file holding ``data`` (tree or raw text)."""
    return write_stack_file


@pytest.fixture
def runner() -> CliRunner:
    """A typer CliRunner; ``result.stdout`` and ``result.stderr`` are kept apart."""
    return CliRunner()


def _tree_fingerprint(directory: Path) -> dict[str, tuple[int, int, int, bytes]]:
    import stat

    seen = {}
    for path in [directory, *sorted(directory.rglob("*"))]:
        status = path.lstat()
        seen[str(path)] = (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode), path.read_bytes() if path.is_file() else b"")
    return seen


@pytest.fixture(scope="session")
def tree_fingerprint() -> Callable[[Path], dict[str, tuple[int, int, int, bytes]]]:
    """Owner, group, mode and bytes of everything under a directory: compared before and after
    root works where another user planted links (a victim directory must not change)."""
    return _tree_fingerprint


# --- each module's time, printed at the end of every run (both tiers) ------------------------

_MODULE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up setup, call and teardown of every test by module (with pytest-xdist, the
    controller sees every worker's reports, so this is the whole run's sum per module)."""
    module = report.nodeid.split("::", 1)[0]
    _MODULE_SECONDS[module] = _MODULE_SECONDS.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _MODULE_SECONDS or hasattr(terminalreporter.config, "workerinput"):
        return
    terminalreporter.write_sep("=", "time per module (setup + call + teardown, slowest first)")
    for module, seconds in sorted(_MODULE_SECONDS.items(), key=lambda item: (-item[1], item[0])):
        terminalreporter.write_line(f"{seconds:8.1f}s  {module}")
