"""The render: golden files, determinism, and what the rendered files must agree on with the plan.

Golden files live in ``tests/golden/<stack>/`` (dev, ci rendered as ``pr-42``, prod) and are
compared byte for byte. After an intended change, regenerate them and review the diff:

    CCOAS_UPDATE_GOLDEN=1 python -m pytest tests/test_render.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from ccoas.compose import compose_document, compose_services
from ccoas.plan import Plan
from ccoas.planner import build_plan, load_stack, parse_stack
from ccoas.render import RenderError, ccoas_policy_hcl, render, render_text, rendered_files, vault_policy_hcl

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
STACKS = {"dev": ("stacks/dev.yaml", None), "ci": ("stacks/ci.yaml", "pr-42"), "prod": ("stacks/prod.yaml", None)}
UPSTREAMS = ("directus", "hasura", "postgraphile", "minio")


def routed_upstreams(plan: Plan) -> set[str]:
    """The upstreams nginx proxies to: MinIO only when a bucket is public."""
    public = plan.has("minio") and any(b.public for b in plan.buckets)
    return {name for name in UPSTREAMS if plan.has(name) and (name != "minio" or public)}
SECRETS_DIR = "/run/secrets/"


def stack_plan(key: str) -> Plan:
    path, name = STACKS[key]
    return build_plan(load_stack(REPO / path), name=name)


def variant(base: str, **components) -> Plan:
    """A stack file's plan with some components switched: ``variant("prod", hasura=False)``."""
    data = yaml.safe_load((REPO / STACKS[base][0]).read_text())
    for name, enabled in components.items():
        data["components"].setdefault(name, {})
        data["components"][name] = {**(data["components"][name] or {}), "enabled": enabled}
    return build_plan(parse_stack(data, f"{base}+{components}"))


def every_preset() -> Plan:
    """prod (hasura and directus) with a public-read table too: all three RLS presets."""
    data = yaml.safe_load((REPO / "stacks" / "prod.yaml").read_text())
    dev = yaml.safe_load((REPO / "stacks" / "dev.yaml").read_text())
    data["schema"]["tables"] += [t for t in dev["schema"]["tables"] if t["policy"] == "public-read"]
    return build_plan(parse_stack(data, "prod+public-read"))


