"""The wrapper's /status page and /status.json against real processes: two models on three workers, one of
them killed (its Consul check goes critical), recent traffic, admin keys, names from Consul escaped, and
the page as a person sees it in a real (headless) Chromium."""
from __future__ import annotations

import html
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.support.procs import ROOT, get_json, post, wait_until
from tests.support.servers import registered, routable, start_fake_worker, start_worker, start_wrapper, unique_model

ADMIN_KEY = "sk-status-admin-0123456789"
USER_KEY = "sk-status-user-0123456789"
PROMPT_MARKER = "secret-prompt-text-5e1d"
HOSTILE_MODEL = '<img/src=x/onerror=alert("pwned")>'
SCREENSHOT = ROOT / "docs" / "status-page.png"


@pytest.fixture(scope="module")
def fleet(module_procs, consul, tmp_path_factory):
    """model_a on workers 1 and 2, model_b on workers 2 and 3; worker 3 killed, so model_b has 1 of 2."""
    model_a, model_b = unique_model("status-a"), unique_model("status-b")
    w1 = start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", model_a)
    w2 = start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", f"{model_a},{model_b}")
    w3 = start_worker(module_procs, consul, "generators.echo.EchoGen", "--models", model_b)
    config = tmp_path_factory.mktemp("status-fleet") / "env.yaml"
    # a failed instance stays cooling down while a test looks; a stalled stream fails after 2 s
    config.write_text("wrapper:\n  cooldown: 120\n  timeouts:\n    idle: 2.0\n")
    wrapper = start_wrapper(module_procs, consul, "--config", str(config))
    wait_until(lambda: routable(wrapper, model_a) and routable(wrapper, model_b), 10, "both models routable")
    w3.proc.signal(signal.SIGKILL)  # no deregistration: Consul's check of it turns critical
    killed = f"-127.0.0.1-{w3.port}"
    wait_until(lambda: any(i["id"].endswith(killed) and i["check"] == "critical" for i in status(wrapper)["instances"]),
               15, "the killed worker's check to turn critical")
    return wrapper, (w1, w2, w3), model_a, model_b


def status(wrapper, headers=None) -> dict:
    code, body = get_json(wrapper.url + "/status.json", headers)
    assert code == 200, body
    return body


