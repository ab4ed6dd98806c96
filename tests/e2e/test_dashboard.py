"""The dashboard at /ui in a real headless Chromium (Debian's chromium and chromedriver,
driven by Selenium), against a `skiff up` with its default flags: it refuses to show
anything without a token, lists and follows objects live, streams a pod's log, acts
(scale, restart, delete) and shows the server's validation errors inline.

Screenshots land in $SKIFF_ARTIFACTS (default: the target directory's e2e-artifacts)."""

import os
import subprocess
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from conftest import ROOT, example_wasm, one_node_cluster, skiff_binary, wait_for

ARTIFACTS = os.environ.get("SKIFF_ARTIFACTS", os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "e2e-artifacts"))


@pytest.fixture(scope="module")
def dash():
    with one_node_cluster("dash") as c:
        yield c


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    # The cluster's CA is the test's own; a user imports ca.crt or accepts it once.
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--ignore-certificate-errors", "--window-size=1400,900"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"), options=options)
    os.makedirs(ARTIFACTS, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def signed_in(dash, browser):
    """The browser signed in with the kubeconfig's token, as the login page says to."""
    browser.get(f"{dash.url}/ui/")
    token = dash.kubectl("config", "view", "--raw", "-o", "jsonpath={.users[0].user.token}").stdout
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(lambda: browser.find_element(By.ID, "who").text == "system:admin", 10, "the page to sign in")
    return browser


def text_of(browser, element_id):
    return browser.find_element(By.ID, element_id).text


# Rows are read and clicked in one script each: the table redraws its rows as events
# arrive, so an element found in one WebDriver call may be gone by the next.
ROWS = "return [...document.querySelectorAll('#list .spacer .row')].map(r => [...r.children].map(c => c.textContent))"


def rows(browser):
    return browser.execute_script(ROWS)


def row(browser, name):
    return next((r for r in rows(browser) if r[1] == name or r[0] == name), None)


def click_row(browser, name=None):
    """Opens the detail of the row named `name` (else the first); returns its name."""
    return browser.execute_script("""
        const rows = [...document.querySelectorAll('#list .spacer .row')];
        const row = arguments[0] ? rows.find(r => r.dataset.name === arguments[0]) : rows[0];
        row.click();
        return row.dataset.name;""", name)


def open_detail(browser, url, name):
    """Opens the list at `url` and the detail of its row `name`."""
    browser.get(url)
    wait_for(lambda: row(browser, name), 20, f"{name} listed")
    click_row(browser, name)


def shot(browser, name):
    browser.save_screenshot(os.path.join(ARTIFACTS, f"dashboard-{name}.png"))


def test_nothing_is_readable_without_a_token(dash, browser):
    browser.get(f"{dash.url}/ui/")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    assert browser.find_element(By.ID, "login").is_displayed()
    assert not browser.find_element(By.ID, "app").is_displayed()
    # The page's own data calls, made without a token, are refused by the API.
    status = browser.execute_script("return fetch('/api/v1/pods').then(r => r.status)")
    assert status == 401
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(lambda: "refused" in text_of(browser, "login-error"), 10, "the page to refuse a bad token")
    shot(browser, "refused")
    # The assets themselves carry a policy that runs only this server's scripts.
    with urllib.request.urlopen(urllib.request.Request(f"{dash.url}/ui/app.js"), context=dash.ssl) as r:
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]


@pytest.fixture(scope="module")
def app(dash, registry):
    """A Deployment of the wasi-hello command in a fresh namespace, and its Service."""
    image = f"{registry.host}/wasi-hello:dash"
    subprocess.run([skiff_binary(), "push", example_wasm("wasm32-wasip1"), image], check=True, capture_output=True, timeout=60)
    dash.kubectl("create", "namespace", "dash")
    manifest = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: greeter, namespace: dash}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: greeter}}}}
  template:
    metadata: {{labels: {{app: greeter}}}}
    spec:
      runtimeClassName: wasmtime
      containers:
      - name: main
        image: {image}
        args: [hello, sleep, "3600"]
        env: [{{name: NAME, value: dashboard}}]
---
apiVersion: v1
kind: Service
metadata: {{name: greeter, namespace: dash}}
spec:
  selector: {{app: greeter}}
  ports: [{{port: 80, targetPort: 8080}}]
