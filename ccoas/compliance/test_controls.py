"""The controls. Each is a parametrized test over the plan's services, checked live.

Settings are read back from the engine (``podman inspect``) AND observed from inside the
container (``/proc/1/status``, ``id``, a write to ``/``), and network isolation is
measured with a probe rather than trusted from the configuration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import testinfra

from ccoas import host_files
from ccoas.host import host_layout
from ccoas.plan import LABEL_PREFIX, Plan
from ccoas.planner import build_plan, load_stack


@lru_cache(maxsize=1)
def plan() -> Plan:
    return build_plan(load_stack(os.environ["CCOAS_CHECK_STACK"]), name=os.environ.get("CCOAS_CHECK_NAME") or None)


def services():
    return [pytest.param(s.name, id=s.name) for s in plan().services]


def podman(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "--remote", *args], capture_output=True, text=True, timeout=60)


@lru_cache(maxsize=None)
def inspect(service: str) -> dict:
    result = podman("container", "inspect", plan().service(service).container_name)
    assert result.returncode == 0, f"{service}: container missing: {result.stderr.strip()}"
    return json.loads(result.stdout)[0]


def container(service: str):
    return testinfra.get_host(f"podman://{plan().service(service).container_name}")


def proc_status(service: str) -> dict[str, str]:
    text = container(service).check_output("cat /proc/1/status")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_engine_is_rootless():
    info = json.loads(podman("info", "--format", "json").stdout)
    assert info["host"]["security"]["rootless"] is True


@pytest.mark.parametrize("service", services())
def test_running_and_healthy(service):
    state = inspect(service)["State"]
    assert state["Running"], f"{service} is not running"
    result = podman("healthcheck", "run", plan().service(service).container_name)
    assert result.returncode == 0, f"{service} health check fails: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("service", services())
def test_runs_as_planned_non_root_user(service):
    wanted = plan().service(service)
    assert inspect(service)["Config"]["User"] == wanted.user
    uid = container(service).check_output("id -u")
    assert uid == str(wanted.uid) and uid != "0"


@pytest.mark.parametrize("service", services())
def test_root_filesystem_is_read_only(service):
    assert inspect(service)["HostConfig"]["ReadonlyRootfs"] is True
    probe = container(service).run("touch /ccoas-write-probe")
    assert probe.rc != 0, f"{service}: could write to /"


@pytest.mark.parametrize("service", services())
def test_all_capabilities_dropped(service):
    status = proc_status(service)
    for kind in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[kind], 16) == 0, f"{service}: {kind} is {status[kind]}"


@pytest.mark.parametrize("service", services())
def test_no_new_privileges(service):
    assert proc_status(service)["NoNewPrivs"].strip() == "1"


@pytest.mark.parametrize("service", services())
def test_attached_to_planned_networks_only(service):
    wanted = {plan().network(n).engine_name for n in plan().service(service).networks}
    assert set(inspect(service)["NetworkSettings"]["Networks"]) == wanted


@pytest.mark.parametrize("service", services())
def test_only_nginx_publishes_ports(service):
    bindings = inspect(service)["HostConfig"].get("PortBindings") or {}
    published = {port: b for port, b in bindings.items() if b}
    if service == "nginx" and behind_listener():
        assert not published, f"nginx behind the edge listener publishes {published}"
    elif service == "nginx":
        assert published
        assert all(b["HostIp"] == p.host_ip for p in plan().service("nginx").ports for b in published.get(f"{p.container_port}/tcp", []))
    else:
        assert not published, f"{service} publishes {published}"


@pytest.mark.parametrize("service", services())
def test_secret_files_are_private_and_owned(service):
    wanted = plan().service(service)
    host = container(service)
    for mount in wanted.secrets:
        stat = host.check_output(f"stat -c '%a %u' {mount.target}")
        assert stat == f"400 {wanted.uid}", f"{service}: {mount.target} is {stat}"


@pytest.mark.parametrize("service", services())
def test_no_secret_value_in_inspect_or_logs(service):
    values = _secret_values()
    document = json.dumps(inspect(service)) + podman("logs", plan().service(service).container_name).stdout
    leaked = [name for name, value in values.items() if value and value in document]
    assert not leaked, f"{service}: secret values visible in inspect/logs: {leaked}"


def engine_size(size: int) -> str:
    """``size`` bytes as Podman's inspect prints a log cap (go-units HumanSize: decimal, four
    significant digits): 131072 -> ``131.1kB``."""
    value, units = float(size), ["B", "kB", "MB", "GB", "TB"]
    unit = 0
    while value >= 1000 and unit < len(units) - 1:
        value, unit = value / 1000, unit + 1
    return f"{value:.4g}{units[unit]}"


@pytest.mark.parametrize("service", services())
def test_log_file_is_capped(service):
    """The engine applied the plan's log cap, and the log file on disk is within it."""
    cap = plan().service(service).logs.max_size_bytes
    log = inspect(service)["HostConfig"]["LogConfig"]
    assert log.get("Size") == engine_size(cap), f"{service}: log cap {log.get('Size')!r}, planned {engine_size(cap)} ({cap} bytes)"
    path = Path(log["Path"])
    size = path.stat().st_size if path.exists() else 0
    assert size <= cap, f"{service}: {path} holds {size} bytes, over its cap of {cap}"