PLANS = {key: stack_plan(key) for key in STACKS}
ALL_PLANS = {
    **PLANS,
    "every-preset": every_preset(),
    "no-upstreams": variant("dev", directus=False, minio=False, postgraphile=False),
    "no-directus": variant("prod", directus=False, hasura=False),
    "no-redis": variant("prod", redis=False),
}


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and directory under root: relative path → (bytes, mode)."""
    found = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        found[path.relative_to(root).as_posix()] = (path.read_bytes() if path.is_file() else b"", mode)
    return found


# --- golden files and determinism ------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(STACKS))
def test_render_matches_the_golden_files(key, tmp_path):
    written = render(PLANS[key], tmp_path / "out")
    actual = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in written}
    golden = GOLDEN / key
    other_targets = ("kubernetes/",)  # tests/test_kubernetes.py owns tests/golden/<stack>/kubernetes/
    if os.environ.get("CCOAS_UPDATE_GOLDEN") == "1":
        for path in sorted(golden.rglob("*"), reverse=True):
            if path.is_file() and not path.relative_to(golden).as_posix().startswith(other_targets):
                path.unlink()
        for relative, data in actual.items():
            (golden / relative).parent.mkdir(parents=True, exist_ok=True)
            (golden / relative).write_bytes(data)
    expected = {
        p.relative_to(golden).as_posix(): p.read_bytes()
        for p in sorted(golden.rglob("*"))
        if p.is_file() and not p.relative_to(golden).as_posix().startswith(other_targets)
    }
    assert sorted(actual) == sorted(expected), "files differ: regenerate with CCOAS_UPDATE_GOLDEN=1 and review the diff"
    for relative in sorted(expected):
        assert actual[relative] == expected[relative], f"{key}/{relative} differs from tests/golden (CCOAS_UPDATE_GOLDEN=1 to regenerate)"


@pytest.mark.parametrize("key", sorted(ALL_PLANS))
def test_render_is_deterministic_in_bytes_and_modes(key, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    written = render(ALL_PLANS[key], first)
    render(ALL_PLANS[key], second)
    assert tree(first) == tree(second)
    assert written == sorted(written)
    for relative, (_, mode) in tree(first).items():
        path = first / relative
        expected = 0o755 if path.is_dir() or relative.endswith(".sh") else 0o644
        assert mode == expected, relative


def test_render_writes_every_config_template_and_the_exports(tmp_path):
    plan = PLANS["prod"]
    written = {p.relative_to(tmp_path).as_posix() for p in render(plan, tmp_path)}
    expected = {t.removesuffix(".j2") for s in plan.services for t in s.config_templates} | {"compose.yaml", "plan.json"}
    assert written == expected
    assert (tmp_path / "plan.json").read_text() == plan.to_json()
    assert Plan.model_validate_json((tmp_path / "plan.json").read_text()) == plan
    for service in plan.services:
        if service.config is not None:
            assert (tmp_path / service.config.source).is_dir()
            assert service.config.target == f"/etc/ccoas/{service.config.source}"


def test_render_removes_nothing_and_replaces_symlinks_instead_of_following_them(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    outside = tmp_path / "outside.json"
    outside.write_text("untouched")
    (out / "plan.json").symlink_to(outside)
    render(PLANS["ci"], out)
    assert (out / "keep.txt").read_text() == "mine"
    assert outside.read_text() == "untouched"
    assert not (out / "plan.json").is_symlink()
    assert not list(out.rglob(".*"))  # no temporary files left behind


def test_template_errors_are_typed():
    with pytest.raises(RenderError):
        render_text("{{ missing }}")
    assert render_text("{{ 'a b' | sh_quote }} {{ name | sql_ident }}", name='we"ird') == "'a b' \"we\"\"ird\""


# --- no secret values, secret references where secrets are ------------------------------------

SECRET_WORDS = re.compile(r"(PASSWORD|SECRET|TOKEN|KEY)", re.IGNORECASE)
SECRET_REFERENCE = re.compile(r"/run/secrets/([A-Za-z0-9_-]+)")


@pytest.mark.parametrize("key", sorted(ALL_PLANS))
def test_no_rendered_file_holds_a_secret_value(key):
    plan = ALL_PLANS[key]
    for relative, text in rendered_files(plan).items():
        assert "-----BEGIN" not in text, relative
        for line in text.splitlines():
            match = re.match(r"^\s*(?:export\s+)?([A-Z][A-Z0-9_]*)=(.*)$", line)
            if match and SECRET_WORDS.search(match.group(1)) and not match.group(1).endswith(("_FILE", "_COOKIE_SECURE", "_TTL")):
                value = match.group(2)
                assert "$(" in value or value.startswith(("$", '"postgres://hasura:${')), f"{relative}: {line}"


@pytest.mark.parametrize("key", sorted(ALL_PLANS))
def test_every_secret_reference_points_at_a_secret_the_service_mounts(key):
    plan = ALL_PLANS[key]
    for service in plan.services:
        mounted = {m.target for m in service.secrets}
        assert all(target.startswith(SECRETS_DIR) for target in mounted)
        for variable, value in service.environment.items():
            if variable.endswith("_FILE"):
                assert value in mounted, f"{service.name}: {variable}={value}"
        for relative, text in rendered_files(plan).items():
            if relative.startswith(f"{service.name}/"):
                for name in SECRET_REFERENCE.findall(text):
                    assert f"{SECRETS_DIR}{name}" in mounted, f"{relative} reads {name}, which {service.name} does not mount"


def test_compose_secrets_are_one_file_per_reader_mounted_at_the_plan_targets():
    document = compose_document(PLANS["prod"])
    exported = compose_services(PLANS["prod"])
    expected = {f"{s.name}.{m.secret}": f"{s.name}/{m.secret}" for s in exported for m in s.secrets}
    assert {name: secret["file"] for name, secret in document["secrets"].items()} == {
        name: "${CCOAS_SECRETS_DIR:?set CCOAS_SECRETS_DIR to the directory ccoas secrets init wrote}/" + path for name, path in expected.items()
    }
    for service in exported:
        mounts = document["services"][service.name].get("secrets", [])
        assert sorted((m["source"], m["target"]) for m in mounts) == sorted((f"{service.name}.{m.secret}", m.target) for m in service.secrets)
        assert all(set(m) == {"source", "target"} for m in mounts)  # Compose ignores uid/gid/mode: the files carry them


def test_compose_mode_has_no_vault(load_plan):
    plan = load_plan("dev")
    assert plan.has("vault")
    document = compose_document(plan)
    assert "vault" not in document["services"] and "vault-data" not in document.get("volumes", {})
    # only Vault and monitoring (which scrapes Vault there) were on auth
    assert document["networks"].get("auth") is None or set(document["services"]["monitoring"]["networks"]) >= {"auth"}
    assert all("vault" not in body.get("depends_on", {}) for body in document["services"].values())
    # only Vault's socket and monitoring's textfile need a runtime dir
    runtime = [name for name, body in document["services"].items() if "CCOAS_RUNTIME_DIR" in yaml.safe_dump(body)]
    assert runtime == ["monitoring"]


# --- nginx -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(ALL_PLANS))
def test_nginx_routes_only_to_enabled_upstreams_that_share_its_network(key):
    plan = ALL_PLANS[key]
    conf = rendered_files(plan)["nginx/nginx.conf"]
    enabled = routed_upstreams(plan)
    assert set(re.findall(r"^\s*upstream (\w+) \{", conf, re.M)) == enabled
    assert set(re.findall(r"proxy_pass http://(\w+)", conf)) == enabled
    servers = dict(re.findall(r"^\s*server (\w+):(\d+);", conf, re.M))
    nginx = plan.service("nginx")
    for name in enabled:
        upstream = plan.service(name)
        assert int(servers[name]) == upstream.expose[0]
        assert set(upstream.networks) & set(nginx.networks), f"{name} shares no network with nginx"
        assert name in upstream.networks[next(iter(set(upstream.networks) & set(nginx.networks)))]  # reachable by its alias
    if "directus" in enabled:
        assert "location /directus/ {\n            proxy_pass http://directus/;" in conf  # the prefix is stripped
    else:
        assert "location / {\n            return 404;" in conf
    assert ("location /v1/graphql" in conf) == ("hasura" in enabled)
    planes = [p for p in ("hasura", "postgraphile") if p in enabled]
    assert conf.count("location = /graphql {") == len(planes) <= 1
    if planes:
        assert f"location = /graphql {{\n            proxy_pass http://{planes[0]}/" in conf
    # /storage/ is refused at the edge; only public buckets would be routed (none are)
    assert ("location /storage/ {\n            return 404;" in conf) == plan.has("minio")
    assert not re.search(r"location /storage/\w", conf)


def test_nginx_routes_a_public_bucket_read_only_and_nothing_else_of_minio(load_plan):
    plan = load_plan("dev")
    public = plan.buckets[0].model_copy(update={"name": "assets", "public": True})
    conf = rendered_files(plan.model_copy(update={"buckets": (*plan.buckets, public)}))["nginx/nginx.conf"]
    assert "location /storage/assets/ {\n            limit_except GET {\n                deny all;" in conf
    assert "proxy_pass http://minio/assets/;" in conf
    assert "location /storage/uploads/" not in conf  # private stays unrouted
    assert "location /storage/ {\n            return 404;" in conf


@pytest.mark.parametrize("key", sorted(PLANS))
def test_nginx_serves_only_the_domain_and_redirects_only_to_it(key):
    plan = PLANS[key]
    conf = rendered_files(plan)["nginx/nginx.conf"]
    defaults = re.findall(
        r"listen (\d+)( ssl http2)? default_server;\n(?:\s+listen unix:\S+ proxy_protocol(?: ssl http2)? default_server;\n)?"
        r"\s+server_name _;\n(?:\n.*\n.*\n)?\s+return (\d+);",
        conf,
    )
    assert sorted(defaults) == [("8080", "", "400"), ("8443", " ssl http2", "421")]
    assert "$host" not in "".join(re.findall(r"return 30\d ([^;]+);", conf))
    assert re.search(rf"return 308 https://{re.escape(plan.domain)}(:\d+)?\$request_uri;", conf)
    assert conf.count(f"server_name {plan.domain};") == 2


@pytest.mark.parametrize("key", sorted(PLANS))
def test_nginx_tls_and_header_hardening(key):
    plan = PLANS[key]
    conf = rendered_files(plan)["nginx/nginx.conf"]
    assert "ssl_ecdh_curve X25519:prime256v1:secp384r1;" in conf
    hsts = int(re.search(r"Strict-Transport-Security \"max-age=(\d+)", conf).group(1))
    assert hsts == (300 if plan.environment == "dev" else 63072000)
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf and "$proxy_add_x_forwarded_for" not in conf
    assert "proxy_hide_header X-Powered-By;" in conf
    if plan.has("directus"):
        assert "location ~* ^/(directus/)?server/specs(/|$) {\n            return 404;" in conf
        assert plan.service("directus").environment["IP_TRUST_PROXY"] == "uniquelocal"


@pytest.mark.parametrize("key", sorted(PLANS))
def test_nginx_listens_where_the_plan_and_its_checks_say(key):
    plan = PLANS[key]
    nginx = plan.service("nginx")
    conf = rendered_files(plan)["nginx/nginx.conf"]
    listens = re.findall(r"^\s*listen ([\d.:]+)( ssl)?", conf, re.M)
    ready_port = int(re.search(r":(\d+)/healthz", " ".join(nginx.healthcheck.test)).group(1))
    live = re.search(r"//([\d.]+):(\d+)/healthz", " ".join(nginx.liveness.test))
    assert {int(address.rsplit(":", 1)[-1]) for address, _ in listens} == {*nginx.expose, int(live.group(2))}
    assert (str(ready_port), " ssl") in listens
    assert (f"{live.group(1)}:{live.group(2)}", "") in listens  # liveness only on loopback
    assert all(port.container_port in nginx.expose for port in nginx.ports)
    for directive in ("server_tokens off;", "ssl_protocols TLSv1.2 TLSv1.3;", "limit_req_zone", "limit_req zone=", "client_max_body_size",
                      "Strict-Transport-Security", "X-Content-Type-Options", "frame-ancestors 'none'", "Referrer-Policy",
                      "error_log stderr", "access_log /dev/stdout ccoas;"):
        assert directive in conf, directive
    # everything nginx writes lands on a tmpfs the plan mounts (the root fs is read-only)
    tmpfs = tuple(t.target + "/" for t in nginx.tmpfs)
    written = re.findall(r"^\s*(?:pid|\w+_temp_path)\s+(\S+);", conf, flags=re.M)
    assert written and all(path.startswith(tmpfs) for path in written), written
    assert f"ssl_certificate {SECRETS_DIR}nginx_tls_cert;" in conf and f"ssl_certificate_key {SECRETS_DIR}nginx_tls_key;" in conf


# --- compose -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(ALL_PLANS))
def test_compose_round_trips_and_agrees_with_the_plan(key):
    plan = ALL_PLANS[key]
    text = rendered_files(plan)["compose.yaml"]
    document = yaml.safe_load(text)
    assert document == compose_document(plan)
    assert set(document) <= {"name", "networks", "services", "volumes", "secrets"} | {k for k in document if k.startswith("x-")}
    assert document["name"] == plan.stack
    for network in plan.networks:
        if not any(network.name in s.networks for s in compose_services(plan)):
            assert network.name not in document["networks"]
            continue
        body = document["networks"][network.name]
        assert body["name"] == network.engine_name and body["internal"] == network.internal and body["labels"] == network.labels
        assert (body.get("driver_opts") == {"isolate": "true"}) is network.isolate and body["x-ccoas"]["isolate"] is network.isolate
    assert {v: body["name"] for v, body in document.get("volumes", {}).items() if v != "ccoas-settled"} == {v.name: v.engine_name for v in plan.volumes if v.service != "vault"}
    exported = compose_services(plan)
    assert {s.name for s in plan.services} - {s.name for s in exported} <= {"vault"}
    for service in exported:
        body = document["services"][service.name]
        assert body["image"] == service.image.ref
        assert body["pull_policy"] == "never" == service.image.pull
        assert body["user"] == service.user and body["read_only"] is service.read_only
        assert body["cap_drop"] == list(service.cap_drop) == ["ALL"]
        assert body["security_opt"] == list(service.security_opt)
        assert body["environment"] == {k: v.replace("$", "$$") for k, v in service.environment.items()}
        assert {n: b["aliases"] for n, b in body["networks"].items()} == {n: list(a) for n, a in service.networks.items()}
        assert ("ports" in body) == (service.name == "nginx" and bool(plan.edge.listener.ports))
        assert body["restart"] == "on-failure:5"
        assert body["healthcheck"]["test"] == [part.replace("$", "$$") for part in service.healthcheck.test]
        assert all(re.fullmatch(r"\d+s", body["healthcheck"][k]) for k in ("interval", "timeout", "start_period"))
        expected = {}
        for d in service.depends_on:
            if d.service != "vault":
                expected[d.service] = {"condition": "service_healthy"}
                expected[f"{d.service}-settled"] = {"condition": "service_completed_successfully"}
        assert body.get("depends_on", {}) == expected
        assert body["pids_limit"] == service.limits.pids
        assert body["deploy"]["resources"]["limits"]["cpus"] == service.limits.nano_cpus / 1e9
        assert body["labels"] == service.labels
        if service.config is not None:
            assert f"./{service.config.source}:{service.config.target}:ro" in body["volumes"]
        for mount in service.volumes:
            assert f"{mount.volume}:{mount.target}" in body["volumes"]
        edge_sockets = [m.target for m in service.runtime_mounts if service.name == "nginx" and plan.edge.listener.kind == "host"]
        assert [t.split(":")[0] for t in body.get("tmpfs", [])] == [t.target for t in service.tmpfs] + edge_sockets


def test_compose_publishes_nginx_ports_as_planned():
    for key in ("dev", "ci", "prod"):
        plan = PLANS[key]
        ports = compose_document(plan)["services"]["nginx"]["ports"]
        for port, body in zip(plan.service("nginx").ports, ports):
            assert body["target"] == port.container_port and body["host_ip"] == port.host_ip
            assert body.get("published") == (str(port.host_port) if port.host_port else None)


# --- hasura ------------------------------------------------------------------------------------


def hasura_request(plan: Plan) -> dict[str, object]:
    """The body ccoas's hook posts to Hasura's metadata API."""
    return json.loads(rendered_files(plan)["hasura/replace_metadata.json"])


@pytest.mark.parametrize("key", ["prod", "every-preset"])
def test_hasura_metadata_parses_and_mirrors_the_rls_presets(key):
    plan = ALL_PLANS[key]
    request = hasura_request(plan)
    assert (request["type"], request["version"]) == ("replace_metadata", 2)
    assert request["args"]["allow_inconsistent_metadata"] is False
    metadata = request["args"]["metadata"]
    assert metadata["version"] == 3
    [source] = metadata["sources"]
    assert source["name"] == "default" and source["kind"] == "postgres"
    assert source["configuration"]["connection_info"]["database_url"] == {"from_env": "HASURA_GRAPHQL_DATABASE_URL"}
    tables = source["tables"]
    assert [t["table"] for t in tables] == [{"schema": plan.app_schema.name, "name": t.name} for t in plan.app_schema.tables]
    for table, entry in zip(plan.app_schema.tables, tables):
        column = table.tenant_column if table.policy == "tenant" else table.owner_column
        variable = "X-Hasura-Tenant-Id" if table.policy == "tenant" else "X-Hasura-User-Id"
        mine = {column: {"_eq": variable}}
        select = {p["role"]: p["permission"] for p in entry["select_permissions"]}
        if table.policy == "public-read":
            assert select == {role: {"columns": [c.name for c in table.columns], "filter": {}, "allow_aggregations": False} for role in ("anonymous", "user")}
        else:
            assert select == {"user": {"columns": [c.name for c in table.columns], "filter": mine, "allow_aggregations": False}}
        for operation in ("insert_permissions", "update_permissions", "delete_permissions"):
            assert [p["role"] for p in entry[operation]] == ["user"], operation
        insert = entry["insert_permissions"][0]["permission"]
        assert insert["check"] == mine and insert["set"] == {column: variable} and column not in insert["columns"]
        update = entry["update_permissions"][0]["permission"]
        assert update["filter"] == mine and update["check"] == mine and column not in update["columns"]
        server_set = {c.name for c in table.columns if c.default in ("gen_random_uuid()", "now()")}
        assert server_set and not server_set & (set(insert["columns"]) | set(update["columns"])), "ids and timestamps are the database's"
        assert entry["delete_permissions"][0]["permission"] == {"filter": mine}


def test_hasura_metadata_with_no_tables_has_an_empty_table_list():
    data = yaml.safe_load((REPO / "stacks" / "prod.yaml").read_text())
    data["schema"]["tables"] = []
    plan = build_plan(parse_stack(data, "prod-no-tables"))
    assert hasura_request(plan)["args"]["metadata"]["sources"][0]["tables"] == []


# --- shell scripts, postgres, redis, vault, minio, directus ---------------------------------


SHELL_SCRIPTS = [(key, relative) for key, plan in sorted(ALL_PLANS.items()) for relative in rendered_files(plan) if relative.endswith(".sh")]


@pytest.mark.parametrize(("key", "relative"), SHELL_SCRIPTS)
@pytest.mark.parametrize("shell", ["sh", "bash", "dash"])
def test_rendered_shell_scripts_parse(key, relative, shell, tmp_path):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    text = rendered_files(ALL_PLANS[key])[relative]
    assert text.startswith("#!/bin/sh\n") and "set -eu" in text
    if relative.endswith("entrypoint.sh"):
        assert "exec " in text  # an entrypoint hands PID 1 to the service
    script = tmp_path / "script.sh"
    script.write_text(text)
    result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("key", sorted(ALL_PLANS))
def test_redis_acl_users_are_the_clients_with_a_redis_password(key):
    plan = ALL_PLANS[key]
    if not plan.has("redis"):
        pytest.skip("no redis")
    script = rendered_files(plan)["redis/entrypoint.sh"]
    clients = sorted(
        s.name.removeprefix("redis_").removesuffix("_password") for s in plan.secrets if s.name.startswith("redis_") and s.name != "redis_health_password"
    )
    assert re.findall(r"' (\w+) \"\$\{?\w+\}?\"\n", script) == clients
    assert "'user default off resetpass -@all'" in script and "umask 077" in script
    assert ">%s" not in script  # a password is only ever written as its #<sha256>


@pytest.mark.parametrize("key", sorted(ALL_PLANS))
def test_postgres_bootstrap_reads_every_role_password_from_its_secret_file(key):
    plan = ALL_PLANS[key]
    files = rendered_files(plan)
    sql = files["postgres/bootstrap.sql"]
    roles = sorted(c for c in ("directus", "embedder", "hasura", "monitoring", "postgraphile") if plan.has(c))
    assert re.findall(r"^ALTER ROLE \"(\w+)\" PASSWORD :'pw';$", sql, re.M) == roles
    for role in roles:
        assert f"\\set pw `cat {SECRETS_DIR}postgres_{role}_password`" in sql
        assert f"host    app             {role:<15} all             scram-sha-256" in files["postgres/pg_hba.conf"]
    assert sql.count("FORCE ROW LEVEL SECURITY") == len(plan.app_schema.tables)
    assert "CREATE EXTENSION IF NOT EXISTS vector" in sql
    assert files["postgres/pg_hba.conf"].rstrip().endswith("host    all             all             all             reject")


@pytest.mark.parametrize("key", sorted(ALL_PLANS))
def test_vault_policies_file_is_the_uploaded_text(key):
    plan = ALL_PLANS[key]
    text = rendered_files(plan)["vault/policies.hcl"]
    for policy in plan.vault.policies:
        hcl = vault_policy_hcl(policy, plan)
        assert hcl in text
        paths = re.findall(r'path "([^"]+)"', hcl)
        assert paths == [f"{plan.vault.kv_mount}/data/{plan.vault.prefix}/{p}" for p in sorted(policy.read_paths)]
        assert hcl.count('capabilities = ["read"]') == len(paths)
    assert text.endswith(ccoas_policy_hcl(plan))
    assert not re.search(r'path "[^"]*" \{\n  capabilities = \[[^\]]*"(sudo|root)"', text)


@pytest.mark.parametrize("key", sorted(ALL_PLANS))
def test_service_policies_are_the_text_the_bootstrap_uploads(key):
    from ccoas import secrets

    plan = ALL_PLANS[key]
    uploaded = getattr(secrets, "service_policy_hcl", vault_policy_hcl)  # the bootstrap may import ours
    for policy in plan.vault.policies:
        assert vault_policy_hcl(policy, plan) == uploaded(policy, plan)
    assert ccoas_policy_hcl(plan) == secrets.ccoas_policy_hcl(plan)


def test_vault_config_is_server_mode_with_a_socket_and_telemetry_only_for_monitoring():
    for key, plan in PLANS.items():
        conf = rendered_files(plan)["vault/config.hcl"]
        vault = plan.service("vault")
        socket = next(m.target for m in vault.runtime_mounts if m.name == "vault-socket")
        assert f'address      = "{socket}/vault.sock"' in conf and 'socket_mode  = "0666"' in conf
        assert "disable_mlock = true" in conf and "ui = false" in conf
        # telemetry (unauthenticated /v1/sys/metrics on the auth network) only for monitoring
        assert ("unauthenticated_metrics_access = true" in conf) == plan.has("monitoring"), key
        assert ("telemetry" in conf) == plan.has("monitoring"), key
        assert ('audit "file" "file"' in conf) == (vault.image.source == "local"), key
        assert f'file_path = "{plan.vault.audit_path}"' in conf or vault.image.source != "local"


def test_minio_buckets_are_private_and_deterministic_json():
    import json

    text = rendered_files(PLANS["prod"])["minio/buckets.json"]
    document = json.loads(text)
    assert text == json.dumps(document, indent=2, sort_keys=True) + "\n"
    [uploads] = document["buckets"]
    assert uploads["name"] == "uploads" and uploads["public"] is False
    statements = uploads["policy"]["Statement"]
    assert all(s["Effect"] == "Allow" and "Principal" not in s for s in statements)
    assert {r for s in statements for r in s["Resource"]} == {"arn:aws:s3:::uploads", "arn:aws:s3:::uploads/*"}


@pytest.mark.parametrize("key", sorted(PLANS))
def test_directus_env_is_the_plan_environment_sorted(key):
    plan = PLANS[key]
    lines = [line for line in rendered_files(plan)["directus/directus.env"].splitlines() if line and not line.startswith("#")]
    assert lines == [f"{k}={v}" for k, v in sorted(plan.service("directus").environment.items())]


def valid_component_combinations() -> list[Plan]:
    """prod.yaml with every subset of its components that still validates."""
    from itertools import product

    from ccoas.errors import StackError
    from ccoas.stack import COMPONENTS

    base = yaml.safe_load((REPO / "stacks" / "prod.yaml").read_text())
    names = [c for c in COMPONENTS if c != "embedder"]  # it runs only with embedded columns: prod has none
    plans = []
    for switches in product((True, False), repeat=len(names)):
        data = yaml.safe_load(yaml.safe_dump(base))
        for name, enabled in zip(names, switches):
            data["components"][name] = {**(data["components"].get(name) or {}), "enabled": enabled}
            if not enabled:
                data["components"][name].pop("publish", None)
        if not switches[names.index("postgres")]:
            data["schema"]["tables"] = []
        try:
            plans.append(build_plan(parse_stack(data, "combination")))
        except StackError:
            continue
    return plans


def test_every_valid_combination_of_components_renders_consistently():
    plans = valid_component_combinations()
    assert len(plans) > 10
    for plan in plans:
        files = rendered_files(plan)
        assert files == rendered_files(plan)
        assert yaml.safe_load(files["compose.yaml"]) == compose_document(plan)
        expected = {t.removesuffix(".j2") for s in plan.services for t in s.config_templates}
        assert set(files) == expected | {"compose.yaml", "plan.json"}
        if plan.has("nginx"):
            assert set(re.findall(r"proxy_pass http://(\w+)", files["nginx/nginx.conf"])) == routed_upstreams(plan)
        if plan.has("hasura"):
            assert isinstance(json.loads(files["hasura/replace_metadata.json"])["args"]["metadata"]["sources"][0]["tables"], list)


@pytest.mark.parametrize("key", sorted(PLANS))
def test_config_digest_from_memory_equals_the_digest_of_the_rendered_directory(key, tmp_path):
    """The engine hashes a service's config without writing it (``up --dry-run``): the hash must
    be the one of the directory ``render`` writes (paths, modes, bytes)."""
    import hashlib

    from ccoas.render import config_digest

    plan = PLANS[key]
    render(plan, tmp_path)
    files = rendered_files(plan)
    for service in plan.services:
        if service.config is None:
            continue
        root = tmp_path / service.config.source
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file():
                digest.update(f"{rel}\0{path.stat().st_mode & 0o777:o}\0".encode() + path.read_bytes() + b"\0")
            else:
                digest.update(f"{rel}/\0".encode())
        assert config_digest(files, service.config.source) == digest.hexdigest(), service.name


# --- directus: the presets as Directus permissions, the Hasura claims extension ---------------


@pytest.mark.parametrize("key", ["dev", "every-preset"])
def test_directus_permissions_mirror_the_rls_presets(key):
    plan = ALL_PLANS[key]
    access = json.loads(rendered_files(plan)["directus/access.json"])
    assert access["role"]["name"] == access["policy"]["name"] == "app-user"
    assert access["policy"]["admin_access"] is False and access["policy"]["app_access"] is False
    assert access["tenant_field"]["field"] == "tenant_id"
    by_key = {(p["collection"], p["action"]): p for p in access["permissions"]}
    assert sorted(by_key) == sorted((t.name, a) for t in plan.app_schema.tables for a in ("create", "read", "update", "delete"))
    for table in plan.app_schema.tables:
        column = table.tenant_column if table.policy == "tenant" else table.owner_column
        variable = "$CURRENT_USER.tenant_id" if table.policy == "tenant" else "$CURRENT_USER"
        mine = {column: {"_eq": variable}}
        server_set = {c.name for c in table.columns if c.default in ("gen_random_uuid()", "now()")}
        read, create, update, delete = (by_key[(table.name, a)] for a in ("read", "create", "update", "delete"))
        assert read["fields"] == [c.name for c in table.columns]
        assert read["permissions"] == ({} if table.policy == "public-read" else mine)
        assert create["presets"] == {column: variable}
        assert update["permissions"] == delete["permissions"] == mine
        for written in (create, update):
            assert column not in written["fields"] and not server_set & set(written["fields"])
    public = {(p["collection"], p["action"]) for p in access["public_permissions"]}
    assert public == {(t.name, "read") for t in plan.app_schema.tables if t.policy == "public-read"}


def test_directus_loads_the_rendered_hasura_claims_hook():
    plan = PLANS["dev"]
    files = rendered_files(plan)
    manifest = json.loads(files["directus/extensions/ccoas-hasura-claims/package.json"])
    assert manifest["type"] == "module"
    assert manifest["directus:extension"] == {"type": "hook", "path": "index.js", "source": "index.js", "host": "^12.0.0"}
    assert "directus/extensions/ccoas-hasura-claims/index.js" in files
    directus = plan.service("directus")
    assert directus.environment["EXTENSIONS_PATH"] == f"{directus.config.target}/extensions"
    assert directus.environment["DB_SEARCH_PATH"] == f"directus,{plan.app_schema.name}"
    [hook] = directus.hooks
    assert hook.kind == "exec" and hook.stage == "ready" and hook.command == ("node", f"{directus.config.target}/provision.mjs")


@pytest.mark.parametrize("key", [k for k in sorted(ALL_PLANS) if ALL_PLANS[k].has("directus")])
def test_the_directus_project_owner_is_a_plain_settings_update_that_sends_nothing(key):
    """Directus 11.17.4 calls SettingsService.setOwner (a POST to its compliance service, and a
    daily retry while project_status is "pending") for PROJECT_OWNER and POST /settings/owner:
    ccoas sets neither, and provisions the owner with PATCH /settings, project_status null."""
    plan = ALL_PLANS[key]
    directus = plan.service("directus")
    script = rendered_files(plan)["directus/provision.mjs"]
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("//"))

    assert "PROJECT_OWNER" not in directus.environment and directus.environment["TELEMETRY"] == "false"
    assert "settings/owner" not in code
    assert 'call("PATCH", "/settings", ownerChanges)' in code
    assert "const owner = { project_owner: process.env.ADMIN_EMAIL, project_usage: null, org_name: null, product_updates: false, project_status: null };" in code


@pytest.mark.parametrize("key", sorted(ALL_PLANS))
def test_compose_settles_every_hooked_or_awaited_service_with_its_hooks_in_order(key):
    """Every exec hook of every exported service runs in that service's settle container, after
    the check of its stage (alive: liveness, ready: readiness), in the plan's order; a service
    another one waits for has a gate its dependants wait for. Hooks are translated from the plan,
    never listed here."""
    import shlex

    from ccoas.compose import literal, settle_script

    plan = ALL_PLANS[key]
    document = compose_document(plan)
    exported = compose_services(plan)
    awaited = {d.service for s in exported for d in s.depends_on}
    for service in exported:
        hooks = [h for h in service.hooks if h.kind == "exec"]
        if not hooks and service.name not in awaited:
            assert f"{service.name}-settle" not in document["services"]
            continue
        settle = document["services"][f"{service.name}-settle"]
        assert settle["command"] == [literal(settle_script(service))] and settle["restart"] == "no"
        script = settle_script(service)
        positions = [script.index(f"wait_for alive "), *(script.index(shlex.join(h.command)) for h in hooks if h.stage == "alive"),
                     script.index(f"wait_for ready "), *(script.index(shlex.join(h.command)) for h in hooks if h.stage == "ready"),
                     script.index(": > /run/ccoas-settled/")]  # fmt: skip
        assert positions == sorted(positions), service.name
        assert shlex.join(service.liveness.argv) in script and shlex.join(service.healthcheck.argv) in script
        assert f"{service.name}-settled" in document["services"]


@pytest.mark.parametrize("key", sorted(PLANS))
def test_compose_header_names_every_variable_the_file_uses(key):
    from ccoas.compose import VARIABLES

    text = rendered_files(PLANS[key])["compose.yaml"]
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    # Vault's runtime dir is gone with Vault; monitoring's (ccoas's textfile) stays with it
    assert used == ({"CCOAS_SECRETS_DIR", "CCOAS_RUNTIME_DIR"} if PLANS[key].has("monitoring") else {"CCOAS_SECRETS_DIR"})
    assert all(f"#   {name}: {VARIABLES[name]}" in header for name in used)
    assert "podman-compose up -d" in header and "ccoas secrets init" in header


@pytest.mark.parametrize("key", sorted(PLANS))
def test_graphiql_is_routed_in_dev_only(key):
    """``/graphql/ui`` and Ruru's files reach PostGraphile only in dev (GraphiQL is off elsewhere,
    and an unrouted path there goes to Directus like any other)."""
    plan = PLANS[key]
    conf = rendered_files(plan)["nginx/nginx.conf"]
    routed = "location = /graphql/ui {" in conf and "location /graphql/ruru-static/ {" in conf
    assert routed == (plan.environment == "dev" and plan.has("postgraphile"))
    settings = json.loads(rendered_files(plan)["postgraphile/settings.json"]) if plan.has("postgraphile") else None
    if settings is not None:
        assert settings["dev"] == (plan.environment == "dev")


@pytest.mark.parametrize("key", sorted(PLANS))
def test_nginx_limits_and_workers_are_the_plans(key):
    plan = PLANS[key]
    conf = rendered_files(plan)["nginx/nginx.conf"]
    limits = plan.edge.limits
    assert f"worker_processes {plan.edge.workers};" in conf
    assert f"worker_connections {plan.edge.worker_connections};" in conf
    assert plan.edge.workers * plan.edge.worker_connections >= 2 * limits.total_connections
    assert f"rate={limits.requests_per_second}r/s;" in conf and f"burst={limits.burst} nodelay;" in conf
    assert f"limit_conn ccoas_conn_per_ip {limits.connections};" in conf and f"limit_conn ccoas_ws_per_ip {limits.websockets};" in conf
    # the client address is read from a PROXY header only on the listener's unix sockets
    behind = plan.edge.listener.kind == "host"
    assert ("set_real_ip_from unix:;" in conf) == behind and conf.count("proxy_protocol") == (6 if behind else 0)  # 4 sockets, the realip header, the log's address
    assert not re.search(r"listen \d+[^;]*proxy_protocol", conf), "a TCP listener must never read a PROXY header"
