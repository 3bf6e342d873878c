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

from ccoas.engine.observed import ObservedNetwork
from ccoas.errors import HostError
from ccoas.host import HostLayout, ensure_api_service, host_layout
from ccoas.plan import HealthCheck, Service


ISOLATION_GUARD = "ccoas-isolation"
"""The comment on ccoas's own jump into netavark's isolation chains (:meth:`Runtime.guard_isolation`)."""

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

    def networks(self, label: str) -> list[ObservedNetwork]:
        """The networks labelled ``label`` (``key=value``), as the engine holds them now.

        On Podman only the libpod endpoints are used for networks: Podman 4.3's Docker-API
        network list and inspect delete ``isolate`` from the service's in-memory copy of each
        network they answer for (the compat handler edits the shared options map in place), so
        every container it starts afterwards runs without isolation while the network's file on
        disk still has it (measured: containers on two isolated bridges reach each other).
        Nothing in ccoas calls those endpoints; ``up`` repairs what another Docker-API client
        did (:meth:`reload_networks`, then restarts). ``enforced`` is read from the rootless
        network namespace: netavark's drop rule for each routed bridge that is up."""
        if not self.is_podman:
            return [
                ObservedNetwork(n.name, bool(n.attrs.get("Internal")))
                for n in self.client.networks.list(filters={"label": [label]})
            ]
        response = self.client.api.get(self.libpod_url("/networks/json"), params={"filters": json.dumps({"label": [label]})})
        self.client.api._raise_for_status(response)
        held = response.json() or []
        routed = [n for n in held if not n.get("internal")]
        up, dropped = self._bridges() if routed else (set(), set())
        return [
            ObservedNetwork(
                n["name"],
                bool(n.get("internal")),
                (n.get("options") or {}).get("isolate") == "true",
                n.get("internal") or n.get("network_interface") not in up or n.get("network_interface") in dropped,
            )
            for n in held
        ]

    def guard_isolation(self) -> bool:
        """Keep the jump into netavark's isolation chains in the rootless network namespace;
        ``True`` when no jump was there (no network on the host was isolated until now).

        netavark 1.4 (Debian 12's) adds ``FORWARD -j NETAVARK_ISOLATION_1`` when a container
        starts on an isolated network, and deletes that one shared rule when the last container
        of ANY isolated network goes (its teardown policy is "on complete teardown"): from then
        on no network is isolated, since ``NETAVARK_FORWARD`` accepts traffic from every bridge's
        subnet (measured: a neighbour's running container then connects to Nginx). ccoas adds a
        jump of its own, marked with a comment so netavark's teardown (which deletes its exact
        rule) leaves it; the chains stay netavark's. Nothing is done before netavark made its
        chain (no isolated network set up yet: nothing to isolate) or when the namespace does
        not exist (joining it must not create one)."""
        import subprocess

        if not self.is_podman or not self._rootless_netns():
            return False
        rule = f"FORWARD -m comment --comment {ISOLATION_GUARD} -j NETAVARK_ISOLATION_1"
        script = (
            f"iptables -C {rule} 2>/dev/null && exit 0; "
            f"iptables -S NETAVARK_ISOLATION_1 >/dev/null 2>&1 || exit 0; "
            "iptables -C FORWARD -j NETAVARK_ISOLATION_1 2>/dev/null || echo lost; "
            f"iptables -I {rule.replace('FORWARD', 'FORWARD 1', 1)}"
        )
        command = self.layout.engine_command("podman", "unshare", "--rootless-netns", "sh", "-c", script)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise HostError(f"keeping network isolation in the rootless network namespace: {result.stderr.strip()}")
        return result.stdout.strip() == "lost"

    def _rootless_netns(self) -> bool:
        netns = self.layout.runtime_dir / "netns"
        return any(p.name.startswith("rootless-netns") for p in (netns.iterdir() if netns.is_dir() else ()))

    def _bridges(self) -> tuple[set[str], set[str]]:
        """Bridges up in the engine user's rootless network namespace, and those with netavark's
        isolation drop rule (``NETAVARK_ISOLATION_2 -o BRIDGE -j DROP``). Read only when that
        namespace exists (joining it must not create one)."""
        import subprocess

        if not self._rootless_netns():
            return set(), set()
        script = "cat /proc/net/dev; echo --; iptables -S NETAVARK_ISOLATION_2 2>/dev/null || true; echo --; iptables -S FORWARD"
        command = self.layout.engine_command("podman", "unshare", "--rootless-netns", "sh", "-c", script)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise HostError(f"reading the rootless network namespace: {result.stderr.strip()}")
        links, _, rest = result.stdout.partition("--\n")
        rules, _, forward = rest.partition("--\n")
        up = {line.split(":", 1)[0].strip() for line in links.splitlines() if ":" in line}  # /proc/net/dev: no iproute2 needed
        if "-j NETAVARK_ISOLATION_1" not in forward:
            return up, set()  # no jump into the isolation chains: no bridge is isolated (see guard_isolation)
        dropped = {parts[3] for parts in (line.split() for line in rules.splitlines()) if parts[2:3] == ["-o"] and parts[-1] == "DROP"}
        return up, dropped

    def remove_network(self, name: str) -> None:
        if not self.is_podman:
            self.client.networks.get(name).remove()
            return
        self.client.api._raise_for_status(self.client.api.delete(self.libpod_url(f"/networks/{name}")))

    def reload_networks(self, name: str, labels: dict[str, str]) -> None:
        """Make the Podman service read every network from its file again.

        The service re-reads its networks directory when the directory's modification time
        changes: creating and removing a network of our own (``name``, labelled) changes it,
        through the same API and as the same user, with nothing else touched."""
        self.client.api.delete(self.libpod_url(f"/networks/{name}"))  # left by an interrupted run, if any
        body = {"name": name, "driver": "bridge", "internal": True, "labels": labels}
        created = self.client.api.post(self.libpod_url("/networks/create"), data=json.dumps(body), headers={"Content-Type": "application/json"})
        self.client.api._raise_for_status(created)
        self.remove_network(name)

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
