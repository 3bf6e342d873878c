"""The monitoring component without a host: its place in the stack file and the plan, what it
renders (targets, alerts, Alertmanager's routes), and the parsers of Prometheus's answers, fed
with output recorded from the real Prometheus 2.42 of a running stack (tests/fixtures/prometheus/)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import os

import pytest
import yaml

from ccoas.errors import StackError
from ccoas import host_files
from ccoas.metrics import Figure, MonitoringError, parse_alerts, parse_query, stack_figures, textfile, write_textfile
from ccoas.planner import build_plan, parse_stack
from ccoas.render import rendered_files

FIXTURES = Path(__file__).parent / "fixtures" / "prometheus"
ROOT = Path(__file__).resolve().parent.parent


def stack(environment: str = "dev", **monitoring) -> dict:
    document = yaml.safe_load((ROOT / "stacks" / "dev.yaml").read_text())
    document["environment"] = environment
    if monitoring:
        document["components"]["monitoring"] = monitoring
    return document


def plan_of(document: dict):
    return build_plan(parse_stack(document, "stack.yaml"))


@pytest.mark.parametrize(("environment", "on"), [("dev", True), ("prod", True), ("ci", False)])
def test_on_in_dev_and_prod_off_in_ci_unless_the_stack_says(environment, on):
    document = stack(environment)
    if environment == "prod":
        document["tls"] = {"mode": "supplied", "cert": "/c.pem", "key": "/k.pem"}
    assert plan_of(document).has("monitoring") is on
    flipped = {**document, "components": {**document["components"], "monitoring": {"enabled": not on}}}
    assert plan_of(flipped).has("monitoring") is (not on)


@pytest.mark.parametrize(
    ("monitoring", "path", "expected"),
    [
        ({"retention": {"size": "1Mi"}}, "components.monitoring.retention.size", "at least 64Mi"),
        ({"retention": {"time": "15 days"}}, "components.monitoring.retention.time", "expected a value matching"),
        ({"scrape_interval": "0s"}, "components.monitoring.scrape_interval", "expected a value matching"),
        ({"webhook": "Ops Channel"}, "components.monitoring.webhook", "expected a value matching"),
        ({"colour": 1}, "components.monitoring.colour", "unknown key"),
    ],
)
def test_bad_monitoring_settings_name_the_field(monitoring, path, expected):
    with pytest.raises(StackError) as caught:
        parse_stack(stack(**monitoring), "stack.yaml")
    problems = [(p.path, p.message) for p in caught.value.problems]
    assert any(p == path and expected in m for p, m in problems), problems


def test_placement_loopback_only_and_least_privilege_credentials():
    plan = plan_of(stack())
    service = plan.service("monitoring")
    assert set(service.networks) == {"edge", "auth", "db"} and service.expose == () and service.ports == ()
    entrypoint = rendered_files(plan)["monitoring/entrypoint.sh"]
    listens = re.findall(r"listen-address=(\S+)", entrypoint)
    assert listens and all(address.startswith("127.0.0.1:") for address in listens), listens
    assert {s.name for s in plan.secrets if "monitoring" in s.readers} == {
        "postgres_monitoring_password", "redis_monitoring_password"
    }
    sql = rendered_files(plan)["postgres/bootstrap.sql"]
    assert 'GRANT pg_monitor TO "monitoring"' in sql
    assert 'GRANT USAGE ON SCHEMA "app" TO' in sql and '"monitoring"' not in sql.split('GRANT USAGE ON SCHEMA "app" TO')[1].split(";")[0]
    acl = rendered_files(plan)["redis/entrypoint.sh"]
    line = next(l for l in acl.splitlines() if "printf" in l and "monitoring" in l)
    assert "-@all" in line and "~*" not in line


def test_retention_cap_reaches_prometheus():
    plan = plan_of(stack(retention={"time": "7d", "size": "2Gi"}))
    env = plan.service("monitoring").environment
    assert (env["RETENTION_TIME"], env["RETENTION_SIZE"]) == ("7d", "2048MB")
    assert '--storage.tsdb.retention.size="$RETENTION_SIZE"' in rendered_files(plan)["monitoring/entrypoint.sh"]


def test_every_enabled_service_is_watched_and_every_alert_is_there():
    plan = plan_of(stack())
    files = rendered_files(plan)
    config = yaml.safe_load(files["monitoring/prometheus.yml"])
    services = {c["static_configs"][0]["labels"]["service"] for c in config["scrape_configs"]}
    watched_elsewhere = {"embedder", "ollama", "postgraphile"} - {s.name for s in plan.services}
    assert services >= {s.name for s in plan.services} - {"embedder", "postgraphile", "ollama"} - watched_elsewhere
    rules = yaml.safe_load(files["monitoring/rules.yml"])["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert names >= {
        "ServiceDown", "ServiceUnhealthy", "EdgeErrorRate", "PostgresConnectionsNearLimit", "DiskNearlyFull",
        "CertificateExpiringSoon", "BackupOverdue", "VaultSealed", "EmbeddingBacklogGrowing", "ChangeLogPruningBehind",
    }
    assert all(r["for"] == "2m" for r in rules)
    assert next(r for r in rules if r["alert"] == "CertificateExpiringSoon")["expr"].endswith("< 14 * 86400")
    assert "> 86400" in next(r for r in rules if r["alert"] == "BackupOverdue")["expr"]


def test_alerts_go_to_the_log_and_to_the_named_webhook_whose_url_is_never_rendered():
    without = yaml.safe_load(rendered_files(plan_of(stack()))["monitoring/alertmanager.yml"])
    assert [c["url"] for c in without["receivers"][0]["webhook_configs"]] == ["http://127.0.0.1:9095/alerts"]
    plan = plan_of(stack(webhook="ops"))
    secret = next(s for s in plan.secrets if s.name == "monitoring_webhook_url")
    assert secret.generator == "supplied" and secret.readers == ("monitoring",)
    files = rendered_files(plan)
    with_hook = yaml.safe_load(files["monitoring/alertmanager.yml"])
    assert [c["url"] for c in with_hook["receivers"][0]["webhook_configs"]] == ["http://127.0.0.1:9095/alerts", "__WEBHOOK_URL__"]
    assert "/run/secrets/monitoring_webhook_url" in files["monitoring/entrypoint.sh"]


def test_directus_metrics_are_refused_at_the_edge():
    conf = rendered_files(plan_of(stack()))["nginx/nginx.conf"]
    block = conf.split("location ~* ^/(directus/)?metrics(/|$) {", 1)[1].split("}", 1)[0]
    assert "return 404;" in block
    assert conf.index("location ~* ^/(directus/)?metrics") < conf.index("location / {\n            proxy_pass http://directus;")


def test_off_in_the_stack_means_no_trace_of_it():
    plan = plan_of(stack("ci"))
    files = rendered_files(plan)
    assert not any(path.startswith("monitoring/") for path in files)
    assert "telemetry" not in files["vault/config.hcl"] and "pg_monitor" not in files["postgres/bootstrap.sql"]


# --- parsers, from recorded output -------------------------------------------------------------


def recorded(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_parse_query_reads_a_recorded_vector():
    samples = parse_query(recorded("query-up.json"))
    assert samples and all(s.value in (0.0, 1.0) for s in samples)
    assert all("job" in s.labels and "service" in s.labels for s in samples)


def test_parse_query_reports_prometheus_errors_and_range_vectors():
    with pytest.raises(MonitoringError, match="bad_data"):
        parse_query(recorded("query-error.json"))
    with pytest.raises(MonitoringError, match="range vector"):
        parse_query({"status": "success", "data": {"resultType": "matrix", "result": []}})


def test_parse_alerts_keeps_firing_ones_only():
    alerts = parse_alerts(recorded("alerts.json"))
    assert alerts and all(a.name for a in alerts)
    body = recorded("alerts.json")
    firing = sum(1 for a in body["data"]["alerts"] if a["state"] == "firing")
    assert len(alerts) == firing


# --- ccoas's own figures --------------------------------------------------------------------


class Row:
    def __init__(self, service, state, health):
        self.service, self.state, self.health = service, state, health


def test_figures_textfile_is_deterministic_prometheus_text(tmp_path):
    figures = stack_figures([Row("minio", "running", "healthy"), Row("redis", "exited", "-")], {"minio": 2}, None, 1700000000.0)
    text = textfile(figures)
    assert text == textfile(list(reversed(figures)))
    assert 'ccoas_container_healthy{service="redis"} 0' in text and 'ccoas_container_restarts{service="minio"} 2' in text
    assert 'ccoas_backup_newest_timestamp_seconds{service="backup"} 0' in text
    assert text.count("# TYPE ccoas_container_healthy gauge") == 1
    path = write_textfile(tmp_path, [Figure("x", "y", 1.0, {"a": 'q"\n'})])
    assert path.read_text() == '# HELP x y\n# TYPE x gauge\nx{a="q\\"\\n"} 1\n'
    assert [p.name for p in tmp_path.iterdir()] == ["ccoas.prom"]


def test_the_figures_file_is_never_written_through_a_planted_link(tmp_path):
    """The runtime dir is the engine user's: a link it plants in the path is refused, and
    nothing is written where the link points."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "run").mkdir()
    os.chown(tmp_path / "run", 65534, 65534)  # another user's dir: a link in it is not root's to follow
    (tmp_path / "run" / "monitoring-textfile").symlink_to(target)
    with pytest.raises(host_files.UnsafePathError):
        write_textfile(tmp_path / "run" / "monitoring-textfile", [Figure("x", "y", 1.0)])
    assert list(target.iterdir()) == []


def test_a_go_package_is_looked_up_in_the_modules_that_may_hold_it_longest_first():
    """postgres_exporter's program is a package of its module: the build downloads the module
    at the exact pinned version, trying each module path go install would try."""
    from ccoas.images import go_module_candidates

    spec = "github.com/prometheus-community/postgres_exporter/cmd/postgres_exporter@v0.17.1"
    assert go_module_candidates(spec) == [
        "github.com/prometheus-community/postgres_exporter/cmd/postgres_exporter@v0.17.1",
        "github.com/prometheus-community/postgres_exporter/cmd@v0.17.1",
        "github.com/prometheus-community/postgres_exporter@v0.17.1",
        "github.com/prometheus-community@v0.17.1",
    ]
