"""A stack of a test's own, built and brought up healthy for a module, removed after it."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from ccoas.engine.local import LocalEngine
from ccoas.plan import Plan


@contextmanager
def healthy_stack(plan: Plan, running: tuple[str, ...]) -> Iterator[LocalEngine]:
    """``plan``'s local images built (``ccoas images build``) and the stack up, with exactly the
    services ``running``, each healthy (asserted); ``down --purge`` afterwards, whatever happened."""
    engine = LocalEngine.connect(plan)
    started = time.monotonic()
    engine.build_images()
    built = time.monotonic()
    try:
        result = engine.up()
        assert {r.service: r.health for r in result.status} == {s: "healthy" for s in running}
        print(f"\n{plan.stack}: images {built - started:.0f} s, up {time.monotonic() - built:.0f} s")
        yield engine
    finally:
        engine.down(purge=True)