def networks():
    return [pytest.param(n.name, id=n.name) for n in plan().networks]


@pytest.mark.parametrize("network", networks())
def test_network_is_as_planned_and_held_isolated(network):
    """Internal as planned, and the engine holds ``isolate`` (read from the Podman service, which
    is what netavark gets at the next container start, not from the file on disk)."""
    planned = plan().network(network)
    info = json.loads(podman("network", "inspect", planned.engine_name).stdout)[0]
    assert info["internal"] is planned.internal, f"{planned.engine_name}: internal={info['internal']}, planned {planned.internal}"
    if planned.isolate:
        assert (info.get("options") or {}).get("isolate") == "true", f"{planned.engine_name}: held without isolate: {info.get('options')}"


def test_another_isolated_network_cannot_reach_the_stack():
    """Tried as a neighbouring stack would: from a network of its own with ``isolate`` (what every
    ccoas stack has), a probe connects to every port of every service at each of its addresses,
    internal networks' included (with DNS on, their gateway address is in the rootless network
    namespace too, so packets do get routed there); none may answer. The same probe from
    Podman's default network (not isolated) must reach the services on routed networks, or the
    probe proves nothing."""
    from ccoas.compliance import reachability

    routed = {plan().network(n.name).engine_name for n in plan().networks if not n.internal}
    targets = sorted(
        (s.name, address["IPAddress"], port, net in routed)
        for s in plan().services
        for net, address in inspect(s.name)["NetworkSettings"]["Networks"].items()
        if address.get("IPAddress")
        for port in s.expose
    )
    if not any(on_routed for *_, on_routed in targets):
        pytest.skip("no service listens on a routed network")
    image = next(plan().service(s).image.ref for s in reachability.PROBE_SERVICES if plan().has(s))
    neighbour = f"{plan().stack}-ccoas-probe"
    podman("network", "rm", "-f", neighbour)  # left by an interrupted check, if any
    created = podman("network", "create", "--opt", "isolate=true", "--label", f"{LABEL_PREFIX}.stack={plan().stack}", neighbour)
    assert created.returncode == 0, f"creating the probe network: {created.stderr.strip()}"
    script = "; ".join(
        f"if timeout {reachability.PROBE_TIMEOUT_S} bash -c 'exec 3<>/dev/tcp/{address}/{port}' 2>/dev/null; then echo {address}:{port}; fi"
        for _, address, port, _ in targets
    )
    try:
        reached = {}
        for where in (neighbour, "podman"):
            probe = podman(
                "run", "--rm", "--pull", "never", "--network", where, "--user", "65534:65534", "--read-only",
                "--cap-drop", "ALL", "--entrypoint", "bash", image, "-c", script,
            )
            assert probe.returncode == 0, f"probe on {where}: {probe.stderr.strip()}"
            reached[where] = set(probe.stdout.split())
        for service, address, port, on_routed in targets:
            if on_routed:
                assert f"{address}:{port}" in reached["podman"], f"control probe: {service} at {address}:{port} not reachable even from the default network"
            assert f"{address}:{port}" not in reached[neighbour], f"{service} at {address}:{port} answers a container on another isolated network"
    finally:
        podman("network", "rm", "-f", neighbour)


