"""Benchmark `ccoas up`: prints figures, asserts nothing (targets live here, not in tests).

    python tests/benchmarks/bench_up.py [STACK] [--name NAME]

1. `down` (volumes kept), then a cold-container `up` with warm images: total time to
   healthy, next to the sum of per-service times along the longest dependency chain (the
   floor a fully parallel engine could reach);
2. a second `up` on the unchanged plan (no-op): its time and its change count, next to
   the figure measured before the engine observed once and skipped unchanged steps
   (observe → diff → apply), and the time of `up --dry-run` (observe and diff only).
"""

from __future__ import annotations

import argparse
import time

PREVIOUS_NOOP_S = "4.2–5.3"
"""No-op `up` on the converged dev stack before observe → diff → apply (three runs, 2026-12-01)."""

from ccoas.engine.local import LocalEngine
from ccoas.plan import Plan
from ccoas.planner import build_plan, load_stack


def longest_chain(plan: Plan, durations: dict[str, float]) -> tuple[float, list[str]]:
    best: dict[str, tuple[float, list[str]]] = {}
    for service in plan.services:  # plan order is a topological order
        before = max((best[d.service] for d in service.depends_on), default=(0.0, []), key=lambda x: x[0])
        best[service.name] = (before[0] + durations.get(service.name, 0.0), [*before[1], service.name])
    return max(best.values(), key=lambda x: x[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stack", nargs="?", default="stacks/dev.yaml")
    parser.add_argument("--name")
    args = parser.parse_args()
    plan = build_plan(load_stack(args.stack), name=args.name)
    engine = LocalEngine.connect(plan)
    engine.build_images()
    engine.down()
    began = time.monotonic()
    first = engine.up()
    total = time.monotonic() - began
    chain_s, chain = longest_chain(plan, first.durations)
    began = time.monotonic()
    second = engine.up()
    noop = time.monotonic() - began
    began = time.monotonic()
    dry = engine.up(dry_run=True)
    dry_s = time.monotonic() - began
    print(f"stack                         {plan.stack} ({len(plan.services)} services)")
    print(f"up, warm images, to healthy   {total:7.1f} s  ({first.changes} changes)")
    print(f"longest dependency chain      {chain_s:7.1f} s  ({' -> '.join(chain)})")
    for name, seconds in first.durations.items():
        print(f"  {name:26}  {seconds:7.1f} s")
    print(f"no-op up                      {noop:7.1f} s  ({second.changes} changes; before observe/diff/apply: {PREVIOUS_NOOP_S} s)")
    print(f"up --dry-run                  {dry_s:7.1f} s  ({len(dry.operations)} operations)")


if __name__ == "__main__":
    main()
