"""Fixtures of the e2e tier: small stacks that enable only the components a test needs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import yaml

from ccoas.planner import CATALOG

NOTES = {
    "name": "notes",
    "policy": "owner-only",
    "columns": [
        {"name": "id", "type": "uuid", "primary_key": True, "default": "gen_random_uuid()"},
        {"name": "owner_id", "type": "uuid", "nullable": False},
    ],
}


def component_stack(name: str, enabled: tuple[str, ...], source: str = "local") -> dict:
    """A ci stack named ``name`` with only ``enabled`` (and a ``notes`` table with Postgres),
    its images from ``source``."""
    stack = {
        "version": 1,
        "name": name,
        "environment": "ci",
        "images": {"source": source},
        "tls": {"mode": "generate"},
        "components": {c: {"enabled": False} for c in sorted(CATALOG) if c not in enabled},
    }
    if "postgres" in enabled:
        stack["schema"] = {"tables": [NOTES]}
    return stack


def _stack_writer(directory: Path) -> Callable[..., Path]:
    def _small_stack(name: str, *enabled: str, source: str = "local") -> Path:
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(component_stack(name, enabled, source), sort_keys=False))
        return path

    return _small_stack


@pytest.fixture
def small_stack(tmp_path: Path) -> Callable[..., Path]:
    """``small_stack("intr", "vault", "postgres")`` → the path of such a stack file in tmp_path
    (``source="registry"`` for the official images)."""
    return _stack_writer(tmp_path)


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """:func:`small_stack` for module-scoped fixtures (one stack shared by a module's tests)."""
    return _stack_writer(tmp_path_factory.mktemp("stacks"))
