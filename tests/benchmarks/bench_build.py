"""Benchmark the local image builds: prints figures, asserts nothing (targets live here).

    python tests/benchmarks/bench_build.py [STACK] [--cache-dir DIR] [--cpu-slots N] [--keep] [--warm-only]

Builds every local image of STACK (default stacks/dev.yaml) as ``ccoas up`` does (one build
graph: downloads overlap compiles, at most ``--cpu-slots`` compiles at once), twice:

1. **cold**: a fresh build cache (``--cache-dir``, default a new dir under /var/cache: the
   shared /var/cache/ccoas is not touched), images under tags of the benchmark's own
   (``localhost/ccoas-bench/<component>:<digest>-<run>``), no engine layer reused; the base
   image's ``mmdebstrap`` runs alongside (the engine keeps its one base image);
2. **warm cache**: the same cache (every artifact in it), new tags, no engine layer reused:
   what a changed Containerfile or a lost image costs.

For each run: every component's wall time (its first step to its image), the CPU its host
steps used and their CPU share ((user+sys)/wall: near 0 is a download, near the core count a
compile), every step with its kind and how long it waited for a slot, and the critical path
(the component that ended last, step by step). The benchmark's images are removed at the end
(``--keep`` keeps them). On a shared host the figures are pessimistic: other work competes for
the same cores and network.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from ccoas.build_graph import Stages, StepTiming, critical_path
from ccoas.engine.runtime import Runtime
from ccoas.host import host_layout
from ccoas.images import MMDEBSTRAP_ARGS, _run, build_images
from ccoas.planner import build_plan, load_stack

ANCHOR = "21m53s cold `make up` on a new machine (issue 26), image builds one after another"
TARGET = "cold `make up` <= 12 min"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def bench_services(plan, run: str):
    """The plan's local services with refs of the benchmark's own (nothing else's image is hit)."""
    services = []
    for service in plan.services:
        if service.image.source != "local" or service.image.recipe is None:
            continue
        ref = f"localhost/ccoas-bench/{service.name}:{service.image.recipe.digest[:12]}-{run}"
        services.append(service.model_copy(update={"image": service.image.model_copy(update={"ref": ref})}))
    return services


def report(title: str, total: float, timings: list[StepTiming]) -> None:
    print(f"\n== {title}: {_clock(total)} wall for every image")
    components = sorted({t.component for t in timings}, key=lambda c: min(t.started for t in timings if t.component == c))
    print(f"{'component':12} {'wall':>8} {'host CPU':>9} {'CPU share':>9}")
    for component in components:
        own = [t for t in timings if t.component == component]
        wall = max(t.ended for t in own) - min(t.started for t in own)
        measured = [t for t in own if t.cpu_s is not None]
        cpu = sum(t.cpu_s for t in measured)
        busy = sum(t.wall_s for t in measured)
        share = f"{cpu / busy:9.2f}" if busy > 0.5 else f"{'-':>9}"
        print(f"{component:12} {_clock(wall):>8} {_clock(cpu):>9} {share}")
    print("steps (start after the graph began, wall, waited for a slot, CPU share):")
    for t in sorted(timings, key=lambda t: t.started):
        share = f"{t.cpu_s / t.wall_s:5.2f}" if t.cpu_s is not None and t.wall_s > 0.5 else "    -"
        print(f"  {_clock(t.started):>7} {t.kind:8} {_clock(t.wall_s):>7} waited {_clock(t.waited_s):>6} cpu {share}  {t.component}: {t.step}")
    path = critical_path(timings)
    if path:
        chain = " -> ".join(f"{t.step} {_clock(t.wall_s)}" + (f" (+{_clock(t.waited_s)} waiting)" if t.waited_s >= 1 else "") for t in path)
        print(f"critical path: {path[0].component}, ends at {_clock(path[-1].ended)}: {chain}")


def one_run(plan, layout, client, run: str, cpu_slots: int, with_base: bool) -> tuple[float, list[StepTiming], list[str]]:
    services = bench_services(plan, run)
    stages = Stages(cpu_slots=cpu_slots, progress=lambda c, m: print(f"  [{time.strftime('%H:%M:%S')}] {c}: {m}", flush=True))
    base_thread = None
    if with_base:  # the base image's mmdebstrap, as a cold `up` runs it beside the first downloads
        target = layout.cache_root / "base" / "bench.tar"
        target.parent.mkdir(parents=True, exist_ok=True)

        def base() -> None:
            stages.for_chain("base", 5)
            with stages.step(f"mmdebstrap {' '.join(MMDEBSTRAP_ARGS)}", "network", measured=False):
                _run(["mmdebstrap", "--quiet", *MMDEBSTRAP_ARGS, str(target)], "mmdebstrap")

        base_thread = threading.Thread(target=base)
        base_thread.start()
    began = time.monotonic()
    try:
        build_images(services, layout, client, stages=stages, progress=stages.progress, nocache=True)
    except Exception as exc:  # noqa: BLE001 - report what was measured, then say what failed
        print(f"  build failed: {str(exc).splitlines()[0]}")
    if base_thread is not None:
        base_thread.join()
    return time.monotonic() - began, stages.timings, [s.image.ref for s in services]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stack", nargs="?", default="stacks/dev.yaml")
    parser.add_argument("--cache-dir", type=Path, help="the cold build cache (default: a new dir under /var/cache)")
    parser.add_argument("--cpu-slots", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's images and cache")
    parser.add_argument("--warm-only", action="store_true", help="only the warm-cache run (on --cache-dir of an earlier run)")
    args = parser.parse_args()
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="ccoas-bench-build-", dir="/var/cache"))
    os.chmod(cache, 0o755)
    layout = host_layout()
    layout = dataclasses.replace(layout, cache_root=cache)
    plan = build_plan(load_stack(args.stack))
    client = Runtime.connect(layout).client
    stamp = time.strftime("%H%M%S")
    refs: list[str] = []
    try:
        print(f"stack {plan.stack}; cache {cache}; {args.cpu_slots} compile slots on {os.cpu_count()} cores; anchor: {ANCHOR}; target: {TARGET}")
        if not args.warm_only:
            cold, cold_timings, made = one_run(plan, layout, client, f"cold{stamp}", args.cpu_slots, with_base=True)
            refs += made
            report("cold (fresh build cache, no engine layer reused)", cold, cold_timings)
        warm, warm_timings, made = one_run(plan, layout, client, f"warm{stamp}", args.cpu_slots, with_base=False)
        refs += made
        report("warm cache (every artifact cached, images built again)", warm, warm_timings)
        print("\nmeasured on a host shared with other work: the figures are pessimistic")
    finally:
        if not args.keep:
            for ref in refs:
                try:
                    client.images.remove(ref, force=True)
                except Exception:  # noqa: BLE001 - an image the run did not get to make
                    pass
            if args.cache_dir is None:
                shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
