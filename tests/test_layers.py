"""The shape of the code: no module imports another that imports it back, and the layers hold.

Every ``import`` of every module under ``ccoas/`` counts, at the top or inside a function
(a late import is still a dependency). Layers, lowest first: ``stack`` (schema) → ``plan``
(types) → ``components`` (declarations) → ``planner`` → the consumers.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ccoas"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The ccoas modules ``name`` imports (``from ccoas import x`` counts as module ``ccoas.x``)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: imports(name) for name in MODULES}


def test_the_import_walk_sees_the_modules():
    # a walk that found nothing would pass the cycle test below vacuously
    assert {"ccoas.plan", "ccoas.planner", "ccoas.stack", "ccoas.engine.local", "ccoas.components.postgres"} <= set(MODULES)
    assert "ccoas.plan" in GRAPH["ccoas.planner"]
    assert "ccoas.steps" in GRAPH["ccoas.pulumi_engine"] and "ccoas.engine.runtime" in GRAPH["ccoas.steps"]


def test_no_module_imports_one_that_imports_it_back():
    try:
        tuple(TopologicalSorter(GRAPH).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_plan_is_types_only():
    assert GRAPH["ccoas.plan"] <= {"ccoas.stack"}, GRAPH["ccoas.plan"]
    assert GRAPH["ccoas.stack"] <= {"ccoas.errors"}, GRAPH["ccoas.stack"]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("ccoas.components.") and n != "ccoas.components.base"))
def test_components_import_only_the_plan_types_and_their_base(name):
    assert GRAPH[name] <= {"ccoas.plan", "ccoas.components.base"}, GRAPH[name]


def test_the_component_base_imports_only_the_plan_and_the_schema():
    assert GRAPH["ccoas.components.base"] <= {"ccoas.plan", "ccoas.stack"}, GRAPH["ccoas.components.base"]


def test_the_pulumi_engine_never_reaches_into_the_local_engine():
    assert "ccoas.engine.local" not in GRAPH["ccoas.pulumi_engine"]
    assert "ccoas.steps" in GRAPH["ccoas.pulumi_engine"]


def test_the_diff_is_pure():
    """It reads the plan and the observed state; it imports no engine, host or file code."""
    assert GRAPH["ccoas.engine.diff"] <= {"ccoas.plan", "ccoas.engine.observed", "ccoas.errors"}, GRAPH["ccoas.engine.diff"]
    assert GRAPH["ccoas.engine.observed"] == set()