def _probe(source_container: str, image: str, script: str) -> tuple[int, str, str]:
    result = podman(
        "run", "--rm", "--pull", "never", "--network", f"container:{source_container}", "--user", "65534:65534",
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--entrypoint", "bash", image, "-c", script,
    )
    return result.returncode, result.stdout, result.stderr


def test_reachability_matrix_is_the_declared_one():
    """Measured from inside each service's network namespace: every service to every port of
    every other service, at each of its addresses; it must equal the plan's matrix."""
    from ccoas.compliance import reachability

    addresses = {
        s.name: sorted(n["IPAddress"] for n in inspect(s.name)["NetworkSettings"]["Networks"].values() if n.get("IPAddress"))
        for s in plan().services
    }
    measured = reachability.measure(plan(), addresses, _probe)
    report = os.environ.get("CCOAS_CHECK_REPORT")
    if report:
        Path(report).write_text(json.dumps({
            "declared": reachability.matrix_rows(plan(), reachability.declared(plan())),
            "measured": reachability.matrix_rows(plan(), measured.matrix),
            "proofs": measured.proofs,
        }))
    differences = reachability.differences(plan(), measured)
    assert not differences, "measured reachability differs from the plan:\n" + "\n".join(differences)


# --- service controls: what each service does, measured through its own protocol -------------


def needs(*services: str) -> None:
    missing = [s for s in services if not plan().has(s)]
    if missing:
        pytest.skip(f"stack has no {', '.join(missing)}")


def behind_listener() -> bool:
    return plan().edge is not None and plan().edge.listener.kind == "host"


def published(scheme: str):
    """The host address clients reach Nginx's ``scheme`` port on: the edge listener's, or the
    engine's binding."""
    if behind_listener():
        from ccoas import listener
        from ccoas.state import stack_paths

        layout = host_layout()
        paths = stack_paths(layout.state_root, layout.runtime_dir, plan().stack)
        found = [e for e in listener.endpoints(plan(), paths) if e.startswith(f"{scheme}://")]
        if not any(p.scheme == scheme for p in plan().edge.listener.ports):
            pytest.skip(f"nginx publishes no {scheme} port")
        assert found and listener.held_addresses(plan(), paths, layout), f"the edge listener holds no {scheme} port (is it running?)"
        host, _, port = found[0].removeprefix(f"{scheme}://").rpartition(":")
        return host, int(port)
    port = next((p for p in plan().service("nginx").ports if p.scheme == scheme), None)
    if port is None:
        pytest.skip(f"nginx publishes no {scheme} port")
    bindings = inspect("nginx")["NetworkSettings"]["Ports"].get(f"{port.container_port}/tcp") or []
    assert bindings, f"nginx: {port.container_port}/tcp is not published"
    return bindings[0].get("HostIp") or port.host_ip, int(bindings[0]["HostPort"])


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "15", *args], capture_output=True, text=True, timeout=30)


def test_edge_serves_only_its_domain():
    """An unknown Host gets 421 (HTTPS) or 400 (HTTP), never a redirect to it; the domain is served."""
    needs("nginx")
    domain = plan().domain
    address, port = published("https")
    ok = curl("-k", "-o", "/dev/null", "-w", "%{http_code}", "--resolve", f"{domain}:{port}:{address}", f"https://{domain}:{port}/healthz")
    assert ok.stdout == "200", f"the domain itself is not served: {ok.stdout} {ok.stderr}"
    evil = curl("-k", "-o", "/dev/null", "-w", "%{http_code}", "--resolve", f"evil.example:{port}:{address}", f"https://evil.example:{port}/healthz")
    assert evil.stdout == "421", f"HTTPS for Host evil.example answered {evil.stdout}"
    if any(p.scheme == "http" for p in (plan().edge.listener.ports if behind_listener() else plan().service("nginx").ports)):
        address, port = published("http")
        plain = curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H", "Host: evil.example", f"http://{address}:{port}/x")
        assert plain.stdout.strip() == "400" and "evil.example" not in plain.stdout, f"HTTP for Host evil.example: {plain.stdout}"


