"""No traceback from the engine, ever: a fake Docker client raises at each step of `up`, and the
command line prints one message naming the service, the step and the engine's own words,
with exit code 1 (an apply failed). Vault itself is stubbed (it is not the engine)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import docker.errors
import pytest
import requests
import yaml

import ccoas.cli
from ccoas.cli import app
from ccoas.engine.local import LocalEngine
from ccoas.engine.runtime import Runtime
from ccoas.host import HostLayout
from ccoas.state import stack_paths
from ccoas.steps import Steps


def _e2e_fixtures():
    """The e2e tier's small-stack builder (its conftest, loaded by path: the name is taken)."""
    spec = importlib.util.spec_from_file_location("e2e_fixtures", Path(__file__).parent / "e2e" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


component_stack = _e2e_fixtures().component_stack

NETAVARK = 'netavark: No such file or directory (os error 2)'


def api_error(words: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = 500
    return docker.errors.APIError("500 Server Error: Internal Server Error", response, explanation=words)


class FakeResponse:
    def __init__(self, status: int, data: object = None, headers: dict | None = None):
        self.status_code = status
        self.headers = headers or {}
        self._data = data or {}
        self.text = str(data)

    def json(self) -> object:
        return self._data

    def raise_for_status(self) -> None:
        pass


class FakeContainer:
    def __init__(self, client: "FakeClient", name: str):
        self.client, self.name, self.id = client, name, f"id-{name}"
        self.status = "created"
        self.labels: dict[str, str] = {}
        self.attrs = {"NetworkSettings": {"Networks": {}, "Ports": {}}, "State": {}}

    def reload(self) -> None:
        pass

    def start(self) -> None:
        self.client.maybe_fail("start")
        self.status = "running"

    def exec_run(self, cmd, user=None):
        if self.client.hook_commands and tuple(cmd) in self.client.hook_commands:
            self.client.maybe_fail("hook")
        return SimpleNamespace(exit_code=0, output=b"")

    def logs(self, tail: int = 30) -> bytes:
        return b""


class FakeClient:
    """Just enough of docker.DockerClient for `up`; raises at the step named ``fail_at``."""

    def __init__(self, fail_at: str, error: Exception):
        self.fail_at, self.error = fail_at, error
        self.hook_commands: set[tuple[str, ...]] = set()
        self.by_name: dict[str, FakeContainer] = {}
        outer = self

        class Images:
            def get(self, ref):
                outer.maybe_fail("build")
                return SimpleNamespace(id="sha256:0")

        class Volumes:
            def get(self, name):
                raise docker.errors.NotFound("no such volume")

            def list(self, filters=None):
                return []

            def create(self, name, labels=None):
                return None

        class Containers:
            def list(self, all=False, filters=None):
                return list(outer.by_name.values())

            def get(self, key):
                found = outer.by_name.get(key) or next((c for c in outer.by_name.values() if c.id == key), None)
                if found is None:
                    raise docker.errors.NotFound("no such container")
                if found.status == "running":
                    outer.maybe_fail("health")
                return found

        class Api:
            base_url = "http+docker://localhost"

            def get(self, url, params=None):
                if url.endswith("/libpod/networks/json"):
                    return FakeResponse(200, [])
                if url.endswith("/_ping"):
                    return FakeResponse(200, "OK", headers={"Libpod-Api-Version": "4.3.1"})
                if url.endswith("/healthcheck"):
                    return FakeResponse(200, {"Status": "healthy", "Log": []})
                return FakeResponse(404)

            def post(self, url, data=None, headers=None):
                return FakeResponse(201)

            def create_container_from_config(self, body, name):
                outer.maybe_fail("create")
                outer.by_name[name] = FakeContainer(outer, name)
                return {"Id": outer.by_name[name].id}

            def connect_container_to_network(self, *args, **kwargs):
                pass

            def _raise_for_status(self, response):
                pass

        self.images, self.volumes, self.containers, self.api = Images(), Volumes(), Containers(), Api()

    def maybe_fail(self, step: str) -> None:
        if step == self.fail_at:
            raise self.error

    def version(self) -> dict:
        return {"Components": [{"Name": "Podman Engine"}]}

    def info(self) -> dict:
        return {}


@pytest.fixture
def stack_file(tmp_path: Path) -> Path:
    path = tmp_path / "h8-errors.yaml"
    path.write_text(yaml.safe_dump(component_stack("h8-errors", ("vault", "postgres")), sort_keys=False))
    return path


STEPS = [
    ("build", api_error("image store is locked"), "images: build failed: image store is locked"),
    ("create", api_error("name is already in use"), "vault: create failed: name is already in use"),
    ("start", api_error(NETAVARK), f"vault: start failed: {NETAVARK}"),
    ("health", requests.exceptions.ConnectionError("Connection aborted: podman.sock"), "vault: health failed: Connection aborted: podman.sock"),
    ("hook", api_error("container is paused"), "postgres: hook exec failed: container is paused"),
]


@pytest.fixture
def fake_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``fake_up(client)``: `ccoas up` on ``client``; the preflight, file rendering and Vault stubbed."""
    layout = HostLayout(engine_user="root", state_root=tmp_path / "state", cache_root=tmp_path / "cache")
    vault_stub = SimpleNamespace(converge=lambda: 0, ensure=lambda: 0, materialize=lambda: {})
    monkeypatch.setattr(Steps, "render", lambda self, files=None: None)
    monkeypatch.setattr(Steps, "runtime_dirs", lambda self: None)
    monkeypatch.setattr(LocalEngine, "desired_body", lambda self, service, desired: {"Labels": {"x": "y"}})
    monkeypatch.setattr(Steps, "vault", lambda self: vault_stub)
    monkeypatch.setattr(Steps, "secrets", lambda self: vault_stub)

    def use(client: FakeClient) -> None:
        def connect(plan, stack, progress=None):
            client.hook_commands = {tuple(h.command) for s in plan.services for h in s.hooks if h.command}
            paths = stack_paths(layout.state_root, tmp_path / "run", plan.stack)
            return LocalEngine(plan, Runtime(client, layout), paths, progress)

        monkeypatch.setattr(ccoas.cli, "_preflight", connect)

    return use


@pytest.mark.parametrize("step,error,message", STEPS, ids=[s[0] for s in STEPS])
def test_an_engine_failure_at_each_step_is_one_message_and_exit_1(step, error, message, stack_file, fake_up, runner):
    fake_up(FakeClient(step, error))

    result = runner.invoke(app, ["up", str(stack_file)])

    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == f"error: {message}"


def test_the_fake_engine_brings_the_stack_up_when_nothing_fails(stack_file, fake_up, runner):
    """What fails above is the injected error: with none, the same fake brings `up` to its end."""
    client = FakeClient("nothing", RuntimeError())
    fake_up(client)

    result = runner.invoke(app, ["up", str(stack_file)])

    assert result.exit_code == 0, result.output
    assert set(client.by_name) == {"h8-errors-vault", "h8-errors-postgres"}


def test_an_engine_error_that_escapes_unnamed_is_still_one_line_and_exit_1(runner, monkeypatch, stack_file):
    def boom(plan, progress=None):
        raise requests.exceptions.ConnectionError("('Connection aborted.', FileNotFoundError(2, 'No such file or directory'))")

    monkeypatch.setattr(ccoas.cli, "_engine", boom)

    result = runner.invoke(app, ["down", str(stack_file)])

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: stack h8-errors: remove failed: ('Connection aborted.'")