def page(wrapper, headers=None) -> str:
    response = httpx.get(wrapper.url + "/status", headers=headers, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    return response.text


def model_row(data: dict, name: str) -> dict:
    return next(m for m in data["models"] if m["name"] == name)


def instance_row(data: dict, port: int) -> dict:
    return next(i for i in data["instances"] if i["id"].endswith(f"-127.0.0.1-{port}"))


def test_status_json_counts_instances_and_shows_the_killed_worker_critical(fleet):
    wrapper, (w1, w2, w3), model_a, model_b = fleet
    data = status(wrapper)
    assert (model_row(data, model_a)["healthy"], model_row(data, model_a)["total"]) == (2, 2)
    assert (model_row(data, model_b)["healthy"], model_row(data, model_b)["total"]) == (1, 2)
    dead = instance_row(data, w3.port)
    assert dead["check"] == "critical" and dead["routed"] is False and dead["address"] == f"127.0.0.1:{w3.port}"
    for live in (w1, w2):
        row = instance_row(data, live.port)
        assert row["check"] == "passing" and row["routed"] and row["service"] == "echo"
        assert row["seen_since"] and row["cooling_down"] is False and row["in_flight"] == 0
    assert data["wrapper"]["consul"]["reachable"] is True
    assert data["wrapper"]["consul"]["routing_table_age_seconds"] is not None
    assert data["wrapper"]["version"] and data["wrapper"]["uptime_seconds"] >= 0
    assert data["wrapper"]["limits"]["max_body_bytes"] == 4 * 1024 * 1024


def test_status_figures_follow_the_traffic_and_never_show_the_prompt(fleet):
    wrapper, _, model_a, _ = fleet
    before = model_row(status(wrapper), model_a)
    for _ in range(5):
        code, _, _ = post(wrapper.base_url + "/chat/completions",
                          {"model": model_a, "messages": [{"role": "user", "content": f"hi {PROMPT_MARKER}"}]})
        assert code == 200
    body = {"model": model_a, "stream": True, "messages": [{"role": "user", "content": "one two three"}]}
    with httpx.stream("POST", wrapper.base_url + "/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200 and "[DONE]" in response.read().decode()
    data = status(wrapper)
    after = model_row(data, model_a)
    assert after["requests"] - before["requests"] == 6
    assert after["errors"] == before["errors"] == 0 and after["error_rate"] == 0
    assert after["rps"] > 0 and after["in_flight"] == 0
    assert after["ttft_p50_ms"] is not None and after["ttft_p95_ms"] >= after["ttft_p50_ms"]
    assert PROMPT_MARKER not in str(data) and PROMPT_MARKER not in page(wrapper)


def test_status_page_shows_what_the_json_says(fleet):
    wrapper, (_, _, w3), model_a, model_b = fleet
    text = page(wrapper)
    data = status(wrapper)
    for name in (model_a, model_b):
        row = re.search(rf'<tr data-model="{re.escape(html.escape(name))}">(.*?)</tr>', text).group(1)
        m = model_row(data, name)
        assert re.search(r"data-healthy>(\d+)<", row).group(1) == str(m["healthy"])
        assert re.search(r"data-total>(\d+)<", row).group(1) == str(m["total"])
        assert re.search(r"data-in-flight>(\d+)<", row).group(1) == str(m["in_flight"])
    dead = instance_row(data, w3.port)
    row = re.search(rf'<tr data-instance="{re.escape(dead["id"])}"[^>]*>(.*?)</tr>', text).group(1)
    assert ">down<" in row and ">critical<" in row and dead["address"] in row
    assert 'http-equiv="refresh"' in text  # it refreshes itself
    assert not re.search(r'(src|href)="https?://', text)  # nothing is fetched from anywhere


def test_status_escapes_what_consul_says(fleet, consul):
    wrapper, (w1, _, _), _, _ = fleet
    with registered(consul, "hostile", w1.port + 20000 if w1.port < 45000 else w1.port - 20000, HOSTILE_MODEL):
        wait_until(lambda: any(m["name"] == HOSTILE_MODEL for m in status(wrapper)["models"]), 10,
                   "the hostile registration on the status page")
        text = page(wrapper)
    assert HOSTILE_MODEL not in text
    assert html.escape(HOSTILE_MODEL, quote=True) in text


@pytest.fixture(scope="module")
def keyed(module_procs, consul, tmp_path_factory):
    config = tmp_path_factory.mktemp("status") / "env.yaml"
    config.write_text(f"wrapper:\n  api_keys:\n    - key: {ADMIN_KEY}\n      admin: true\n"
                      f"    - key: {USER_KEY}\n      name: team\n")
    return start_wrapper(module_procs, consul, "--config", str(config))


@pytest.mark.parametrize("path", ["/status", "/status.json"])
def test_status_needs_an_admin_key_when_keys_are_configured(keyed, path):
    assert httpx.get(keyed.url + path).status_code == 401
    refused = httpx.get(keyed.url + path, headers={"Authorization": f"Bearer {USER_KEY}"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_key_required"
    allowed = httpx.get(keyed.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert allowed.status_code == 200
    assert ADMIN_KEY not in allowed.text and USER_KEY not in allowed.text


def test_status_is_open_without_keys(fleet):
    wrapper, *_ = fleet
    assert httpx.get(wrapper.url + "/status").status_code == 200
    assert httpx.get(wrapper.url + "/status.json").json()["wrapper"]["api_keys"] == "open"


# ---- in a real browser --------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/system-packages.txt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="status-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1500,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_status_page_in_a_browser_marks_the_killed_worker_down(fleet, browser):
    from selenium.webdriver.common.by import By

    wrapper, (w1, w2, w3), model_a, model_b = fleet
    browser.get(wrapper.url + "/status")
    assert "status" in browser.title

    def cell(row_selector: str, cell_selector: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, row_selector).find_element(By.CSS_SELECTOR, cell_selector).text

    assert cell(f'tr[data-model="{model_a}"]', "td.healthy") == "2 / 2"
    assert cell(f'tr[data-model="{model_b}"]', "td.healthy") == "1 / 2"
    dead = browser.find_element(By.CSS_SELECTOR, f'tr[data-instance$="-127.0.0.1-{w3.port}"]')
    assert dead.find_element(By.CSS_SELECTOR, "td[data-state]").text == "down"
    assert dead.find_element(By.CSS_SELECTOR, "td[data-check]").text == "critical"
    assert "down" in dead.get_attribute("class")
    assert "3 attempts" in browser.find_element(By.ID, "limits").text  # the configured limits, at a glance
    # a person sees it in red: the page's own CSS applies (no stylesheet from anywhere else)
    assert dead.find_element(By.CSS_SELECTOR, "td[data-state]").value_of_css_property("color") == "rgba(185, 28, 28, 1)"
    for live in (w1, w2):
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-instance$="-127.0.0.1-{live.port}"]')
        assert row.find_element(By.CSS_SELECTOR, "td[data-state]").text == "up"
    assert browser.find_element(By.CSS_SELECTOR, "#consul b").text == "reachable"
    if os.environ.get("UPDATE_STATUS_SCREENSHOT"):  # regenerate docs/status-page.png
        Path(SCREENSHOT).write_bytes(browser.get_screenshot_as_png())


def test_status_shows_a_failing_instance_cooling_down_with_its_last_error(fleet, consul):
    """Runs last: it adds an instance of model_a at a port nobody listens on (registered without a check,
    so routed), then sends requests until one fails over from it."""
    from tests.support.procs import free_port

    wrapper, _, model_a, _ = fleet
    dead_port = free_port()
    with registered(consul, "dead", dead_port, model_a):
        wait_until(lambda: model_row(status(wrapper), model_a)["healthy"] == 3, 10, "the dead instance routed")

        def failed_over() -> bool:
            code, _, _ = post(wrapper.base_url + "/chat/completions",
                              {"model": model_a, "messages": [{"role": "user", "content": "hi"}]})
            assert code == 200  # the failover hides it from the client
            return instance_row(status(wrapper), dead_port)["last_error"] is not None

        wait_until(failed_over, 20, "a request to try the dead instance")
        dead = instance_row(status(wrapper), dead_port)
        assert dead["last_error"] == "worker_unreachable" and dead["last_error_at"]
        assert dead["cooling_down"] is True and dead["cooling_until"] and dead["check"] == "unchecked"
        row = re.search(rf'<tr data-instance="{re.escape(dead["id"])}"[^>]*>(.*?)</tr>', page(wrapper)).group(1)
        assert ">cooling down<" in row and "worker_unreachable" in row


def test_a_stream_that_fails_midway_counts_as_an_error(fleet, module_procs, consul):
    """A worker that sends one chunk then only keep-alive pings: the wrapper ends the stream with an
    idle_timeout error event after its 200, and the status page counts it as an error."""
    wrapper, *_ = fleet
    model = unique_model("status-stall")
    stalling = start_fake_worker(module_procs, "pings")
    with registered(consul, "stall", stalling.port, model):
        wait_until(lambda: routable(wrapper, model), 10, "the stalling worker routed")
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", wrapper.base_url + "/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200 and "idle_timeout" in response.read().decode()
        wait_until(lambda: model_row(status(wrapper), model)["errors"] == 1, 10, "the failed stream counted")
        row = model_row(status(wrapper), model)
        assert row["requests"] == 1 and row["error_rate"] == 1.0 and row["ttft_p50_ms"] is not None


def test_with_two_processes_each_answers_from_its_own_figures(module_procs, consul):
    wrapper = start_wrapper(module_procs, consul, "--processes", "2")
    pids: set[int] = set()

    def both_answered() -> bool:
        data = status(wrapper)  # a new connection each time: the kernel spreads them over the processes
        assert data["wrapper"]["processes"] == 2 and data["figures_from"] == "this process"
        pids.add(data["wrapper"]["pid"])
        return len(pids) == 2

    wait_until(both_answered, 30, "both processes to answer /status.json")
    assert "of 2" in page(wrapper)