def test_edge_tls_is_mozilla_intermediate():
    """sslyze (a real TLS scanner, through its API) scans the published HTTPS port and checks it
    against Mozilla's intermediate profile: protocols, ciphers, curves, certificate. The one
    finding accepted is "path validation failed" for a certificate ccoas generated (its issuer,
    the stack CA, is in no public trust store by design: dev and ci); a supplied certificate
    must validate too."""
    needs("nginx")
    try:
        from sslyze import Scanner, ServerNetworkLocation, ServerScanRequest
        from sslyze.mozilla_tls_profile.tls_config_checker import (
            SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
            MozillaTlsConfiguration,
            ServerNotCompliantWithTlsConfiguration,
            TlsConfigurationEnum,
            check_server_against_tls_configuration,
        )
    except ImportError:
        pytest.fail("sslyze is not installed: pip install 'ccoas[check]'")
    address, port = published("https")
    scanner = Scanner()
    location = ServerNetworkLocation(hostname=plan().domain, port=port, ip_address=address)
    scanner.queue_scans([ServerScanRequest(server_location=location, scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER)])
    (result,) = list(scanner.get_results())
    accepted = {"certificate_path_validation"} if plan().tls is not None and plan().tls.mode == "generate" else set()
    try:
        check_server_against_tls_configuration(result, MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE))
    except ServerNotCompliantWithTlsConfiguration as exc:
        issues = {k: v for k, v in exc.issues.items() if k not in accepted}
        assert not issues, "not Mozilla intermediate: " + "; ".join(f"{k}: {v}" for k, v in sorted(issues.items()))


def test_edge_certificate_is_not_about_to_expire():
    """The certificate nginx serves (generated or supplied): fails under 14 days left, warns under 30."""
    needs("nginx")
    import datetime as dt
    import socket
    import ssl
    import warnings

    from cryptography import x509

    from ccoas.tls import FAIL_WITHIN_DAYS, RENEW_WITHIN_DAYS

    address, port = published("https")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we read the certificate, whoever signed it
    with socket.create_connection((address, port), timeout=10) as raw, context.wrap_socket(raw, server_hostname=plan().domain) as tls:
        der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    left = (cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400
    assert left >= FAIL_WITHIN_DAYS, f"the edge certificate expires in {left:.1f} days ({cert.not_valid_after_utc:%Y-%m-%d})"
    if left < RENEW_WITHIN_DAYS:
        warnings.warn(f"the edge certificate expires in {left:.1f} days: renew it (generated ones renew at the next `up`)", stacklevel=1)


def test_edge_hsts_outside_dev():
    needs("nginx")
    domain = plan().domain
    address, port = published("https")
    head = curl("-k", "-sS", "-D", "-", "-o", "/dev/null", "--resolve", f"{domain}:{port}:{address}", f"https://{domain}:{port}/healthz")
    hsts = next((l.split(":", 1)[1].strip() for l in head.stdout.splitlines() if l.lower().startswith("strict-transport-security:")), "")
    wanted = 300 if plan().environment == "dev" else 63072000
    assert hsts.startswith(f"max-age={wanted}"), f"Strict-Transport-Security is {hsts!r}, wanted max-age={wanted}"


def _psql(sql: str) -> str:
    from ccoas.components.postgres import DATABASE, SUPERUSER

    return container("postgres").check_output(f"psql -X -qAt -v ON_ERROR_STOP=1 -U {SUPERUSER} -d {DATABASE} -c \"{sql}\"")


def test_postgres_rls_enabled_and_forced_on_every_app_table():
    needs("postgres")
    schema = plan().app_schema.name
    tables = _psql(f"SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'p')")
    assert set(tables.split()) >= {t.name for t in plan().app_schema.tables}, f"declared tables missing: {tables}"
    loose = _psql(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'p') AND NOT (c.relrowsecurity AND c.relforcerowsecurity)"
    )
    assert loose == "", f"tables in {schema} without RLS enabled and forced: {loose}"


