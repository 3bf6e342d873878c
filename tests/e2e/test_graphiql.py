"""GraphiQL (PostGraphile's Ruru) in ``environment: dev``, rendered by a real browser through Nginx.

Debian's chromium, headless, driven by selenium (Debian's chromedriver; nothing is
downloaded) opens ``https://<domain>:<port>/graphql/ui`` through the edge listener and Nginx:
the page and Ruru's files under ``/graphql/ruru-static/`` load and GraphiQL's editor renders,
and a query typed into it runs against PostGraphile. In ci and prod Nginx routes neither path
(``tests/test_render.py::test_graphiql_is_routed_in_dev_only``).
"""

from __future__ import annotations

import os
import shutil

import pytest
import yaml

from ccoas import listener
from ccoas.planner import load_plan
from tests.e2e.conftest import component_stack
from tests.e2e.healthy_stack import healthy_stack

pytestmark = pytest.mark.e2e

STACK = "edge-giql"
RUNNING = ("vault", "postgres", "directus", "postgraphile", "nginx")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    document = component_stack(STACK, RUNNING)
    document["environment"] = "dev"
    document["components"]["nginx"] = {"publish": [{"container_port": 8443, "host_port": 0}]}
    path = tmp_path_factory.mktemp("stacks") / f"{STACK}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with healthy_stack(load_plan(path), RUNNING) as running:
        yield running


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
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.ui import WebDriverWait

    [origin] = [e for e in listener.endpoints(engine.plan, engine.paths) if e.startswith("https://")]
    port = origin.rpartition(":")[2]
    browser.get(f"https://{engine.plan.domain}:{port}/graphql/ui")
    WebDriverWait(browser, 60).until(until.presence_of_element_located((By.CSS_SELECTOR, ".graphiql-container .graphiql-query-editor")))
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => [e.name, e.responseStatus || 0])")
    static = [(name, status) for name, status in resources if "/graphql/ruru-static/" in name]
    assert static, f"no Ruru file was loaded under /graphql/ruru-static/: {resources}"
    assert all(status in (0, 200) for _, status in static), static
    # the editor is GraphiQL's: type a query, run it, read PostGraphile's answer
    browser.execute_script(
        "const cm = document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror; cm.setValue('{ __typename }');"
    )
    browser.find_element(By.CSS_SELECTOR, ".graphiql-execute-button").click()
    WebDriverWait(browser, 30).until(
        lambda driver: '"__typename": "Query"' in driver.find_element(By.CSS_SELECTOR, ".graphiql-response").text
    )
