"""A newcomer's first login: the browser can trust the stack, and Directus greets its admin
with no license modal.

A stack of its own (vault, postgres, directus, nginx published on a free port). TLS: what
`ccoas tls trust` prints is the only trust anchor a real curl and openssl get (never ``-k``),
before and after a forced renewal (`ccoas secrets rotate nginx`), which changes the served
certificate and keeps the CA. Directus: the project owner is set by ccoas's provisioning with
``project_status`` null (had Directus's ``setOwner`` run, its report to Directus's servers,
unreachable here, would have left it "pending"), and the admin app, logged in through
Debian's headless chromium, shows no owner modal (screenshot kept beside the test's files).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from ccoas.edge import Edge
from ccoas.planner import build_plan, load_stack
from directus_client import Directus  # tests/e2e is on sys.path (rootdir imports)
from healthy_stack import healthy_stack

pytestmark = pytest.mark.e2e

RUNNING = ("vault", "postgres", "directus", "nginx")
OWNER_MODAL = "You have not set a project owner"


@pytest.fixture(scope="module")
def stack(module_stack):
    path = module_stack(f"newcomer-login-{uuid.uuid4().hex[:6]}", *RUNNING)
    document = yaml.safe_load(path.read_text())
    document["components"]["nginx"] = {"publish": [{"container_port": 8443, "host_port": 0}]}  # a free port
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with healthy_stack(build_plan(load_stack(path)), RUNNING) as engine:
        yield engine, path


def ccoas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ccoas.cli", *args], capture_output=True, text=True, timeout=900, cwd="/")


def served(port: int, ca: Path, domain: str) -> tuple[str, str]:
    """``(openssl's verdict, the served leaf's serial)``, verified with ``ca`` only."""
    handshake = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", domain, "-verify_hostname", domain,
         "-CAfile", str(ca), "-verify_return_error", "-showcerts"],
        input="", capture_output=True, text=True, timeout=60,
    )
    verdict = next((line.strip() for line in handshake.stdout.splitlines() if "Verify return code" in line), handshake.stderr)
    leaf = handshake.stdout.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----", 1)[0]
    pem = f"-----BEGIN CERTIFICATE-----{leaf}-----END CERTIFICATE-----\n"
    serial = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem, capture_output=True, text=True).stdout.strip()
    return verdict, serial


def curl(url: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "30", *options, url], capture_output=True, text=True, timeout=60)


def test_curl_and_openssl_trust_the_edge_through_the_stack_ca_across_a_renewal(stack, tmp_path):
    engine, path = stack
    trusted = ccoas("tls", "trust", str(path))
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.startswith("-----BEGIN CERTIFICATE-----") and trusted.stdout.count("BEGIN CERTIFICATE") == 1
    assert "curl --cacert" in trusted.stderr and "Authorities" in trusted.stderr
    ca = tmp_path / "ca.pem"
    ca.write_text(trusted.stdout)
    port = urlsplit(Edge.of(engine).origin).port
    domain = engine.plan.domain
    url = f"https://{domain}:{port}/directus/server/ping"

    untrusted = curl(url)
    assert untrusted.returncode == 60, untrusted.stderr  # the system store does not know the stack CA
    first = curl(url, "--cacert", str(ca))
    assert (first.returncode, first.stdout) == (0, "pong"), first.stderr
    verdict, serial_before = served(port, ca, domain)
    assert verdict == "Verify return code: 0 (ok)", verdict

    rotated = ccoas("secrets", "rotate", "nginx", str(path))  # a forced renewal: a new leaf, Nginx recreated
    assert rotated.returncode == 0, rotated.stderr[-3000:]
    port = urlsplit(Edge.of(engine).origin).port  # host_port 0: the engine may pick a new one
    url = f"https://{domain}:{port}/directus/server/ping"

    again = curl(url, "--cacert", str(ca))
    assert (again.returncode, again.stdout) == (0, "pong"), again.stderr
    verdict, serial_after = served(port, ca, domain)
    assert verdict == "Verify return code: 0 (ok)", verdict
    assert serial_after != serial_before
    assert ccoas("tls", "trust", str(path)).stdout == trusted.stdout


def test_the_compliance_controls_pass_on_the_stack_cas_chain(stack, tmp_path):
    """`ccoas check`: sslyze's Mozilla intermediate profile and the expiry control read the
    chain Nginx now serves (leaf, then the stack CA); only path validation may fail (no public
    store knows the CA)."""
    _, path = stack
    report = tmp_path / "check.xml"

    checked = ccoas("check", str(path), "--junit", str(report))

    assert checked.returncode == 0, (checked.stdout + checked.stderr)[-4000:]
    outcome = {case.get("name"): [child.tag for child in case] for case in ET.parse(report).getroot().iter("testcase")}
    for control in ("test_edge_tls_is_mozilla_intermediate", "test_edge_certificate_is_not_about_to_expire"):
        assert outcome.get(control) == [] or set(outcome.get(control, ["absent"])) <= {"system-out", "system-err", "properties"}, (control, outcome.get(control))


def test_a_stack_from_before_the_stack_ca_migrates_on_the_next_up(stack, tmp_path):
    """What an earlier ccoas left: a self-signed leaf in Vault and served by Nginx, no PKI mount,
    the old ccoas policy. One `ccoas up` mounts a CA, issues a leaf from it and recreates Nginx."""
    from ccoas.secrets import ccoas_policy_hcl
    from ccoas.tls import CA_MOUNT, generate_self_signed

    engine, path = stack
    plan = engine.plan
    cert, key = generate_self_signed(plan.domain)
    store = engine.secrets()
    for secret in plan.secrets:
        if secret.generator in ("tls-cert", "tls-key"):
            store.put(secret, cert if secret.generator == "tls-cert" else key)
    engine.up()  # delivers the self-signed pair: Nginx serves what the earlier ccoas made
    old_policy = "path ".join(block for block in ccoas_policy_hcl(plan).split("path ") if CA_MOUNT not in block)
    with engine.steps.vault().root_client() as root:
        root.sys.disable_secrets_engine(CA_MOUNT)
        root.sys.create_or_update_policy(plan.vault.ccoas_policy, old_policy)
    port = urlsplit(Edge.of(engine).origin).port
    (tmp_path / "self-signed.pem").write_text(cert)
    assert curl(f"https://{plan.domain}:{port}/directus/server/ping", "--cacert", str(tmp_path / "self-signed.pem")).stdout == "pong"

    upgraded = ccoas("up", str(path))

    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    trusted = ccoas("tls", "trust", str(path))
    assert trusted.returncode == 0, trusted.stderr
    (tmp_path / "ca.pem").write_text(trusted.stdout)
    port = urlsplit(Edge.of(engine).origin).port
    url = f"https://{plan.domain}:{port}/directus/server/ping"
    assert (curl(url, "--cacert", str(tmp_path / "ca.pem")).stdout, curl(url, "--cacert", str(tmp_path / "self-signed.pem")).returncode) == ("pong", 60)
    assert ccoas("up", str(path)).stdout.strip().endswith("0 changes")


def test_a_no_op_up_renews_a_certificate_near_its_end_from_the_same_ca(stack, tmp_path):
    """A leaf of the stack CA with 10 days left, delivered: `up --dry-run` names the renewal;
    `up` serves a new 90-day leaf that the CA of `ccoas tls trust` still verifies."""
    from ccoas.tls import CA_MOUNT, LEAF_ROLE, chain, days_left, leaf_request

    engine, path = stack
    plan = engine.plan
    store = engine.secrets()
    issued = store.client.secrets.pki.generate_certificate(
        LEAF_ROLE, plan.domain, extra_params={**leaf_request(plan.domain), "ttl": "240h"}, mount_point=CA_MOUNT
    )["data"]
    for secret in plan.secrets:
        if secret.generator in ("tls-cert", "tls-key"):
            store.put(secret, chain(issued["certificate"], issued["issuing_ca"]) if secret.generator == "tls-cert" else issued["private_key"])
    engine.up()  # delivers the short-lived leaf
    delivered = engine.paths.secret_file("nginx", "nginx_tls_cert")
    assert days_left(delivered.read_text()) < 10.1

    dry = ccoas("up", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    renew = [line for line in dry.stdout.splitlines() if line.startswith("renew secrets: the edge certificate has ")]
    assert renew and renew[0].endswith("days left (renewed under 30)"), dry.stdout
    renewed = ccoas("up", str(path))
    assert renewed.returncode == 0, renewed.stderr[-3000:]
    assert days_left(delivered.read_text()) > 89
    (tmp_path / "ca.pem").write_text(ccoas("tls", "trust", str(path)).stdout)
    port = urlsplit(Edge.of(engine).origin).port
    verdict, _ = served(port, tmp_path / "ca.pem", plan.domain)
    assert verdict == "Verify return code: 0 (ok)", verdict


def test_the_project_owner_is_set_and_nothing_is_pending_for_directus_servers(stack):
    engine, _ = stack
    directus = Directus(engine)
    admin = directus.admin_token(engine)

    settings = directus.ok("GET", "/settings?fields=project_owner,project_status,product_updates", token=admin)

    email = engine.plan.service("directus").environment["ADMIN_EMAIL"]
    assert settings == {"project_owner": email, "project_status": None, "product_updates": False}


def test_the_admin_app_logs_in_with_no_owner_modal(stack, tmp_path):
    """Logged in as the admin, the app shows no owner modal; with the owner cleared (the control:
    the check does see the modal when Directus shows it), a reload shows it."""
    for program in ("chromium", "chromedriver"):  # `make test` installs them (TEST_PACKAGES): never a skip
        if shutil.which(program) is None:
            pytest.fail(f"{program} is not installed (Debian: apt-get install chromium chromium-driver, or `make test-tools`)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    engine, _ = stack
    directus = Directus(engine)
    origin = directus.origin
    password = engine.paths.secret_file("directus", "directus_admin_password").read_text().strip()
    email = engine.plan.service("directus").environment["ADMIN_EMAIL"]
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                     "--ignore-certificate-errors", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)  # TLS trust is the test above's; this one is about the app
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))

    def modal_within(seconds: float) -> bool:
        try:
            WebDriverWait(browser, seconds, poll_frequency=0.5).until(lambda b: OWNER_MODAL in b.find_element(By.TAG_NAME, "body").text)
            return True
        except TimeoutException:
            return False

    admin = directus.admin_token(engine)
    try:
        browser.get(f"{origin}/directus/admin/login")
        wait = WebDriverWait(browser, 120)
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=email]"))).send_keys(email)
        browser.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(password)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda b: "/login" not in b.current_url and b.find_elements(By.CSS_SELECTOR, ".module-bar, #main-content"))
        shown = modal_within(15)
        browser.save_screenshot(str(tmp_path / "first-login.png"))
        url = browser.current_url

        directus.ok("PATCH", "/settings", {"project_owner": None}, token=admin)  # the control
        browser.refresh()
        shown_without_owner = modal_within(60)
        browser.save_screenshot(str(tmp_path / "without-owner.png"))
    finally:
        browser.quit()
        directus.ok("PATCH", "/settings", {"project_owner": email}, token=admin)
    print(f"\nscreenshots: {tmp_path / 'first-login.png'}, {tmp_path / 'without-owner.png'}")
    assert "/admin/" in url and "/login" not in url, url
    assert shown is False, "the owner modal greeted the admin"
    assert shown_without_owner is True, "the control failed: with no owner the check did not see the modal"