def test_postgres_no_login_role_bypasses_rls():
    """No role that can log in is SUPERUSER or BYPASSRLS, except the bootstrap superuser the
    image creates (it authenticates only with its own secret, and the apps never use it)."""
    needs("postgres")
    from ccoas.components.postgres import SUPERUSER

    roles = _psql(f"SELECT rolname FROM pg_roles WHERE rolcanlogin AND (rolsuper OR rolbypassrls) AND rolname <> '{SUPERUSER}'")
    assert roles == "", f"login roles with SUPERUSER or BYPASSRLS: {roles}"


def test_vault_initialised_unsealed_audited_root_revoked():
    needs("vault")
    from ccoas.state import stack_paths

    layout = host_layout()
    paths = stack_paths(layout.state_root, layout.runtime_dir, plan().stack)
    status = json.loads(container("vault").check_output("vault status -format=json"))
    assert status["initialized"] is True and status["sealed"] is False, status
    assert "root_token" not in json.loads(paths.vault_init.read_text()), "the initial root token is still on disk"
    assert plan().vault is not None
    audit = container("vault").run(f"test -s {plan().vault.audit_path}")
    assert audit.rc == 0, f"the audit log {plan().vault.audit_path} is missing or empty"


def test_redis_default_user_is_off():
    needs("redis")
    redis = container("redis")
    anonymous = redis.run("redis-cli --no-auth-warning -h 127.0.0.1 ping")
    assert "PONG" not in anonymous.stdout, "the default user answers PING without a password"
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr or "WRONGPASS" in anonymous.stdout + anonymous.stderr, anonymous.stdout + anonymous.stderr
    health = redis.run(plan().service("redis").liveness.test[1])
    assert "PONG" in health.stdout, f"the authenticated health user gets no PONG: {health.stdout}{health.stderr}"


def test_minio_refuses_anonymous_access():
    """Anonymous S3 requests, from nginx's place on the edge network (where MinIO's clients are)."""
    needs("minio", "nginx")
    edge = container("nginx")
    minio = f"http://minio:{plan().service('minio').expose[0]}"

    def status(path: str) -> str:
        return edge.run(f"curl -sS -o /dev/null -w '%{{http_code}}' {minio}{path}").stdout

    assert status("/minio/health/live") == "200", "MinIO does not answer from the edge: the refusals below would prove nothing"
    for bucket in plan().buckets:
        if not bucket.public:
            for path in (f"/{bucket.name}/", f"/{bucket.name}/anything"):
                assert status(path) == "403", f"anonymous GET {path} answered {status(path)}"
    assert status("/") == "403", "anonymous bucket listing is allowed"


@pytest.mark.parametrize("service", services())
def test_no_secret_value_in_the_running_process_environment(service):
    """The environment of every process of the container as it runs (after any entrypoint).

    A process that writes its title over its environment area (redis-server, nginx) leaves
    ``/proc/<pid>/environ`` blank: when no process shows an environment, the control says it
    cannot see rather than pass. The processes of the check's own ``exec`` are left out (they
    would always show one): the pids are listed by one ``exec`` and read by the next."""
    values = _secret_values()
    host = container(service)
    pids = [p for p in host.check_output("ls /proc").split() if p.isdigit()]
    reads = " ".join(f"/proc/{pid}/environ" for pid in pids)
    environ = host.run(f"for f in {reads}; do cat \"$f\" 2>/dev/null; echo; done | tr '\\0' '\\n'").stdout
    if not any(line.partition("=")[0].isidentifier() and "=" in line for line in environ.splitlines()):
        pytest.skip(f"{service}: no process shows an environment (its title was written over it): this control cannot see it")
    leaked = [name for name, value in values.items() if value and value.strip() in environ]
    assert not leaked, f"{service}: secret values in the environment of its processes: {leaked}"


@lru_cache(maxsize=1)
def _secret_values() -> dict[str, str]:
    layout = host_layout()
    from ccoas.state import stack_paths

    paths = stack_paths(layout.state_root, layout.runtime_dir, plan().stack)
    values = {}
    for service in plan().services:
        for mount in service.secrets:
            path: Path = paths.secret_file(service.name, mount.secret)
            try:
                values[mount.secret] = host_files.read_file(path).decode()  # the engine user's dir: never through a link
            except FileNotFoundError:
                continue
    return values
