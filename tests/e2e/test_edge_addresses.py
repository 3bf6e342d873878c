"""Each client's own address at the edge, proved as clients and attackers would.

One dev stack (Vault, Postgres, Directus, PostGraphile and Nginx, ``edge.listener: host``,
tight limits so a flood is quick):
clients bound to different loopback addresses (127.0.0.2, 127.0.0.3, …) stand in for
different clients. Through the real edge listener (HAProxy as the engine user) and the real
Nginx:

- each address has its own request limit: one floods to 429, the other still gets answers,
  and Nginx's access log names each address;
- a PROXY protocol header sent by a local unprivileged user to the public port is bytes of
  the request (Nginx logs the user's real address, never the forged one), and that user
  cannot reach Nginx's sockets; a container on the edge network that sends one reaches Nginx
  with its own address (Nginx's TCP ports read no header);
- the listener comes back when it dies: ``up`` restarts it (and a second ``up`` changes nothing);
- GraphiQL (PostGraphile's Ruru) renders in dev, in a real browser: Debian's chromium,
  headless, driven by selenium (Debian's chromedriver; nothing is downloaded), opens
  ``/graphql/ui`` through the listener and Nginx, Ruru's files load from
  ``/graphql/ruru-static/``, and a query typed into the editor runs. In ci and prod Nginx
  routes neither path (``tests/test_render.py::test_graphiql_is_routed_in_dev_only``).

Requests counted by the limits go to ``/directus/server/ping`` (proxied: Nginx's ``return``
locations such as ``/healthz`` answer before its limits run).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest
import yaml

from ccoas import listener
from ccoas.planner import load_plan
from tests.e2e.conftest import component_stack
from tests.e2e.healthy_stack import healthy_stack

pytestmark = pytest.mark.e2e

STACK = "edge-addr"
RUNNING = ("vault", "postgres", "directus", "postgraphile", "nginx")
RATE, BURST = 5, 30
"""A GraphiQL page load alone makes about 20 requests at once: the burst covers one."""
PING = "/directus/server/ping"
FORGED = "203.0.113.66"
"""The address a forged PROXY header claims (TEST-NET-3: never a real client here)."""


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    document = component_stack(STACK, RUNNING)
    document["environment"] = "dev"
    document["components"]["postgraphile"] = {"enabled": True}  # off unless asked for
    document["components"]["nginx"] = {
        "publish": [{"container_port": 8443, "host_port": 0}, {"container_port": 8080, "host_port": 0}]
    }
    document["edge"] = {"listener": "host", "limits": {"requests_per_second": RATE, "burst": BURST, "connections": 32, "websockets": 4}}
    path = tmp_path_factory.mktemp("stacks") / f"{STACK}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with healthy_stack(load_plan(path), RUNNING) as running:
        yield running


def endpoint(engine, scheme: str) -> tuple[str, int]:
    [url] = [e for e in listener.endpoints(engine.plan, engine.paths) if e.startswith(f"{scheme}://")]
    host, _, port = url.removeprefix(f"{scheme}://").rpartition(":")
    return host, int(port)


def get(engine, source: str, path: str = PING) -> int:
    """One HTTPS request from ``source`` (a loopback address) through the public port."""
    host, port = endpoint(engine, "https")
    context = ssl.create_default_context(cafile=str(engine.paths.secret_file("nginx", "nginx_tls_cert")))
    connection = http.client.HTTPSConnection(engine.plan.domain, port, source_address=(source, 0), context=context, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def access_log(engine) -> str:
    result = subprocess.run(
        engine.layout.engine_command("podman", "logs", engine.plan.service("nginx").container_name),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.stdout + result.stderr


def test_the_engine_publishes_nothing_and_the_listener_holds_the_public_ports(engine):
    container = engine.client.containers.get(engine.plan.service("nginx").container_name)
    assert not {p: b for p, b in (container.attrs["HostConfig"].get("PortBindings") or {}).items() if b}
    pids = listener.listener_pids(listener.ListenerFiles.of(engine.paths), engine.layout.uid)
    assert len(pids) == 1
    owner = os.stat(f"/proc/{pids[0]}").st_uid
    assert owner == engine.layout.uid != 0, "the listener runs as the engine user, never root"
    rows = {row.service: row for row in engine.status(probe=False)}
    assert rows["nginx"].endpoints == tuple(listener.endpoints(engine.plan, engine.paths))


def test_each_client_address_has_its_own_request_limit(engine):
    time.sleep(1 + BURST / RATE)  # the bucket of earlier tests drained
    flood = [get(engine, "127.0.0.2") for _ in range(3 * (RATE + BURST))]
    assert 429 in flood, f"127.0.0.2 was never limited: {flood}"
    assert flood[: BURST + 1] == [200] * (BURST + 1), f"127.0.0.2 limited before its burst: {flood}"
    other = [get(engine, "127.0.0.3") for _ in range(BURST)]
    assert other == [200] * BURST, f"127.0.0.3 limited by 127.0.0.2's flood: {other}"
    lines = access_log(engine).splitlines()
    assert any(line.startswith("127.0.0.2 - - [") and f'"GET {PING} HTTP/1.1" 429' in line for line in lines)
    assert sum(line.startswith("127.0.0.3 - - [") and f'"GET {PING} HTTP/1.1" 200' in line for line in lines) == BURST
    assert not any(line.startswith("10.") and PING in line for line in lines), "a client logged as the engine's forwarder"


def test_each_client_address_has_its_own_websocket_limit(engine):
    """The ``websockets`` limit (4 here) per address: 127.0.0.6's fifth websocket is refused
    with 429 while its four stay open, and 127.0.0.7 still opens one."""
    import asyncio

    import websockets

    host, port = endpoint(engine, "https")
    context = ssl.create_default_context(cafile=str(engine.paths.secret_file("nginx", "nginx_tls_cert")))
    url = f"wss://{engine.plan.domain}:{port}/graphql"
    websockets_allowed = engine.plan.edge.limits.websockets

    async def open_socket(source: str):
        return await websockets.connect(url, ssl=context, subprotocols=["graphql-transport-ws"], local_addr=(source, 0), open_timeout=20)

    async def scenario() -> tuple[int, int | None, bool]:
        held = [await open_socket("127.0.0.6") for _ in range(websockets_allowed)]
        try:
            try:
                extra = await open_socket("127.0.0.6")
                await extra.close()
                refused = None
            except websockets.exceptions.InvalidStatus as exc:
                refused = exc.response.status_code
            other = await open_socket("127.0.0.7")
            await other.close()
            return len(held), refused, True
        finally:
            for ws in held:
                await ws.close()

    opened, refused, other_opened = asyncio.run(scenario())
    assert (opened, refused, other_opened) == (websockets_allowed, 429, True)


def test_a_local_user_cannot_claim_another_address(engine):
    """As ``nobody``: a PROXY header to the public HTTP port is part of the request (logged
    with the user's own address), one to the HTTPS port breaks the TLS handshake, and Nginx's
    sockets are out of reach."""
    http_host, http_port = endpoint(engine, "http")
    https_host, https_port = endpoint(engine, "https")
    socket_path = engine.paths.runtime_mount(engine.plan.edge.listener.socket_mount) / "https.sock"
    script = f"""
import socket, ssl, sys
forged = b"PROXY TCP4 {FORGED} 127.0.0.1 40000 443\\r\\n"
s = socket.create_connection(("{http_host}", {http_port}), source_address=("127.0.0.5", 0), timeout=10)
s.sendall(forged + b"GET /forged-http HTTP/1.1\\r\\nHost: {engine.plan.domain}\\r\\nConnection: close\\r\\n\\r\\n")
print("http", s.recv(200).split(b"\\r\\n")[0].decode())
s = socket.create_connection(("{https_host}", {https_port}), source_address=("127.0.0.5", 0), timeout=10)
s.sendall(forged)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
try:
    ctx.wrap_socket(s, server_hostname="{engine.plan.domain}").sendall(b"GET /forged-https HTTP/1.1\\r\\n\\r\\n")
    print("https handshake completed")
except (ssl.SSLError, OSError) as exc:
    print("https refused", type(exc).__name__)
u = socket.socket(socket.AF_UNIX)
try:
    u.connect("{socket_path}")
    print("socket reached")
except OSError as exc:
    print("socket", type(exc).__name__)
"""
    result = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "http HTTP/1.1 400 Bad Request", lines
    assert lines[1].startswith("https refused"), lines
    assert lines[2] == "socket PermissionError", lines
    time.sleep(1)
    log = access_log(engine)
    assert FORGED not in "\n".join(line.split(" ", 1)[0] for line in log.splitlines()), "a forged address was logged as a client"
    forged_lines = [line for line in log.splitlines() if FORGED in line and '"PROXY' in line]
    assert forged_lines and all(line.startswith("127.0.0.5 ") for line in forged_lines), forged_lines


def test_a_container_on_the_edge_network_cannot_claim_another_address(engine):
    network = engine.plan.network("edge").engine_name
    request = f"PROXY TCP4 {FORGED} 10.0.0.1 40000 8080\\r\\nGET /forged-container HTTP/1.1\\r\\nHost: {engine.plan.domain}\\r\\n\\r\\n"
    script = f"exec 3<>/dev/tcp/nginx/8080; printf '{request}' >&3; head -c 200 <&3; echo; echo address $(hostname -I)"
    name = f"{STACK}-forger"
    result = subprocess.run(
        engine.layout.engine_command(
            "podman", "run", "--rm", "--name", name, "--network", network, "--pull", "never",
            "localhost/ccoas/debian:bookworm", "bash", "-c", script,
        ),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "400 Bad Request" in result.stdout
    own = result.stdout.strip().splitlines()[-1].split()[1]
    time.sleep(1)
    forged_lines = [line for line in access_log(engine).splitlines() if f'"PROXY TCP4 {FORGED} 10.0.0.1' in line]
    assert any(line.startswith(f"{own} ") for line in forged_lines), (own, forged_lines)
    assert not any(line.startswith(FORGED) for line in access_log(engine).splitlines())


def test_a_dead_listener_is_restarted_by_up(engine):
    files = listener.ListenerFiles.of(engine.paths)
    [pid] = listener.listener_pids(files, engine.layout.uid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while listener.listener_pids(files, engine.layout.uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    host, port = endpoint(engine, "https")
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=2).close()
    operation = engine.listener_operation()
    assert operation is not None and (operation.action, operation.cause) == ("start", "not running")
    result = engine.up()
    assert [(op.kind, op.action) for op in result.operations] == [("listener", "start")]
    assert endpoint(engine, "https") == (host, port), "the chosen port is kept"
    assert get(engine, "127.0.0.4") == 200
    assert engine.up().changes == 0


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            pytest.fail(f"{program} is not installed (Debian: apt-get install chromium chromium-driver)")
    os.environ["SE_OFFLINE"] = "true"  # selenium manager must never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    options.accept_insecure_certs = True  # the dev stack's generated certificate
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def test_graphiql_renders_and_runs_a_query_in_dev(engine, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.ui import WebDriverWait

    host, port = endpoint(engine, "https")
    browser.get(f"https://{engine.plan.domain}:{port}/graphql/ui")
    WebDriverWait(browser, 60).until(until.presence_of_element_located((By.CSS_SELECTOR, ".graphiql-query-editor .monaco-editor")))
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => [e.name, e.responseStatus || 0])")
    static = [(name, status) for name, status in resources if "/graphql/ruru-static/" in name]
    assert static, f"no Ruru file was loaded under /graphql/ruru-static/: {resources}"
    assert all(status == 200 for _, status in static), static
    # GraphiQL's editor (Monaco): type a query, run it, read PostGraphile's answer
    browser.find_element(By.CSS_SELECTOR, ".graphiql-query-editor").click()
    typing = browser.switch_to.active_element
    typing.send_keys(Keys.CONTROL, "a")
    typing.send_keys(Keys.DELETE)
    typing.send_keys("{ __typename }")
    browser.find_element(By.CSS_SELECTOR, ".graphiql-execute-button").click()
    WebDriverWait(browser, 30).until(lambda driver: '"__typename": "Query"' in driver.find_element(By.CSS_SELECTOR, ".graphiql-response").text)
