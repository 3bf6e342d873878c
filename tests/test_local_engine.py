"""The local engine against a fake Docker client: observe → diff → apply, with no engine.

The fake keeps containers, networks, volumes and images in dictionaries and answers the
few SDK calls the engine makes. Steps that need a running service (health gating, hooks,
Vault) are recorded instead of run: they have their own e2e tests.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from ccoas.engine.local import LocalEngine
from ccoas.engine.observed import ObservedVault
from ccoas.engine.runtime import Runtime
from ccoas.errors import EngineError
from ccoas.planner import load_plan
from ccoas.state import stack_paths

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "observed"
IDS = itertools.count(1)


class FakeContainer:
    def __init__(self, client: "FakeClient", name: str, body: dict[str, Any]):
        self.client, self.name, self.body = client, name, body
        self.id = f"{next(IDS):012d}"
        self.status = "created"
        self.events: list[str] = []

    @property
    def labels(self) -> dict[str, str]:
        return self.body["Labels"]

    @property
    def attrs(self) -> dict[str, Any]:
        networks = self.body["NetworkingConfig"]["EndpointsConfig"]
        return {
            "Config": {"StopSignal": self.body.get("StopSignal")},
            "State": {"Health": {"Status": "healthy"}, "ExitCode": 0},
            "NetworkSettings": {"Networks": dict(networks), "Ports": {}},
        }

    def reload(self) -> None:
        pass

    def start(self) -> None:
        self.status = "running"
        self.events.append("start")

    def restart(self) -> None:
        self.status = "running"
        self.events.append("restart")

    def kill(self, signal: str) -> None:
        self.events.append(f"kill {signal}")

    def remove(self, force: bool = False) -> None:
        del self.client.containers_by_name[self.name]


class FakeClient:
    def __init__(self, images: dict[str, str]):
        self.containers_by_name: dict[str, FakeContainer] = {}
        self.stopped: list[str] = []
        self.network_names: dict[str, dict[str, Any]] = {}
        self.drop_isolate = False
        """Hold the networks without ``isolate``, as the Podman service does once a Docker-API client read them."""
        self.files_lack_isolate = False
        """Their files lack it too: reading them again does not help."""
        self.volume_names: dict[str, dict[str, str]] = {}
        self.image_ids = images
        self.containers = SimpleNamespace(list=self._list_containers, get=self._get_container)
        self.networks = SimpleNamespace(list=self._compat_networks, get=self._compat_networks, create=self._compat_networks)
        self.volumes = SimpleNamespace(list=self._list_volumes, create=self._create_volume)
        self.images = SimpleNamespace(get=self._get_image)
        self.api = SimpleNamespace(
            base_url="http+unix://fake",
            get=self._get,
            post=self._post,
            delete=self._delete,
            _raise_for_status=lambda response: None,
            create_container_from_config=self._create,
            stop=self._stop,
            connect_container_to_network=None,
        )

    def version(self) -> dict[str, Any]:
        return {"Components": [{"Name": "Podman Engine"}]}

    def info(self) -> dict[str, Any]:
        return {"host": {"cgroupVersion": "v2"}}

    @staticmethod
    def _selected(labels: dict[str, str], filters: dict[str, list[str]]) -> bool:
        return all(labels.get(k) == v for k, _, v in (f.partition("=") for f in filters.get("label", [])))

    def _list_containers(self, all: bool = False, filters: dict | None = None) -> list[FakeContainer]:
        return [c for c in self.containers_by_name.values() if self._selected(c.labels, filters or {})]

    def _get_container(self, key: str) -> FakeContainer:
        for container in self.containers_by_name.values():
            if key in (container.name, container.id):
                return container
        raise docker.errors.NotFound(key)

    @staticmethod
    def _compat_networks(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the Docker-API network endpoints drop isolate on Podman 4.3: only libpod's may be used")

    def _list_volumes(self, filters: dict | None = None) -> list[Any]:
        return [SimpleNamespace(name=n) for n, labels in self.volume_names.items() if self._selected(labels, filters or {})]

    def _create_volume(self, name: str, labels: dict[str, str]) -> None:
        self.volume_names[name] = labels

    def _stop(self, container_id: str, timeout: int) -> None:
        container = self._get_container(container_id)
        container.status = "exited"
        container.events.append(f"stop {container.body.get('StopSignal')} {timeout}s")
        self.stopped.append(container.name)

    def _get_image(self, ref: str) -> Any:
        if ref not in self.image_ids:
            raise docker.errors.ImageNotFound(ref)
        return SimpleNamespace(id=self.image_ids[ref])

    def _get(self, url: str, params: dict | None = None) -> Any:
        import json

        if url.endswith("/_ping"):
            return SimpleNamespace(status_code=200, headers={"Libpod-Api-Version": "4.3.1"})
        assert url.endswith("/libpod/networks/json")
        filters = json.loads((params or {}).get("filters", "{}"))
        held = [
            {**spec, **({"options": {}} if self.drop_isolate else {})}
            for spec in self.network_names.values()
            if self._selected(spec["labels"], filters)
        ]
        return SimpleNamespace(status_code=200, json=lambda: held)

    def _delete(self, url: str) -> Any:
        found = self.network_names.pop(url.rsplit("/", 1)[1], None)
        return SimpleNamespace(status_code=204 if found else 404)

    def _post(self, url: str, data: str, headers: dict) -> Any:
        import json

        assert url.endswith("/libpod/networks/create")
        payload = json.loads(data)
        if payload["name"].endswith("-ccoas-reload"):
            self.drop_isolate = self.files_lack_isolate  # the service reads every network's file again
        else:
            assert payload["options"] == {"isolate": "true"} and payload["dns_enabled"] is True
        self.network_names[payload["name"]] = payload
        return SimpleNamespace(status_code=201, text=json.dumps(payload), json=lambda: payload)

    def _create(self, body: dict[str, Any], name: str) -> dict[str, str]:
        assert name not in self.containers_by_name
        container = FakeContainer(self, name, body)
        self.containers_by_name[name] = container
        return {"Id": container.id}


@pytest.fixture
def engine(tmp_path, monkeypatch):
    plan = load_plan(FIXTURES / "stack.yaml")
    client = FakeClient({s.image.ref: f"sha256:{s.name}" for s in plan.services})
    layout = SimpleNamespace(state_root=tmp_path / "state", runtime_dir=tmp_path / "run")
    paths = stack_paths(layout.state_root, layout.runtime_dir, plan.stack)
    local = LocalEngine(plan, Runtime(client, layout), paths)  # type: ignore[arg-type]
    versions = {s.name: 1 for s in plan.secrets}
    local.settled = []  # type: ignore[attr-defined]

    def settle(service, timeout=300, hooks=None):
        local.settled.append((service.name, None if hooks is None else sorted(hooks)))  # type: ignore[attr-defined]
        if service.name == "vault" and (hooks is None or 1 in hooks):
            local.steps.fingerprints = local._fingerprints(versions)
        return 0

    monkeypatch.setattr(local.steps, "settle", settle)
    monkeypatch.setattr(local.steps, "resolve_images", lambda build: None)
    monkeypatch.setattr(local.steps, "render", lambda files=None: None)
    monkeypatch.setattr(local.steps, "runtime_dirs", lambda: None)
    # the edge listener is a host process, not an engine resource: tests/test_listener.py and
    # tests/e2e/test_edge_addresses.py run it
    monkeypatch.setattr(local, "listener_operation", lambda: None)
    monkeypatch.setattr(local, "stop_listener", lambda: False)
    monkeypatch.setattr(local, "_observe_vault", lambda containers: ObservedVault(sealed=False, token_valid=True, versions=versions))
    for service in plan.services:
        for mount in service.secrets:
            path = paths.secret_file(service.name, mount.secret)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
    return local


def test_first_up_creates_everything_in_start_order_and_settles_each_service(engine):
    result = engine.up()
    client = engine.client
    assert sorted(client.network_names) == ["fx-auth", "fx-db"]
    assert sorted(client.volume_names) == ["fx-postgres-data", "fx-redis-data", "fx-vault-data"]
    assert sorted(client.containers_by_name) == ["fx-postgres", "fx-redis", "fx-vault"]
    assert all(c.status == "running" for c in client.containers_by_name.values())
    assert [name for name, _ in engine.settled] == ["vault", "postgres", "redis"]
    assert result.changes == len(result.operations) == 8
    assert [s.health for s in result.status] == ["healthy"] * 3


def test_networks_held_without_isolation_are_read_again_and_their_containers_restarted(engine):
    engine.up()
    engine.settled.clear()
    engine.client.drop_isolate = True  # what a Docker-API client's `network ls` does to Podman 4.3's service
    planned = [str(op) for op in engine.up(dry_run=True).operations]
    assert [p.split(":")[0] for p in planned] == [
        "reload network fx-auth", "reload network fx-db", "restart vault", "restart postgres", "restart redis"
    ]
    assert planned[2] == "restart vault: network auth started without isolation"
    result = engine.up()
    assert engine.client.drop_isolate is False and "fx-ccoas-reload" not in engine.client.network_names
    assert engine.client.containers_by_name["fx-redis"].events[-1] == "start" and engine.client.containers_by_name["fx-redis"].events[-2].startswith("stop ")
    assert sum("without isolation" in n for n in result.notes) == 2
    assert engine.up().changes == 0


def test_a_network_whose_file_lacks_isolation_is_refused_with_what_to_do(engine):
    engine.up()
    engine.client.drop_isolate = engine.client.files_lack_isolate = True
    with pytest.raises(EngineError, match=r"fx-auth: still without isolation.*`ccoas down` then `ccoas up`"):
        engine.up()


def test_a_second_up_observes_a_converged_stack_and_does_nothing(engine):
    engine.up()
    engine.settled.clear()
    _, _, operations = engine.plan_operations()
    assert operations == []
    result = engine.up()
    assert result.changes == 0 and engine.settled == []


def test_an_exited_container_is_started_and_settled_alone(engine):
    engine.up()
    engine.settled.clear()
    engine.client.containers_by_name["fx-redis"].status = "exited"
    assert [str(op) for op in engine.up(dry_run=True).operations] == ["start redis: container exited"]
    engine.up()
    assert engine.client.containers_by_name["fx-redis"].events[-1] == "start"
    assert engine.settled == [("redis", None)]


def test_a_replaced_dependency_restarts_its_dependants(engine):
    engine.up()
    engine.settled.clear()
    vault = engine.client.containers_by_name["fx-vault"]
    vault.body["Labels"]["io.ccoas.spec"] = "stale"
    engine.up()
    assert engine.client.containers_by_name["fx-vault"] is not vault
    # restarted as it stops: its own signal (a Postgres fast shutdown), then started again
    assert engine.client.containers_by_name["fx-postgres"].events[-2:] == ["stop SIGINT 60s", "start"]
    assert [name for name, _ in engine.settled] == ["vault", "postgres", "redis"]


def test_a_container_of_the_stack_not_in_the_plan_is_removed(engine):
    engine.up()
    engine.client._create({"Labels": {"io.ccoas.stack": "fx", "io.ccoas.service": "minio"}, "NetworkingConfig": {"EndpointsConfig": {}}}, "fx-minio")
    result = engine.up()
    assert "fx-minio" not in engine.client.containers_by_name
    assert [str(op) for op in result.operations] == ["remove fx-minio: service minio is not in the plan"]


def test_a_hook_interrupted_before_it_was_recorded_runs_again_alone(engine):
    engine.up()
    engine.settled.clear()
    record = engine.paths.state / "steps.json"
    import json

    steps = json.loads(record.read_text())
    del steps["hook:postgres:0"]
    record.write_text(json.dumps(steps))
    engine.up()
    assert engine.settled == [("postgres", [0])]


def test_down_stops_each_container_with_its_own_signal_in_reverse_start_order(engine):
    engine.up()
    containers = dict(engine.client.containers_by_name)
    engine.down()
    order = [name for tier in reversed(engine.plan.start_order) for name in sorted(tier)]
    assert engine.client.stopped == [engine.plan.service(name).container_name for name in order]
    for name, container in containers.items():
        service = engine.plan.service(container.labels["io.ccoas.service"])
        assert container.events[-1] == f"stop {service.stop.signal} {service.stop.timeout_s}s", name
    assert engine.client.containers_by_name == {}


def test_a_published_port_counts_as_ready_only_once_the_host_side_accepts_connections():
    """Healthy inside is not enough: rootless Podman's port forwarder may listen a moment later."""
    import socket
    from types import SimpleNamespace

    from ccoas.steps import unreachable_published_ports

    listening = socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    ports = {
        "8443/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(listening.getsockname()[1])}],
        "8080/tcp": [{"HostIp": "", "HostPort": str(closed_port)}],
        "9000/tcp": None,  # exposed, not published
    }
    container = SimpleNamespace(attrs={"NetworkSettings": {"Ports": ports}}, reload=lambda: None)
    try:
        assert unreachable_published_ports(container) == [f"127.0.0.1:{closed_port}"]
    finally:
        listening.close()
    assert len(unreachable_published_ports(container)) == 2


