"""Stopping a container the way its service wants: stop signal first, a kill only after the timeout.

``down``, recreate and rotation all come here. The plan declares each service's
:class:`~ccoas.plan.Stop` (Postgres: SIGINT, fast shutdown; Redis: SIGTERM, which saves;
nginx: SIGQUIT, graceful), and the container carries it as its ``StopSignal``. The engine
sends that signal, waits up to the timeout, and only then kills; a kill is reported, never
silent, because it means the service may have been cut mid-write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ccoas.errors import EngineError
from ccoas.plan import Stop

KILLED_EXIT_CODE = 137
"""128 + SIGKILL: what the engine records when the timeout ran out."""


@dataclass(frozen=True)
class Stopped:
    container: str
    signal: str
    timeout_s: int
    killed: bool
    """The container outlived its timeout and was killed."""

    def note(self) -> str | None:
        if not self.killed:
            return None
        return f"{self.container} did not stop within {self.timeout_s}s of {self.signal} and was killed"


def stop(client: Any, container: Any, policy: Stop) -> Stopped:
    """Stop ``container`` with ``policy`` (its signal, then a kill after ``timeout_s``) and say how it ended.

    A container created before its service had a stop policy carries the engine's default
    signal: it gets the plan's signal first, so Postgres still shuts down fast.
    """
    import docker.errors

    container.reload()
    if container.status not in ("running", "paused", "restarting"):
        return Stopped(container.name, policy.signal, policy.timeout_s, killed=False)
    try:
        if _stop_signal(container) != policy.signal:
            container.kill(signal=policy.signal)
        client.api.stop(container.id, timeout=policy.timeout_s)
    except docker.errors.APIError as exc:  # the engine's refusal, with its words (NotFound is one)
        container.reload()
        if container.status in ("running", "paused", "restarting"):
            raise EngineError(f"stopping {container.name}: {exc}") from None
        # it exited on the signal before the stop request arrived: stopped, as asked
    container.reload()
    killed = container.attrs["State"].get("ExitCode") == KILLED_EXIT_CODE
    return Stopped(container.name, policy.signal, policy.timeout_s, killed=killed)


def _stop_signal(container: Any) -> str:
    signal = container.attrs.get("Config", {}).get("StopSignal")
    if isinstance(signal, int):  # Podman reports the number
        import signal as signals

        return signals.Signals(signal).name
    return signal or "SIGTERM"