"""
    dash.kubectl("apply", "-f", "-", input=manifest)
    dash.kubectl("rollout", "status", "-n", "dash", "deployment/greeter", "--timeout=60s")
    return "dash"


def test_lists_a_deployment_and_follows_a_scale_live(dash, signed_in, app):
    browser = signed_in
    browser.get(f"{dash.url}/ui/#/deployments/dash")
    wait_for(lambda: (row(browser, "greeter") or [None] * 3)[2] == "1/1", 20, "the Deployment listed as 1/1")
    # Scaled from outside the page: the row follows the watch, with no reload.
    marker = browser.execute_script("return window.skiffTimings.start")
    dash.kubectl("scale", "-n", "dash", "deployment/greeter", "--replicas=3")
    wait_for(lambda: row(browser, "greeter")[2] == "3/3", 60, "the row to show 3/3 ready")
    assert browser.execute_script("return window.skiffTimings.start") == marker, "the view was reloaded"
    shot(browser, "scaled")
    browser.get(f"{dash.url}/ui/#/pods/dash")
    wait_for(lambda: text_of(browser, "count") == "3", 20, "three pods listed")
    pod = rows(browser)[0]
    assert pod[3] == "Running" and pod[5] == "dash" and pod[6] == "wasm (wasmtime)", pod


def test_scale_and_restart_from_the_page(dash, signed_in, app):
    browser = signed_in
    open_detail(browser, f"{dash.url}/ui/#/deployments/dash", "greeter")
    replicas = browser.find_element(By.ID, "replicas")
    replicas.clear()
    replicas.send_keys("2")
    browser.find_element(By.XPATH, "//aside//button[text()='Scale']").click()
    wait_for(lambda: dash.json("get", "deployment", "-n", "dash", "greeter")["spec"]["replicas"] == 2, 10, "the scale to reach the server")
    browser.find_element(By.XPATH, "//aside//button[text()='Restart']").click()
    wait_for(lambda: "kubectl.kubernetes.io/restartedAt" in (dash.json("get", "deployment", "-n", "dash", "greeter")["spec"]["template"]["metadata"].get("annotations") or {}),
             10, "the restart annotation")
    dash.kubectl("rollout", "status", "-n", "dash", "deployment/greeter", "--timeout=60s")


def test_shows_a_pods_log_lines(dash, signed_in, app):
    browser = signed_in
    browser.get(f"{dash.url}/ui/#/pods/dash")
    wait_for(lambda: rows(browser), 20, "a pod listed")
    click_row(browser)
    wait_for(lambda: "dashboard" in text_of(browser, "log"), 20, "the greeting in the pod's log")
    shot(browser, "log")


def test_shows_a_services_endpoints(dash, signed_in, app):
    browser = signed_in
    open_detail(browser, f"{dash.url}/ui/#/services/dash", "greeter")
    ips = {p["status"]["podIP"] for p in dash.json("get", "pods", "-n", "dash")["items"] if p["status"].get("podIP")}
    wait_for(lambda: any(ip in text_of(browser, "endpoints") for ip in ips), 20, "a pod's address among the endpoints")


def test_an_edit_the_server_refuses_shows_its_error_inline_and_changes_nothing(dash, signed_in, app):
    browser = signed_in
    open_detail(browser, f"{dash.url}/ui/#/deployments/dash", "greeter")
    editor = browser.find_element(By.ID, "yaml")
    wait_for(lambda: "replicas: 2" in editor.get_property("value"), 10, "the YAML loaded")
    text = editor.get_property("value").replace("replicas: 2", "replicas: -1", 1)
    browser.execute_script("arguments[0].value = arguments[1]", editor, text)
    browser.find_element(By.ID, "save").click()
    wait_for(lambda: "spec.replicas" in text_of(browser, "detail-error"), 10, "the validation error shown")
    assert "must be greater than or equal to 0" in text_of(browser, "detail-error")
    shot(browser, "invalid-edit")
    # A misspelled field is refused, as `kubectl edit` refuses it, not silently dropped.
    browser.execute_script("arguments[0].value = arguments[1]", editor, text.replace("  replicas: -1", "  replicas: 3\n  replicaz: 3", 1))
    browser.find_element(By.ID, "save").click()
    wait_for(lambda: 'unknown field "spec.replicaz"' in text_of(browser, "detail-error"), 10, "the unknown field refused")
    assert dash.json("get", "deployment", "-n", "dash", "greeter")["spec"]["replicas"] == 2


def test_deletes_a_pod(dash, signed_in, app):
    browser = signed_in
    browser.get(f"{dash.url}/ui/#/pods/dash")
    wait_for(lambda: rows(browser), 20, "a pod listed")
    name = click_row(browser)
    delete = browser.find_element(By.XPATH, "//aside//button[text()='Delete']")
    delete.click()
    assert delete.text == "Confirm delete"
    delete.click()
    wait_for(lambda: name not in dash.kubectl("get", "pods", "-n", "dash", "-o", "name").stdout, 30, f"pod {name} gone")


def test_a_long_list_keeps_only_the_rows_in_view(dash, signed_in):
    """300 pods (pending: no node matches them) are listed and scroll to the last, while
    the page holds only the rows in view."""
    browser = signed_in
    dash.kubectl("create", "namespace", "many")
    items = ",".join(f'{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p{i:03}","namespace":"many"}},'
                     f'"spec":{{"nodeSelector":{{"none":"none"}},"containers":[{{"name":"c","image":"nothing:v1"}}]}}}}' for i in range(300))
    dash.kubectl("apply", "-f", "-", input=f'{{"apiVersion":"v1","kind":"List","items":[{items}]}}')
    browser.get(f"{dash.url}/ui/#/pods/many")
    wait_for(lambda: text_of(browser, "count") == "300", 20, "300 pods listed")
    assert len(rows(browser)) < 80
    browser.execute_script("document.querySelector('#list .viewport').scrollTop = 1e6")
    wait_for(lambda: row(browser, "p299"), 5, "the last pod drawn after scrolling")
    filter_box = browser.find_element(By.ID, "filter")
    filter_box.send_keys("p12")
    wait_for(lambda: text_of(browser, "count") == "10", 5, "the filter to keep p120…p129")
    filter_box.send_keys(Keys.CONTROL, "a", Keys.DELETE)


def test_lists_the_node_with_its_runtimes_and_capacity(dash, signed_in):
    browser = signed_in
    browser.get(f"{dash.url}/ui/#/nodes")
    node = dash.json("get", "node", "dash")
    cpu = node["status"]["capacity"]["cpu"]
    wait_for(lambda: (row(browser, "dash") or [None] * 5)[1] == "Ready", 20, "the node listed as Ready")
    listed = row(browser, "dash")
    assert "wasm" in listed[2].split(","), listed
    assert listed[3].endswith(f"/ {cpu}"), listed
    shot(browser, "nodes")