def test_a_restart_waits_until_the_stopped_containers_ports_are_released():
    """The old port forwarder may hold a published port a moment after its container stopped:
    a start before then cannot bind it, so the engine waits, and says so if it never happens."""
    import socket
    import threading

    from ccoas.errors import EngineError
    from ccoas.steps import wait_until_released

    held = socket.create_server(("127.0.0.1", 0))
    address = held.getsockname()
    threading.Timer(0.5, held.close).start()
    wait_until_released("nginx", [address], timeout_s=10)  # returns once the listener is gone

    stuck = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(EngineError, match=rf"nginx: 127.0.0.1:{stuck.getsockname()[1]} still accept connections"):
            wait_until_released("nginx", [stuck.getsockname()], timeout_s=0.5)
    finally:
        stuck.close()


def test_a_healthy_container_whose_port_never_listens_is_restarted_once_and_the_user_told(monkeypatch):
    """Podman 4.3 sometimes starts a restarted container without its port forwarder: the wait
    for readiness restarts it once through a podman process of its own (stop signal and timeout
    kept), then it is ready; a note says so."""
    import socket
    import subprocess
    from types import SimpleNamespace

    import ccoas.steps
    from ccoas.plan import Stop
    from ccoas.steps import Steps

    monkeypatch.setattr(ccoas.steps, "POLL_S", 0.05)
    monkeypatch.setattr(ccoas.steps, "PORT_FORWARD_GRACE_S", 0.2)
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    listeners: list[socket.socket] = []
    commands: list[list[str]] = []

    def podman(command, **kwargs):
        commands.append(command)
        if command[1] == "start":
            listeners.append(socket.create_server(("127.0.0.1", port)))
        return SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(subprocess, "run", podman)
    container = SimpleNamespace(
        name="x-nginx", status="running", reload=lambda: None,
        attrs={"NetworkSettings": {"Ports": {"8443/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}}},
    )
    healthcheck = SimpleNamespace(start_period_s=0, interval_s=1, retries=1)
    service = SimpleNamespace(name="nginx", container_name="x-nginx", healthcheck=healthcheck, stop=Stop(signal="SIGQUIT", timeout_s=5))
    layout = SimpleNamespace(engine_command=lambda *args: list(args))
    runtime = SimpleNamespace(layout=layout, container=lambda s: container, probe=lambda s, c, ctr: (True, "ok"))
    steps = Steps(SimpleNamespace(), SimpleNamespace(), runtime)
    try:
        steps.wait(service, healthcheck, "ready", timeout=10)
    finally:
        for listener in listeners:
            listener.close()

    assert commands == [["podman", "stop", "--time", "5", "x-nginx"], ["podman", "start", "x-nginx"]]
    assert len(steps.notes) == 1 and f"127.0.0.1:{port}" in steps.notes[0] and "restarted it once" in steps.notes[0]
