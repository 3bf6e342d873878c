"""The build graph: local image builds in parallel, as far as the machine allows.

Every artifact of a recipe is a chain of *steps*, each of one kind:

- ``network``: downloads (``go mod download``, ``npm install --ignore-scripts``, ``cargo fetch``,
  ``pip download``, ``npm pack``); bound by the network, little CPU;
- ``cpu``: compiles (``go install``, ``cargo build``, ``npm rebuild``); bound by the cores;
- ``engine``: an image build through the engine's API (copying layers, ``apt-get`` in the build).

An image needs its artifacts and the base image. :func:`run_graph` runs one thread per artifact
chain and per image; a step waits for a slot of its kind: at most :data:`NETWORK_SLOTS`
downloads, ``cpu_slots`` compiles (the core count: each compile uses every core it is given,
so two on two cores keep both busy while one links) and :data:`ENGINE_SLOTS` image builds at
once. So a download overlaps a compile, and a waiting step is given a free slot by its
chain's :data:`PRIORITY` (the longest kind of chain first).

Each step is timed (:class:`StepTiming`: when it waited, started and ended, and the CPU its
processes used); :func:`critical_path` reads the chain that ended last back to the start.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

NETWORK_SLOTS = 4
KIND_NAMES = {"network": "download", "cpu": "compile", "engine": "image build"}
ENGINE_SLOTS = 2
PRIORITY = {"npm": 0, "go-cgo": 1, "go": 1, "cargo": 2, "pypi": 3, "image": 4}
"""Which waiting step gets a free slot first: the kind of chain that is longest from there to its
image (measured on 2 cores: Directus's npm install, its native modules' compile and its 800 MB
image come last when they wait behind the Go compiles; then Ollama's cgo and MinIO's two Go
builds; the Rust embedder)."""


@dataclass(frozen=True)
class StepTiming:
    component: str
    step: str
    kind: str
    queued: float
    """Seconds since the graph started: when the step asked for a slot."""
    started: float
    ended: float
    cpu_s: float | None
    """user + system time of its processes; None where they run in the engine (image builds)."""

    @property
    def wall_s(self) -> float:
        return self.ended - self.started

    @property
    def waited_s(self) -> float:
        return self.started - self.queued


class _Slots:
    """A counting semaphore that serves the waiter of lowest priority number first."""

    def __init__(self, count: int):
        self.free = count
        self.waiting: list[tuple[int, int]] = []
        self.cond = threading.Condition()
        self.ticket = 0

    @contextmanager
    def held(self, priority: int) -> Iterator[None]:
        with self.cond:
            self.ticket += 1
            me = (priority, self.ticket)
            self.waiting.append(me)
            while self.free == 0 or min(self.waiting) != me:
                self.cond.wait()
            self.waiting.remove(me)
            self.free -= 1
        try:
            yield
        finally:
            with self.cond:
                self.free += 1
                self.cond.notify_all()


@dataclass
class Stages:
    """Slots per kind of step, the progress callback and the timings of every step run."""

    cpu_slots: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    network_slots: int = NETWORK_SLOTS
    engine_slots: int = ENGINE_SLOTS
    progress: Callable[[str, str], None] = lambda component, message: None
    """A line about a component (``progress(component, message)``)."""
    started: Callable[[str, str], None] | None = None
    """A step of a component starts (default: a :attr:`progress` line)."""
    ended: Callable[[str], None] = lambda component: None
    """A step of a component ended."""
    timings: list[StepTiming] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._slots = {"network": _Slots(self.network_slots), "cpu": _Slots(self.cpu_slots), "engine": _Slots(self.engine_slots)}
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._local = threading.local()

    def for_chain(self, component: str, priority: int) -> "Stages":
        """This object, with the thread's steps named after ``component`` and given ``priority``."""
        self._local.component = component
        self._local.priority = priority
        return self

    @contextmanager
    def step(self, message: str, kind: str, measured: bool = True) -> Iterator[None]:
        from ccoas.build_sandbox import usage

        component = getattr(self._local, "component", "build")
        queued = time.monotonic() - self._started
        if self._slots[kind].free == 0:  # said once, so a log shows why nothing moves
            self.progress(component, f"{message}: waiting for a free {KIND_NAMES[kind]} slot")
        with self._slots[kind].held(getattr(self._local, "priority", 9)):
            (self.started or self.progress)(component, message)
            cpu_before = usage.cpu_s
            started = time.monotonic() - self._started
            try:
                yield
            finally:
                timing = StepTiming(
                    component, message, kind, queued, started, time.monotonic() - self._started,
                    usage.cpu_s - cpu_before if measured else None,
                )
                with self._lock:
                    self.timings.append(timing)
                self.ended(component)


SERIAL = Stages(cpu_slots=1, network_slots=1, engine_slots=1)
"""Steps one at a time (a fetch function called on its own, outside a graph)."""


def run_graph(chains: dict[str, tuple[int, Callable[[], Any]]], needs: dict[str, tuple[str, ...]], stages: Stages) -> dict[str, Any]:
    """Run every chain (``name -> (priority, fn)``) in its own thread once the chains it
    ``needs`` have ended; return their results. The first failure is raised once every
    started chain has ended (nothing is left running)."""
    futures: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(chains)), thread_name_prefix="ccoas-build") as pool:

        def run(name: str) -> Any:
            for need in needs.get(name, ()):
                futures[need].result()  # a failed dependency fails this chain too
            priority, fn = chains[name]
            stages.for_chain(name.split(" ", 1)[0], priority)
            return fn()

        for name in chains:  # dependencies first: a chain's needs are submitted before it
            futures[name] = pool.submit(run, name)
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        raise errors[0]  # a chain whose dependency failed re-raises that same error
    return {name: f.result() for name, f in futures.items()}


def critical_path(timings: list[StepTiming]) -> list[StepTiming]:
    """The steps of the component whose last step ended last, in order: what the total waited on."""
    if not timings:
        return []
    last = max(timings, key=lambda t: t.ended)
    return sorted((t for t in timings if t.component == last.component), key=lambda t: t.started)
