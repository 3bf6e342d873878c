"""The running engine as the steps see it: a connected Docker Engine API client and the few
things steps do to containers (exec, health probes, logs) and to host paths (chown through
the rootless user namespace).

Both engines use it: the local engine for its resources and steps, the Pulumi engine for
the steps around its updates (:mod:`ccoas.steps`); neither reaches into the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccoas.errors import HostError
from ccoas.host import HostLayout, ensure_api_service, host_layout
from ccoas.plan import HealthCheck, Service


API_VERSION = "1.41"
"""The Docker Engine API version ccoas speaks (Podman 4 and Docker 20.10+ serve it): pinned, so
connecting does not ask the engine's slow ``/version`` first."""


@dataclass
class Runtime:
    """A Docker-compatible API client on the engine user's socket, and the host layout."""

    client: Any
    layout: HostLayout
    _podman: bool | None = field(default=None, repr=False)

    @classmethod
    def connect(cls, layout: HostLayout | None = None) -> "Runtime":
        """Connect to the engine user's API socket, starting the service if need be (after
        clearing a dead session's stale runtime dir, see :func:`ccoas.host.ensure_api_service`)."""
        import docker

        layout = layout or host_layout()
        base_url = ensure_api_service(layout)
        try:
            client = docker.DockerClient(base_url=base_url, timeout=600, version=API_VERSION)
            client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure here is "engine unreachable"
            raise HostError(f"the container engine at {base_url} does not answer: {exc}") from None
        return cls(client, layout)

    @property
    def is_podman(self) -> bool:
        """Podman answers ``/_ping`` with a ``Libpod-Api-Version`` header (its ``/version`` is slow)."""
        if self._podman is None:
            response = self.client.api.get(f"{self.client.api.base_url}/_ping")
            self._podman = "Libpod-Api-Version" in response.headers
        return self._podman

    def libpod_url(self, path: str) -> str:
        return f"{self.client.api.base_url}/v4.0.0/libpod{path}"

    def container(self, service: Service) -> Any | None:
        import docker.errors

        try:
            return self.client.containers.get(service.container_name)
        except docker.errors.NotFound:
            return None

    def exec(self, service: Service, command: list[str], container: Any | None = None) -> tuple[int, str]:
        """Run ``command`` in ``service``'s container as its user: exit code and output."""
        container = container or self.container(service)
        if container is None:
            return 127, f"container {service.container_name} does not exist"
        result = container.exec_run(command, user=service.user)
        return result.exit_code, result.output.decode(errors="replace")

    def probe(self, service: Service, check: HealthCheck, container: Any) -> tuple[bool, str]:
        """Run ``check`` once: the engine's health check for readiness, an exec for liveness."""
        if check is service.healthcheck:
            if self.is_podman:
                response = self.client.api.get(self.libpod_url(f"/containers/{container.id}/healthcheck"))
                if response.status_code == 200:
                    data = response.json()
                    log = (data.get("Log") or [{}])[-1].get("Output", "")
                    return data.get("Status") == "healthy", log
                return False, response.text
            container.reload()
            health = container.attrs["State"].get("Health", {})
            return health.get("Status") == "healthy", json.dumps(health.get("Log", [])[-1:])
        return self.exec_check(service, check, container)

    def exec_check(self, service: Service, check: HealthCheck, container: Any) -> tuple[bool, str]:
        kind, *args = check.test
        cmd = ["sh", "-c", args[0]] if kind == "CMD-SHELL" else list(args)
        try:
            code, output = self.exec(service, cmd, container)
        except Exception as exc:  # noqa: BLE001 - not running yet
            return False, str(exc)
        return code == 0, output

    def give(self, path: Path, uid: int, gid: int) -> None:
        """chown ``path`` to a container uid/gid, mapped through the rootless user namespace."""
        self.layout.give(path, uid, gid)


def tail_logs(container: Any, lines: int = 30) -> str:
    if container is None:
        return ""
    try:
        return container.logs(tail=lines).decode(errors="replace")
    except Exception:  # noqa: BLE001
        return ""
