"""The monitoring component, running: every target up, an alert that fires and resolves, the
webhook that receives it, and no metrics endpoint reachable from the edge or from a client.

One stack for the module (Vault, Postgres, Redis, MinIO, Nginx, monitoring) with 2-second
scrape and evaluation intervals and alerts that hold 4 s, so the whole module stays short.
The webhook is a real HTTP receiver in a container on the stack's edge network; its URL is
set the way an operator does it (``ccoas secrets set``, then ``up``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid

import pytest
import yaml

from ccoas.cli import app
from ccoas.engine.local import LocalEngine
from ccoas.metrics import firing_alerts, instant_query
from ccoas.planner import build_plan, load_stack
from ccoas.render import rendered_files
from ccoas.tls import generate_self_signed
from conftest import component_stack  # tests/e2e is on sys.path (rootdir imports)

pytestmark = pytest.mark.e2e

NAME = f"monitoring-{uuid.uuid4().hex[:6]}"
ENABLED = ("vault", "postgres", "redis", "minio", "nginx", "monitoring")
EXPORTER_PORTS = (9090, 9093, 9095, 9100, 9115, 9121, 9187)
"""Prometheus, Alertmanager, the alert log, node, blackbox, redis and postgres exporters."""
HOOK_PORT = 8000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, condition, timeout: float = 60, every: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    https = free_port()
    # a supplied certificate that expires in 10 days: CertificateExpiringSoon must fire
    directory = tmp_path_factory.mktemp("monitoring")
    cert, key = generate_self_signed("localhost", days=10)
    (directory / "cert.pem").write_text(cert)
    (directory / "key.pem").write_text(key)
    stack = component_stack(NAME, ENABLED)
    stack["tls"] = {"mode": "supplied", "cert": str(directory / "cert.pem"), "key": str(directory / "key.pem")}
    stack["components"]["nginx"] = {"publish": [{"container_port": 8443, "host_port": https}]}
    stack["components"]["monitoring"] = {
        "enabled": True,
        "scrape_interval": "2s",
        "evaluation_interval": "2s",
        "alert_for": "4s",
        "webhook": "ops",
        "backup_interval": "1h",
        "retention": {"time": "1d", "size": "128Mi"},
    }
    path = directory / "monitoring.yaml"
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    return path, https


@pytest.fixture(scope="module")
def engine(stack_file):
    path, https = stack_file
    engine = LocalEngine.connect(build_plan(load_stack(path), name=NAME))
    engine.https_port = https  # type: ignore[attr-defined]
    engine.stack_path = path  # type: ignore[attr-defined]
    hook = None
    try:
        result = engine.up()
        assert {r.service: r.health for r in result.status} == {s: "healthy" for s in ENABLED}
        # the webhook: a real receiver on the stack's edge network, its URL set as an operator does
        script = rendered_files(engine.plan)["monitoring/alert-log.py"]
        image = engine.plan.service("monitoring").image.ref
        hook = engine.client.containers.create(  # create, never run: run pulls a missing image
            image, ["python3", "-c", script, "0.0.0.0", str(HOOK_PORT)], name=f"{NAME}-hook",
            network=f"{NAME}-edge", user="65532:65532",
        )
        hook.start()
        engine.secrets().set("monitoring/webhook_url", f"http://{NAME}-hook:{HOOK_PORT}/alerts")
        engine.up()
        engine.hook = hook  # type: ignore[attr-defined]
        yield engine
    finally:
        if hook is not None:
            hook.remove(force=True)
        engine.down(purge=True)


def targets_up(engine) -> dict[str, float]:
    samples = instant_query(engine.runtime, engine.plan, '(up{job!~"probe-.*"}) or (probe_success)')
    return {f"{s.labels.get('job')}/{s.labels.get('service')}": s.value for s in samples}


def test_every_target_is_up_after_up(engine):
    wanted = {
        "prometheus/monitoring", "alertmanager/monitoring", "node/monitoring", "postgres/postgres",
        "redis/redis", "vault/vault", "probe-minio/minio", "probe-nginx/nginx",
    }
    seen = wait_for("every target up", lambda: (lambda t: t if set(t) >= wanted and all(v == 1 for v in t.values()) else None)(targets_up(engine)), 60)
    assert set(seen) == wanted
    # what the exporters read, not only that they answer: Postgres's limit, Redis's clients,
    # Vault unsealed, the served certificate's expiry, ccoas's own figures from the last up
    for promql in (
        "pg_settings_max_connections", "redis_connected_clients", "vault_core_unsealed",
        "probe_ssl_earliest_cert_expiry", 'ccoas_container_healthy{service="minio"}',
        'ccoas_change_log_entries',
    ):
        samples = wait_for(promql, lambda: instant_query(engine.runtime, engine.plan, promql), 30)
        assert samples and all(s.value >= 0 for s in samples), promql
    assert instant_query(engine.runtime, engine.plan, "max(vault_core_unsealed)")[0].value == 1
    assert not [a for a in firing_alerts(engine.runtime, engine.plan) if a.name in ("VaultSealed", "ServiceDown", "ServiceUnhealthy")]
    expiry = instant_query(engine.runtime, engine.plan, "probe_ssl_earliest_cert_expiry - time()")[0].value
    assert 9 * 86400 < expiry < 10 * 86400  # the supplied certificate: 10 days


def test_no_metrics_endpoint_is_reachable_from_the_edge_or_a_client(engine):
    nginx = engine.client.containers.get(engine.plan.service("nginx").container_name)
    monitoring = engine.client.containers.get(engine.plan.service("monitoring").container_name)
    # from the edge: a probe in Nginx's own network namespace (its interfaces, routes, firewall)
    probe = "; ".join(
        f"curl -s -o /dev/null --max-time 2 http://monitoring:{port}/ && echo open-{port} || echo closed-{port}"
        for port in EXPORTER_PORTS
    )
    control = "curl -fsS -o /dev/null --max-time 2 http://minio:9000/minio/health/live && echo control-ok"
    prober = engine.client.containers.create(  # create, never run: run pulls a missing image
        nginx.image.id, ["sh", "-c", f"{control}; {probe}"], network_mode=f"container:{nginx.id}", user="101:101", entrypoint=[],
    )
    try:
        prober.start()
        prober.wait(timeout=60)
        output = prober.logs().decode()
    finally:
        prober.remove(force=True)
    assert "control-ok" in output, output  # the probe reaches what the edge should reach
    assert all(f"closed-{port}" in output for port in EXPORTER_PORTS), output
    # inside the container every one of them answers (loopback): the closed ports above are not vacuous
    inside = monitoring.exec_run(["sh", "-c", " ; ".join(f"curl -s -o /dev/null -w '%{{http_code}} ' http://127.0.0.1:{p}/" for p in EXPORTER_PORTS)], user="65532:65532")
    assert all(code != "000" for code in inside.output.decode().split()), inside.output
    # from a client: nothing of monitoring is published; through the edge, no metrics path
    monitoring.reload()
    assert not any(monitoring.attrs["NetworkSettings"]["Ports"].get(k) for k in monitoring.attrs["NetworkSettings"]["Ports"] or {})
    for path in ("/metrics", "/directus/metrics", "/api/v1/query?query=up", "/-/healthy", "/minio/v2/metrics/cluster"):
        result = subprocess.run(
            ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--resolve",
             f"{engine.plan.domain}:{engine.https_port}:127.0.0.1", f"https://{engine.plan.domain}:{engine.https_port}{path}"],
            capture_output=True, text=True, timeout=20,
        )
        assert result.stdout == "404", (path, result.stdout, result.stderr)


def test_stopping_minio_fires_an_alert_that_names_it_and_resolves_after_up(engine, runner):
    minio = engine.client.containers.get(engine.plan.service("minio").container_name)
    minio.stop(timeout=10)

    def minio_down():
        return [a for a in firing_alerts(engine.runtime, engine.plan) if a.name == "ServiceDown" and a.service == "minio"]

    fired = wait_for("ServiceDown for minio", minio_down, 60)
    assert "minio" in fired[0].summary
    result = runner.invoke(app, ["alerts", str(engine.stack_path), "--name", NAME, "--json"])
    assert result.exit_code == 3, result.output
    assert any(a["alert"] == "ServiceDown" and a["service"] == "minio" for a in json.loads(result.stdout))
    status = runner.invoke(app, ["status", str(engine.stack_path), "--name", NAME])
    assert status.exit_code == 3 and "ServiceDown" in status.stdout  # its own exit code: minio is not running

    # the webhook received it, over the stack's edge network
    def hook_lines(state: str):
        lines = [json.loads(l.removeprefix("alert ")) for l in engine.hook.logs().decode().splitlines() if l.startswith("alert ")]
        return [l for l in lines if l["alert"] == "ServiceDown" and l["service"] == "minio" and l["status"] == state]

    assert wait_for("the webhook receives the firing alert", lambda: hook_lines("firing"), 40)

    engine.up()
    wait_for("ServiceDown for minio resolves", lambda: not minio_down(), 60)
    assert wait_for("the webhook receives the resolution", lambda: hook_lines("resolved"), 60)


def test_a_certificate_expiring_within_14_days_fires(engine):
    alerts = wait_for(
        "CertificateExpiringSoon",
        lambda: [a for a in firing_alerts(engine.runtime, engine.plan) if a.name == "CertificateExpiringSoon"],
        40,
    )
    assert alerts[0].service == "nginx" and "expires in 9" in alerts[0].summary, alerts[0]


def test_no_backup_within_the_interval_fires(engine, runner):
    """A fresh stack has no backup: BackupOverdue fires (ccoas's figure says 0). Every service is
    healthy, so `status` lists the alert and keeps its own exit code 0."""
    alerts = wait_for(
        "BackupOverdue", lambda: [a for a in firing_alerts(engine.runtime, engine.plan) if a.name == "BackupOverdue"], 40
    )
    assert "within 1h" in alerts[0].summary
    status = runner.invoke(app, ["status", str(engine.stack_path), "--name", NAME])
    assert status.exit_code == 0 and "BackupOverdue" in status.stdout, status.output
