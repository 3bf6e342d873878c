"""The edge, attacked from the outside: real clients (curl, openssl s_client) against the
published ports of a running stack's Nginx. Each finding of the external review is one test
that would fail against the old config (refusals are checked with a request that does
reach the upstream first, so a refusal cannot be vacuous)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from ccoas.engine.local import LocalEngine
from ccoas.planner import CATALOG, build_plan, load_stack

pytestmark = pytest.mark.e2e

NAME = f"h11-edge-{uuid.uuid4().hex[:6]}"
ENABLED = ("nginx", "directus", "postgres", "redis", "minio", "vault")
FORGED = "203.0.113.9"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    https, http = free_port(), free_port()
    stack = {
        "version": 1,
        "name": NAME,
        "environment": "ci",
        "images": {"source": "local"},
        "tls": {"mode": "generate"},
        "components": {
            **{c: {"enabled": False} for c in sorted(CATALOG) if c not in ENABLED},
            "nginx": {"publish": [{"container_port": 8443, "host_port": https}, {"container_port": 8080, "host_port": http}]},
        },
        "schema": {"tables": [{"name": "notes", "policy": "owner-only", "columns": [
            {"name": "id", "type": "uuid", "primary_key": True, "default": "gen_random_uuid()"},
            {"name": "owner_id", "type": "uuid", "nullable": False}]}]},
    }
    path = tmp_path_factory.mktemp("edge") / "edge.yaml"
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    engine = LocalEngine.connect(build_plan(load_stack(path), name=NAME))
    engine.ports = {"https": https, "http": http}  # type: ignore[attr-defined]
    engine.stack_path = path  # type: ignore[attr-defined]
    try:
        engine.up()
        yield engine
    finally:
        engine.down(purge=True)


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-gsS", "--max-time", "20", *args], capture_output=True, text=True, timeout=30)


def https(engine, path: str, *args: str, host: str | None = None) -> tuple[int, dict[str, str], str]:
    """A request through the named server (SNI and Host = the domain) unless ``host`` is given."""
    port = engine.ports["https"]
    name = host or engine.plan.domain
    result = curl("-k", "-i", "--resolve", f"{name}:{port}:127.0.0.1", *args, f"https://{name}:{port}{path}")
    head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
    while head.startswith("HTTP/") and " 100 " in head.split("\n")[0]:
        head, _, body = body.partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return status, headers, body


def nginx_exec(engine, *command: str) -> str:
    container = engine.client.containers.get(engine.plan.service("nginx").container_name)
    result = container.exec_run(list(command), user=engine.plan.service("nginx").user)
    return result.output.decode()


def admin_token(engine, *extra: str) -> str:
    password = engine.paths.secret_file("directus", "directus_admin_password").read_text()
    body = json.dumps({"email": "admin@example.com", "password": password})
    status, _, text = https(engine, "/directus/auth/login", "-H", "Content-Type: application/json", "--data", body, *extra)
    assert status == 200, text
    return json.loads(text)["data"]["access_token"]


# --- Host handling ------------------------------------------------------------------------------


def test_unknown_host_is_refused_on_both_ports(engine):
    port = engine.ports["http"]
    plain = curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H", "Host: evil.example", f"http://127.0.0.1:{port}/x")
    assert plain.stdout.strip() == "400", plain.stdout
    assert https(engine, "/directus/server/ping", host="evil.example")[0] == 421  # SNI and Host evil.example
    bare_ip = curl("-k", "-o", "/dev/null", "-w", "%{http_code}", f"https://127.0.0.1:{engine.ports['https']}/directus/server/ping")
    assert bare_ip.stdout == "421"
    assert https(engine, "/directus/server/ping")[0] == 200  # the same request, for the domain, is served


def test_http_redirects_only_to_the_configured_domain(engine):
    port = engine.ports["http"]
    result = curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H", f"Host: {engine.plan.domain}", f"http://127.0.0.1:{port}/x?y=1")
    assert result.stdout.strip() == f"308 https://{engine.plan.domain}:{engine.ports['https']}/x?y=1"


# --- MinIO behind /storage/ ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/storage/minio/admin/v3/info", "/storage/minio/v2/metrics/cluster", "/storage/?Action=AssumeRole&Version=2011-06-15",
     "/storage/uploads/", "/storage/uploads/anything", "/storage/", "/storage/minio/health/live"],
)
def test_storage_paths_of_no_public_bucket_never_reach_minio(engine, path):
    status, headers, body = https(engine, path)
    assert status == 404 and "nginx" in body.lower() and "<Error>" not in body, (status, body[:200])
    # the same path straight at MinIO (from nginx's network) does reach it: the refusal is the edge's
    direct = nginx_exec(engine, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://minio:9000" + path.removeprefix("/storage"))
    assert direct != "000"


# --- client address -----------------------------------------------------------------------------


def test_a_forged_x_forwarded_for_is_not_what_directus_records(engine):
    token = admin_token(engine, "-H", f"X-Forwarded-For: {FORGED}")
    status, _, text = https(
        engine, "/directus/activity?filter[action][_eq]=login&sort=-timestamp&limit=1&fields=ip", "-H", f"Authorization: Bearer {token}"
    )
    assert status == 200, text
    recorded = json.loads(text)["data"][0]["ip"]
    assert recorded and recorded != FORGED and FORGED not in recorded


def test_remote_addr_of_a_client_on_another_loopback_address(engine):
    """$remote_addr is the client's own address (the edge listener keeps it, see the README,
    "The edge"; rootlessport, which published Nginx before, showed every client as one address)."""
    marker = f"probe-{uuid.uuid4().hex}"  # in the user agent, which is logged (a query string is not)
    result = curl("-k", "--interface", "127.0.0.2", "-A", marker, "-o", "/dev/null", "-w", "%{http_code}", "--resolve",
                  f"{engine.plan.domain}:{engine.ports['https']}:127.0.0.1", f"https://{engine.plan.domain}:{engine.ports['https']}/directus/server/ping")
    assert result.stdout == "200", result.stderr
    logs = engine.client.containers.get(engine.plan.service("nginx").container_name).logs().decode()
    line = next(l for l in logs.splitlines() if marker in l)
    seen = line.split()[0]
    print(f"client 127.0.0.2 → nginx $remote_addr {seen}")
    assert seen == "127.0.0.2"


# --- TLS and headers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "group", "accepted"),
    [("-tls1_3", "X25519", True), ("-tls1_3", "P-256", True), ("-tls1_3", "P-384", True),
     ("-tls1_3", "X448", False), ("-tls1_3", "P-521", False), ("-tls1_2", "X448", False), ("-tls1_2", "P-521", False)],
)  # fmt: skip
def test_key_exchange_groups_are_mozilla_intermediate(engine, version, group, accepted):
    """openssl s_client offering one group. (Accepted groups are tried on TLS 1.3 only: in TLS 1.2
    the client's group list also limits the curve of the server's ECDSA P-256 certificate.)"""
    result = subprocess.run(
        ["openssl", "s_client", version, "-groups", group, "-servername", engine.plan.domain, "-connect", f"127.0.0.1:{engine.ports['https']}"],
        input="", capture_output=True, text=True, timeout=30,
    )
    handshake = re.search(r"^(?:New|Reused), TLSv", result.stdout, re.M) is not None
    assert handshake == accepted, result.stdout[-600:] + result.stderr[-300:]


def test_hsts_two_years_and_no_x_powered_by(engine):
    status, headers, _ = https(engine, "/directus/server/ping")
    assert status == 200
    assert headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"
    assert "x-powered-by" not in headers
    direct = nginx_exec(engine, "curl", "-s", "-D", "-", "-o", "/dev/null", "http://directus:8055/server/ping")
    assert "x-powered-by" in direct.lower()  # Directus does send it: the edge hides it


@pytest.mark.parametrize(
    "path", ["/directus/server/specs/oas", "/server/specs/oas", "/directus/SERVER/Specs/oas", "/directus//server/specs/oas", "/directus/server/specs/graphql"]
)
def test_the_openapi_document_is_not_public(engine, path):
    status, _, body = https(engine, path)
    assert status == 404 and '"openapi"' not in body
    direct = nginx_exec(engine, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://directus:8055/server/specs/oas")
    assert direct == "200"  # Directus serves it to anyone who reaches it: the edge does not let them


# --- each service control of `ccoas check` fails when its property is broken ----------------------


def control(engine, name: str) -> int:
    from ccoas.compliance import run_checks

    return run_checks(engine.stack_path, NAME, extra=["-k", name])


def network(engine, *args: str) -> None:
    """``podman network ARGS`` through libpod's endpoints (Podman 4.3's Docker-API network calls drop ``isolate``)."""
    command = engine.runtime.layout.engine_command("podman", "--remote", "--url", engine.runtime.layout.base_url, "network", *args)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def exec_in(engine, service: str, *command: str, user: str | None = None) -> str:
    container = engine.client.containers.get(engine.plan.service(service).container_name)
    result = container.exec_run(list(command), user=user or engine.plan.service(service).user)
    assert result.exit_code == 0, result.output.decode()
    return result.output.decode()


def psql(engine, sql: str) -> str:
    return exec_in(engine, "postgres", "psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "app", "-c", sql)


@pytest.mark.parametrize(
    ("name", "break_sql", "restore_sql"),
    [
        ("test_postgres_rls_enabled_and_forced_on_every_app_table", "ALTER TABLE app.notes NO FORCE ROW LEVEL SECURITY", "ALTER TABLE app.notes FORCE ROW LEVEL SECURITY"),
        ("test_postgres_no_login_role_bypasses_rls", "ALTER ROLE directus BYPASSRLS", "ALTER ROLE directus NOBYPASSRLS"),
    ],
)
def test_postgres_controls_fail_when_broken(engine, name, break_sql, restore_sql):
    assert control(engine, name) == 0
    psql(engine, break_sql)
    try:
        assert control(engine, name) != 0
    finally:
        psql(engine, restore_sql)
    assert control(engine, name) == 0


def test_minio_control_fails_when_a_bucket_is_anonymous(engine):
    name = "test_minio_refuses_anonymous_access"
    assert control(engine, name) == 0
    mc = 'MC_CONFIG_DIR=/tmp/.mc-e2e MC_HOST_local="http://$(cat /run/secrets/minio_root_user):$(cat /run/secrets/minio_root_password)@127.0.0.1:9000" mc --quiet anonymous set {} local/uploads'
    exec_in(engine, "minio", "sh", "-c", mc.format("download"))
    try:
        assert control(engine, name) != 0
    finally:
        exec_in(engine, "minio", "sh", "-c", mc.format("private"))
    assert control(engine, name) == 0


def _broken(engine, name: str, relative: str, old: str, new: str, apply) -> None:
    """The control passes, fails once ``old`` becomes ``new`` in the rendered file (applied by
    ``apply``), and passes again once the file is restored."""
    path = engine.paths.render / relative
    original = path.read_text()
    assert old in original, f"{relative} has no {old!r}"
    assert control(engine, name) == 0
    path.write_text(original.replace(old, new))
    apply()
    try:
        assert control(engine, name) != 0
    finally:
        path.write_text(original)
        apply()
    assert control(engine, name) == 0


def _reload_nginx(engine):
    exec_in(engine, "nginx", "nginx", "-c", "/etc/ccoas/nginx/nginx.conf", "-s", "reload")
    time.sleep(2)


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("test_edge_tls_is_mozilla_intermediate", "    ssl_ecdh_curve X25519:prime256v1:secp384r1;\n", ""),
        ("test_edge_serves_only_its_domain", "        return 421;\n", "        location / { proxy_pass http://directus; }\n"),
        ("test_edge_hsts_outside_dev", "max-age=63072000", "max-age=300"),
    ],
)
def test_edge_controls_fail_when_broken(engine, name, old, new):
    _broken(engine, name, "nginx/nginx.conf", old, new, lambda: _reload_nginx(engine))


def test_redis_control_fails_when_the_default_user_is_on(engine):
    container = engine.client.containers.get(engine.plan.service("redis").container_name)

    def restart():
        container.restart()
        time.sleep(3)

    _broken(engine, "test_redis_default_user_is_off", "redis/entrypoint.sh", "'user default off resetpass -@all'", "'user default on nopass -@all +ping'", restart)


def test_reachability_control_fails_when_nginx_joins_the_db_network(engine):
    name = "test_reachability_matrix_is_the_declared_one"
    assert control(engine, name) == 0
    db = engine.plan.network("db").engine_name
    nginx = engine.plan.service("nginx").container_name
    network(engine, "connect", db, nginx)
    try:
        assert control(engine, name) != 0
    finally:
        network(engine, "disconnect", db, nginx)
    assert control(engine, name) == 0
