"""End to end on this host: prepare it with pyinfra, build every local image, run each one hardened.

Each image runs rootless as its own non-root uid with a read-only root fs, every capability
dropped, no-new-privileges and the tmpfs mounts the plan gives it, and its own HEALTHCHECK
must pass. Nothing is pulled: images are built here (``--pull=never`` everywhere).

Needs root (to prepare the host and drive the engine user) and takes minutes on a cold
cache (Directus: ~4 min of npm install, cached afterwards under the cache root).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from ccoas.planner import CATALOG
from ccoas.host import HostLayout, ensure_api_service, host_layout, prepare
from ccoas.images import build_images
from ccoas.plan import Image, LocalRecipe
from ccoas.components.base import recipe_digest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="prepares the host and drives the engine user: needs root"),
]

COMPONENTS = ("postgres", "redis", "nginx", "vault", "directus")
HARDENING = ("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
RUN_ID = uuid.uuid4().hex[:8]


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layout() -> HostLayout:
    return host_layout()


@pytest.fixture(scope="module")
def prepared(layout: HostLayout) -> list[int]:
    """Apply roles/host.py twice; return how many operations each run changed."""
    return [prepare(layout=layout).changed, prepare(layout=layout).changed]


@pytest.fixture(scope="module")
def client(prepared, layout: HostLayout):
    docker = pytest.importorskip("docker")
    return docker.DockerClient(base_url=ensure_api_service(layout), timeout=1800)


def local_service(name: str) -> SimpleNamespace:
    """The image part of a plan service, as the plan declares it for a local build."""
    component = CATALOG[name]
    recipe = component.recipe
    digest = recipe_digest(recipe.containerfile, recipe.files, recipe.artifacts)
    image = Image(
        ref=f"localhost/ccoas/{name}:{digest[:12]}",
        source="local",
        pull="never",
        recipe=LocalRecipe(
            component=name, containerfile=recipe.containerfile, files=recipe.files, artifacts=recipe.artifacts, digest=digest
        ),
    )
    return SimpleNamespace(name=name, image=image, uid=component.uid, gid=component.gid)


@pytest.fixture(scope="module")
def built(client, layout: HostLayout) -> dict[str, SimpleNamespace]:
    services = [local_service(name) for name in COMPONENTS]
    results = build_images(services, layout, client)
    assert [r.name for r in results] == list(COMPONENTS)
    return {s.name: s for s in services}


class Engine:
    """The podman CLI as the engine user, plus cleanup of what a test created."""

    def __init__(self, layout: HostLayout):
        self.layout = layout
        self.created: list[tuple[str, str]] = []

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            self.layout.engine_command("podman", *args), capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def container(self, name: str, image: str, *args: str, user: str, tmpfs: tuple[str, ...] = ("/tmp",)) -> str:
        full = f"ccoas-e2e-{RUN_ID}-{name}"
        mounts = [f"--tmpfs={path}:rw,nosuid,nodev,mode=1777,size=64m" for path in tmpfs]
        self.created.append(("container", full))
        self.run("run", "-d", "--pull=never", "--name", full, "--user", user, *HARDENING, *mounts, *args, image)
        return full

    def volume(self, name: str) -> str:
        full = f"ccoas-e2e-{RUN_ID}-{name}"
        self.created.append(("volume", full))
        self.run("volume", "create", full)
        return full

    def network(self, name: str) -> str:
        full = f"ccoas-e2e-{RUN_ID}-{name}"
        self.created.append(("network", full))
        self.run("network", "create", full)
        return full

    def wait_healthy(self, name: str, timeout_s: float) -> None:
        """Run the image's health check until it passes (no systemd here runs it on a timer)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            last = self.run("healthcheck", "run", name, check=False)
            if last.returncode == 0:
                return
            state = self.run("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
            if state not in ("running", "created"):
                break
            time.sleep(2)
        logs = self.run("logs", "--tail", "60", name, check=False)
        raise AssertionError(f"{name} never became healthy (last: {last and last.stdout}{last and last.stderr})\n{logs.stdout}{logs.stderr}")

    def cleanup(self) -> None:
        for kind, name in reversed(self.created):
            if kind == "container":
                self.run("rm", "-f", "-t", "2", name, check=False)
            else:
                self.run(kind, "rm", "-f", name, check=False)


@pytest.fixture
def engine(layout: HostLayout, client):
    eng = Engine(layout)
    yield eng
    eng.cleanup()


@pytest.fixture
def workdir(layout: HostLayout):
    """Config and secret files for containers: outside /root, which the engine user cannot read."""
    path = layout.state_root / "e2e" / f"{RUN_ID}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, mode=0o755)
    os.chmod(path.parent, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config_dir(root: Path, component: str, files: dict[str, str]) -> Path:
    path = root / "config" / component
    path.mkdir(parents=True)
    os.chmod(root / "config", 0o755)
    os.chmod(path, 0o755)
    for name, text in files.items():
        (path / name).write_text(text)
        os.chmod(path / name, 0o644)
    return path


def secret_file(root: Path, layout: HostLayout, name: str, value: str, uid: int, gid: int) -> Path:
    """A secret as the plan delivers it: mode 0400, owned by the service's uid inside the container."""
    path = root / "secrets" / name
    path.parent.mkdir(exist_ok=True)
    os.chmod(path.parent, 0o755)
    path.write_text(value)
    os.chmod(path, 0o400)
    os.chown(path, layout.host_uid(uid), layout.host_uid(gid))
    return path


def postgres_container(engine: Engine, built, layout, workdir, *net_args: str, name: str = "postgres") -> tuple[str, str]:
    svc = built["postgres"]
    password = secrets.token_hex(16)
    pw = secret_file(workdir, layout, f"{name}_password", password + "\n", svc.uid, svc.gid)
    data = engine.volume(f"{name}-data")
    container = engine.container(
        name,
        svc.image.ref,
        *net_args,
        "-v", f"{data}:/var/lib/postgresql",
        "-v", f"{pw}:/run/secrets/postgres_password:ro",
        "-e", "POSTGRES_USER=postgres",
        "-e", "POSTGRES_DB=app",
        "-e", "POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password",
        "-e", "PGDATA=/var/lib/postgresql/data",
        user=f"{svc.uid}:{svc.gid}",
        tmpfs=("/tmp", "/var/run/postgresql"),
    )
    return container, password


def assert_runs_as(engine: Engine, container: str, uid: int) -> None:
    assert engine.run("exec", container, "id", "-u").stdout.strip() == str(uid)


# --- tests -----------------------------------------------------------------------------------


def test_host_prepare_is_idempotent(prepared, layout: HostLayout):
    assert prepared[1] == 0, f"second prepare changed {prepared[1]} operations"
    assert layout.runtime_dir.is_dir() and (layout.runtime_dir.stat().st_mode & 0o777) == 0o700
    assert layout.runtime_dir.stat().st_uid == layout.uid
    assert layout.state_root.stat().st_uid == 0 and not layout.state_root.stat().st_mode & 0o022  # root's state
    assert layout.cache_root.stat().st_uid == layout.uid
    assert (os.stat("/dev/net/tun").st_mode & 0o666) == 0o666
    assert layout.host_uid(0) == layout.uid
    assert layout.host_uid(999) == layout.subuid_start + 998


def test_api_service_answers(client):
    assert client.ping()


def test_images_are_built_and_not_rebuilt(built, client, layout: HostLayout):
    again = build_images(list(built.values()), layout, client)
    assert [(r.name, r.built) for r in again] == [(name, False) for name in COMPONENTS]
    for svc in built.values():
        config = client.api.inspect_image(svc.image.ref)["Config"]
        assert config["User"] == f"{svc.uid}:{svc.gid}"
        assert config["Labels"]["io.ccoas.digest"] == svc.image.recipe.digest


def test_postgres_runs_hardened_with_pgvector(built, engine: Engine, layout, workdir):
    container, _ = postgres_container(engine, built, layout, workdir)
    engine.wait_healthy(container, 90)
    assert_runs_as(engine, container, 999)
    out = engine.run(
        "exec", container, "psql", "-X", "-At", "-U", "postgres", "-d", "app", "-c",
        "CREATE EXTENSION IF NOT EXISTS vector; SELECT '[1,2,3]'::vector <-> '[1,2,5]'::vector;",
    ).stdout
    assert out.strip().splitlines()[-1] == "2"


def test_postgres_refuses_a_plain_password(built, engine: Engine):
    svc = built["postgres"]
    proc = engine.run(
        "run", "--rm", "--pull=never", "--user", f"{svc.uid}:{svc.gid}", *HARDENING, "--tmpfs", "/tmp",
        "-e", "POSTGRES_PASSWORD=plain", svc.image.ref, check=False,
    )
    assert proc.returncode != 0
    assert "POSTGRES_PASSWORD_FILE" in proc.stderr + proc.stdout


def test_redis_runs_hardened(built, engine: Engine, workdir):
    svc = built["redis"]
    conf = config_dir(workdir, "redis", {"redis.conf": "bind 0.0.0.0\nport 6379\ndir /data\nprotected-mode no\n"})
    data = engine.volume("redis-data")
    container = engine.container(
        "redis", svc.image.ref, "-v", f"{conf}:/etc/ccoas/redis:ro", "-v", f"{data}:/data", user=f"{svc.uid}:{svc.gid}"
    )
    engine.wait_healthy(container, 30)
    assert_runs_as(engine, container, 999)
    assert engine.run("exec", container, "redis-cli", "set", "k", "v").stdout.strip() == "OK"


NGINX_CONF = """\
pid /tmp/nginx.pid;
error_log stderr;
events {}
http {
    access_log off;
    client_body_temp_path /var/cache/nginx/client_temp;
    proxy_temp_path /var/cache/nginx/proxy_temp;
    fastcgi_temp_path /var/cache/nginx/fastcgi_temp;
    uwsgi_temp_path /var/cache/nginx/uwsgi_temp;
    scgi_temp_path /var/cache/nginx/scgi_temp;
    server { listen 8080; location / { return 200 "edge\\n"; } }
    server { listen 127.0.0.1:8081; location = /healthz { return 200 "ok\\n"; } }
}
"""


def test_nginx_runs_hardened(built, engine: Engine, workdir):
    svc = built["nginx"]
    conf = config_dir(workdir, "nginx", {"nginx.conf": NGINX_CONF})
    container = engine.container(
        "nginx", svc.image.ref, "-v", f"{conf}:/etc/ccoas/nginx:ro",
        user=f"{svc.uid}:{svc.gid}", tmpfs=("/tmp", "/var/cache/nginx", "/var/lib/nginx", "/run/nginx"),
    )
    engine.wait_healthy(container, 30)
    assert_runs_as(engine, container, 101)
    assert engine.run("exec", container, "curl", "-fsS", "http://127.0.0.1:8080/").stdout == "edge\n"


# OpenBao 2.7 (the local Vault) has no "file" storage and no disable_mlock: raft it is.
VAULT_HCL = """\
storage "raft" {
  path    = "/vault/data"
  node_id = "ccoas-e2e"
}
listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}
api_addr     = "http://127.0.0.1:8200"
cluster_addr = "http://127.0.0.1:8201"
ui           = false
"""


def test_vault_runs_hardened_and_unseals(built, engine: Engine, workdir):
    svc = built["vault"]
    conf = config_dir(workdir, "vault", {"config.hcl": VAULT_HCL})
    data = engine.volume("vault-data")
    container = engine.container(
        "vault", svc.image.ref, "-v", f"{conf}:/etc/ccoas/vault:ro", "-v", f"{data}:/vault/data",
        user=f"{svc.uid}:{svc.gid}",
    )
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        status = engine.run("exec", container, "vault", "status", check=False)
        if status.returncode == 2:  # alive, sealed: not ready yet
            break
        time.sleep(1)
    assert status is not None and status.returncode == 2, status and status.stdout + status.stderr
    assert engine.run("healthcheck", "run", container, check=False).returncode != 0
    assert_runs_as(engine, container, 100)
    init = json.loads(
        engine.run("exec", container, "vault", "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json").stdout
    )
    engine.run("exec", container, "vault", "operator", "unseal", init["unseal_keys_b64"][0])
    engine.wait_healthy(container, 30)


def test_directus_starts_against_postgres(built, engine: Engine, layout, workdir):
    network = engine.network("net")
    pg, password = postgres_container(
        engine, built, layout, workdir, "--network", network, "--network-alias", "postgres", name="directus-db"
    )
    engine.wait_healthy(pg, 90)
    svc = built["directus"]
    files = {
        "db_password": password,
        "secret": secrets.token_hex(32),
        "admin_password": secrets.token_hex(12),
    }
    mounts: list[str] = []
    for key, value in files.items():
        path = secret_file(workdir, layout, f"directus_{key}", value, svc.uid, svc.gid)
        mounts += ["-v", f"{path}:/run/secrets/directus_{key}:ro"]
    uploads, extensions = engine.volume("directus-uploads"), engine.volume("directus-extensions")
    container = engine.container(
        "directus",
        svc.image.ref,
        "--network", network,
        *mounts,
        "-v", f"{uploads}:/directus/uploads",
        "-v", f"{extensions}:/directus/extensions",
        "-e", "DB_CLIENT=pg",
        "-e", "DB_HOST=postgres",
        "-e", "DB_PORT=5432",
        "-e", "DB_DATABASE=app",
        "-e", "DB_USER=postgres",
        "-e", "DB_PASSWORD_FILE=/run/secrets/directus_db_password",
        "-e", "SECRET_FILE=/run/secrets/directus_secret",
        "-e", "ADMIN_EMAIL=admin@example.com",
        "-e", "ADMIN_PASSWORD_FILE=/run/secrets/directus_admin_password",
        "-e", "TELEMETRY=false",
        "-e", "MARKETPLACE_TRUST=sandbox",
        "-e", "MARKETPLACE_REGISTRY=http://127.0.0.1:9",
        user=f"{svc.uid}:{svc.gid}",
    )
    engine.wait_healthy(container, 240)
    assert_runs_as(engine, container, 1000)
