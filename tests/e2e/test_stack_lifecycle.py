"""The real thing: the ci stack up in rootless Podman, proven from the outside.

One stack (a unique name per run) goes through up → second up → checks → rotate →
down → up → down --purge. Marked e2e: it builds images (cached by content) and runs
containers; the fast tier never touches a host.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from ccoas.compliance import run_checks
from ccoas.engine.local import LocalEngine
from ccoas.planner import build_plan, load_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "stacks" / "ci.yaml"
NAME = f"e2e-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def plan():
    return build_plan(load_stack(STACK), name=NAME)


@pytest.fixture(scope="module")
def engine(plan):
    engine = LocalEngine.connect(plan)
    try:
        first = engine.up()
        engine.first_up = first  # type: ignore[attr-defined]
        yield engine
    finally:
        engine.down(purge=True)


def ccoas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ccoas.cli", *args], capture_output=True, text=True, timeout=900, cwd=REPO)


def psql(engine, sql: str, user: str = "postgres") -> str:
    container = engine.client.containers.get(engine.plan.service("postgres").container_name)
    result = container.exec_run(["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", "app", "-c", sql], user="999:999")
    assert result.exit_code == 0, result.output.decode()
    return result.output.decode().strip()


def nginx_url(engine) -> str:
    rows = {r.service: r for r in engine.status()}
    https = [e for e in rows["nginx"].endpoints if e.startswith("https://")]
    assert https, rows["nginx"]
    return https[0]


def edge(engine, path: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> urllib.request.Request:
    """A request to nginx's published HTTPS port for the stack's domain (other Host names get 421)."""
    return urllib.request.Request(f"{nginx_url(engine)}{path}", data=data, headers={"Host": engine.plan.domain, **(headers or {})})


def send(engine, request: urllib.request.Request, timeout: float) -> Any:
    """The JSON answer; an HTTP error fails with its status and body (Directus says why it refused)."""
    try:
        with urllib.request.urlopen(request, context=tls_context(engine), timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        pytest.fail(f"{request.get_method()} {request.full_url}: {error.code} {error.read().decode(errors='replace')[:500]}")


def tls_context(engine) -> ssl.SSLContext:
    cert = engine.paths.secret_file("nginx", "nginx_tls_cert")
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # the endpoint is an IP; the chain is still verified
    return context


def test_first_up_brings_every_service_to_healthy(engine):
    result = engine.first_up
    assert {r.service: r.health for r in result.status} == {s.name: "healthy" for s in engine.plan.services}
    assert {"vault", "postgres", "redis", "minio", "directus", "nginx"} <= {s.name for s in engine.plan.services}
    assert result.changes > 0


def test_second_up_changes_nothing(engine):
    assert engine.up().changes == 0


def test_rendered_nginx_config_passes_nginx_t(engine):
    """`nginx -t` on the rendered config, inside the running nginx (upstream names resolve there)."""
    nginx = engine.client.containers.get(engine.plan.service("nginx").container_name)
    result = nginx.exec_run(["nginx", "-t", "-c", "/etc/ccoas/nginx/nginx.conf"], user=engine.plan.service("nginx").user)
    output = result.output.decode()
    assert result.exit_code == 0 and "syntax is ok" in output, output

def test_directus_answers_through_nginx_on_loopback(engine):
    url = nginx_url(engine)
    assert url.startswith("https://127.0.0.1:")
    with urllib.request.urlopen(edge(engine, "/directus/server/ping"), context=tls_context(engine), timeout=10) as response:
        assert response.status == 200
        assert response.read().decode().strip() == "pong"
        assert response.headers["Strict-Transport-Security"]
        assert "nginx/" not in (response.headers.get("Server") or "")


def test_directus_stores_uploads_in_minio_with_its_own_least_privilege_user(engine):
    password = engine.paths.secret_file("directus", "directus_admin_password").read_text()
    login = edge(
        engine,
        "/directus/auth/login",
        data=json.dumps({"email": "admin@example.com", "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    token = send(engine, login, 30)["data"]["access_token"]
    boundary = "ccoas-e2e"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"e2e.txt\"\r\n"
        f"Content-Type: text/plain\r\n\r\nstored in minio\r\n--{boundary}--\r\n"
    ).encode()
    # once, in a whole run on a 2-core host, Directus took over 30 s to answer this first
    # upload (cause not found; it passes in seconds alone): allow 120 s, a hang still fails.
    # A fresh Directus's first S3 requests can be refused for a few seconds (README, Known gaps:
    # 503 "Couldn't save file"): that answer alone is tried again, three times 5 s apart.
    for attempt in range(3):
        upload = edge(
            engine,
            "/directus/files",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        try:
            with urllib.request.urlopen(upload, context=tls_context(engine), timeout=120) as response:
                stored = json.load(response)["data"]
            break
        except urllib.error.HTTPError as error:
            answer = error.read().decode(errors="replace")[:500]
            if error.code != 503 or "Couldn't save file" not in answer or attempt == 2:
                pytest.fail(f"POST /directus/files (try {attempt + 1}): {error.code} {answer}")
            print(f"upload try {attempt + 1} refused (the known first-S3-request symptom): {answer}")
            time.sleep(5)
    assert stored["storage"] == "s3"
    minio = engine.client.containers.get(engine.plan.service("minio").container_name)

    def mc(user: str, password: str, *args: str) -> tuple[int, str]:
        script = f'MC_HOST_local="http://$(cat {user}):$(cat {password})@127.0.0.1:9000" mc --quiet "$@"'
        result = minio.exec_run(["sh", "-c", script, "mc", *args], user="1000:1000")
        return result.exit_code, result.output.decode()

    code, listing = mc("/run/secrets/minio_root_user", "/run/secrets/minio_root_password", "ls", "local/uploads")
    assert code == 0 and stored["filename_disk"] in listing
    # Directus's own MinIO user reaches its bucket and nothing else
    directus_user = ("/run/secrets/minio_directus_access_key", "/run/secrets/minio_directus_secret_key")
    assert mc(*directus_user, "ls", "local/uploads")[0] == 0
    assert mc(*directus_user, "mb", "local/not-allowed")[0] != 0
    assert mc(*directus_user, "admin", "user", "list", "local")[0] != 0


def test_compliance_controls_hold(engine, tmp_path):
    junit = tmp_path / "controls.xml"
    code = run_checks(STACK, NAME, junit=junit)
    failed = [
        f"{case.get('name')}: {(case.find('failure').get('message') or '')[:300]}"
        for case in ElementTree.parse(junit).getroot().iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ] if junit.exists() else ["no junit report"]
    assert code == 0, failed


def test_pgvector_extension_and_knn(engine):
    assert psql(engine, "SELECT extname FROM pg_extension WHERE extname = 'vector'") == "vector"
    nearest = psql(
        engine,
        "CREATE TEMP TABLE v (e vector(3)); INSERT INTO v VALUES ('[1,0,0]'), ('[0,1,0]');"
        "CREATE INDEX ON v USING hnsw (e vector_l2_ops); SELECT e FROM v ORDER BY e <-> '[0.9,0.1,0]' LIMIT 1",
    )
    assert nearest == "[1,0,0]"


def test_rls_is_forced_on_every_declared_table(engine):
    schema = engine.plan.app_schema.name
    for table in engine.plan.app_schema.tables:
        row = psql(engine, f"SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = '{schema}.{table.name}'::regclass")
        assert row == "t|t", table.name
        assert int(psql(engine, f"SELECT count(*) FROM pg_policies WHERE schemaname = '{schema}' AND tablename = '{table.name}'")) > 0


def test_vault_policies_allow_own_paths_only_and_audit_records(engine):
    from ccoas.secrets import vault_client

    store = engine.secrets()
    directus = store.service_client("directus")
    kv = directus.secrets.kv.v2
    mount, prefix = engine.plan.vault.kv_mount, engine.plan.vault.prefix
    assert kv.read_secret_version(f"{prefix}/postgres/directus_password", mount_point=mount, raise_on_deleted_version=True)["data"]["data"]["value"]
    import hvac.exceptions

    with pytest.raises(hvac.exceptions.Forbidden):
        kv.read_secret_version(f"{prefix}/postgres/superuser_password", mount_point=mount, raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):  # ccoas's own token never reads a value
        store.client.secrets.kv.v2.read_secret_version(f"{prefix}/directus/secret", mount_point=mount, raise_on_deleted_version=True)
    vault = engine.client.containers.get(engine.plan.service("vault").container_name)
    audit = vault.exec_run(["cat", engine.plan.vault.audit_path], user="100:1000").output.decode()
    assert f"{prefix}/postgres/directus_password" in audit
    # server mode, unseal material private, root token revoked after bootstrap
    status = json.loads(vault.exec_run(["vault", "status", "-format=json"], user="100:1000").output.decode())
    assert status["storage_type"] == "raft" and status["initialized"] and not status["sealed"]
    material = engine.paths.vault_init
    assert material.stat().st_mode & 0o777 == 0o600 and engine.paths.ccoas_token.stat().st_mode & 0o777 == 0o600
    assert "root_token" not in json.loads(material.read_text())
    assert vault_client(engine.paths.runtime_mount("vault-socket") / "vault.sock").sys.is_initialized()


def test_no_secret_value_anywhere(engine):
    values = {}
    for service in engine.plan.services:
        for mount in service.secrets:
            values[mount.secret] = engine.paths.secret_file(service.name, mount.secret).read_text()
    assert values and all(values.values())
    haystacks = {}
    for path in sorted(engine.paths.render.rglob("*")):
        if path.is_file():
            haystacks[str(path)] = path.read_text(errors="replace")
    for service in engine.plan.services:
        container = engine.client.containers.get(service.container_name)
        haystacks[f"inspect {service.name}"] = json.dumps(container.attrs)
        haystacks[f"logs {service.name}"] = container.logs().decode(errors="replace")
    for args in (("status", str(STACK), "--name", NAME), ("secrets", "list", str(STACK), "--name", NAME), ("plan", str(STACK), "--name", NAME, "--json")):
        result = ccoas(*args)
        assert result.returncode == 0, result.stderr
        haystacks["ccoas " + " ".join(args[:2])] = result.stdout + result.stderr
    leaks = [(name, where) for name, value in values.items() for where, text in haystacks.items() if value.strip() in text]
    assert not leaks


def test_rotating_postgres_credentials_refuses_the_old_one(engine):
    old = engine.paths.secret_file("directus", "postgres_directus_password").read_text()
    lines = engine.rotate("postgres")
    assert any("postgres_directus_password" in line for line in lines)
    new = engine.paths.secret_file("directus", "postgres_directus_password").read_text()
    assert new != old
    postgres = engine.client.containers.get(engine.plan.service("postgres").container_name)

    def login(password: str) -> int:
        env = {"PGPASSWORD": password}
        return postgres.exec_run(["psql", "-X", "-h", "127.0.0.1", "-U", "directus", "-d", "app", "-c", "SELECT 1"], environment=env, user="999:999").exit_code

    assert login(old) != 0
    assert login(new) == 0
    assert {r.service: r.health for r in engine.status()}["directus"] == "healthy"
    # directus got a new container; nginx was restarted so it reaches the new one, and `up`
    # returned only once nginx's published port accepted connections on the host
    with urllib.request.urlopen(edge(engine, "/directus/server/ping"), context=tls_context(engine), timeout=10) as response:
        assert response.read().decode().strip() == "pong"


def test_a_second_stack_runs_side_by_side(engine, tmp_path):
    """Another stack on the same host: its own prefixed resources, no collision, ours untouched."""
    other = tmp_path / "side.yaml"
    other.write_text(
        "version: 1\nname: side\nenvironment: ci\nimages: {source: local}\ntls: {mode: generate}\n"
        "components:\n" + "".join(f"  {c}: {{enabled: false}}\n" for c in ("nginx", "directus", "hasura", "postgres", "redis", "minio", "ollama"))
    )
    side = LocalEngine.connect(build_plan(load_stack(other), name=f"{NAME}-side"))
    try:
        result = side.up()
        assert [(r.service, r.container, r.health) for r in result.status] == [("vault", f"{NAME}-side-vault", "healthy")]
        ours = {r.service: r.health for r in engine.status()}
        assert set(ours.values()) == {"healthy"}
    finally:
        side.down(purge=True)
    assert {r.service: r.health for r in engine.status()}["vault"] == "healthy"


def test_down_then_up_keeps_postgres_data(engine):
    psql(engine, "CREATE TABLE IF NOT EXISTS public.e2e_keep (v text); INSERT INTO public.e2e_keep VALUES ('kept')")
    engine.down()
    assert engine.client.containers.list(all=True, filters={"label": f"io.ccoas.stack={NAME}"}) == []
    engine.up()
    assert psql(engine, "SELECT v FROM public.e2e_keep") == "kept"


def test_purge_leaves_nothing_behind(engine, plan):
    engine.down(purge=True)
    selector = {"label": f"io.ccoas.stack={NAME}"}
    assert engine.client.containers.list(all=True, filters=selector) == []
    assert engine.runtime.networks(selector["label"]) == []
    assert engine.client.volumes.list(filters=selector) == []
    assert not engine.paths.state.exists() and not engine.paths.runtime.exists()

