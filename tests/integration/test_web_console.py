"""The web console page (``/`` of the web listener) in a real headless Chromium, against a real pg_doorman in
front of real PostgreSQL: login form, pools table with live rates, charts with data points, RELOAD from the page
recorded as an event, a hostile ``application_name`` shown as inert text, admin-only parts hidden from anonymous
readers. Also without a browser: every asset the page references is served with the right content type, and the
page's code never builds HTML from strings.

A screenshot of the console is kept at ``tests/artifacts/web_console.png``.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg_helpers import connect, scalar, wait_until
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from web_helpers import request, wait_for_port, web_config, web_port

from conftest import ADMIN_PASSWORD, ADMIN_USER, DoormanProcess, StartDoorman, make_pool_config
from pg_doorman.devcluster import TempPostgres

REPO_ROOT = Path(__file__).resolve().parents[2]
STATIC = REPO_ROOT / "src" / "pg_doorman" / "observe" / "static"
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
XSS_NAME = "<img src=x onerror=alert(1)>"
WAIT_S = 20.0
NO_VALUE = "\u2013"  # what the page shows for a value it does not have yet (an en dash)

CONTENT_TYPES = {
    ".html": ("text/html",),
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".svg": ("image/svg+xml",),
}


def start_console(doorman: StartDoorman, pg: TempPostgres, **web: Any) -> tuple[DoormanProcess, int]:
    config = web_config(make_pool_config(pg), ui=True, **web)
    proc = doorman(config)
    port = web_port(config)
    wait_for_port(port)
    return proc, port


# ---------------------------------------------------------------------------- without a browser


def referenced_assets() -> set[str]:
    """Every /assets/ path index.html names, and every module the JS files import (relative to assets/)."""
    index = (STATIC / "index.html").read_text()
    found = {m for m in re.findall(r'(?:src|href)="(/assets/[^"]+)"', index)}
    pending = [p for p in found if p.endswith(".js")]
    while pending:
        path = pending.pop()
        source = (STATIC / path.removeprefix("/")).read_text()
        for module in re.findall(r'^\s*import\b[^;]*?from\s+"\./([^"]+)"', source, re.MULTILINE):
            asset = f"/assets/{module}"
            if asset not in found:
                found.add(asset)
                pending.append(asset)
    return found


def test_every_asset_the_page_references_is_served(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    _, port = start_console(doorman, pg_trust)
    assets = referenced_assets()
    assert {"/assets/app.js", "/assets/style.css", "/assets/favicon.svg", "/assets/series.js"} <= assets
    page = request(port, "/")  # public: the page itself needs no password, its data does
    assert page.status == 200 and page.headers["content-type"].split(";")[0] == "text/html"
    assert page.body == (STATIC / "index.html").read_bytes()
    for asset in sorted(assets):
        reply = request(port, asset)
        assert reply.status == 200, asset
        assert reply.body == (STATIC / asset.removeprefix("/")).read_bytes(), asset
        content_type = reply.headers["content-type"].split(";")[0].strip()
        assert content_type in CONTENT_TYPES[Path(asset).suffix], (asset, content_type)
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            assert "charset=utf-8" in reply.headers["content-type"], asset
    assert request(port, "/assets/nope.js").status == 404
    assert request(port, "/assets/app.js", method="POST").status == 405


def test_the_page_is_self_contained_and_never_parses_data_as_html() -> None:
    """No CDN, no build step, and none of the DOM calls that would turn an application name into markup."""
    files = [p for p in STATIC.rglob("*") if p.is_file()]
    assert files
    for path in files:
        text = path.read_text()
        urls = re.findall(r"https?://[^\s\"')]+", text)
        assert all(u.startswith("http://www.w3.org/") for u in urls), (path, urls)
        if path.suffix == ".js":
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
                assert sink not in text, (path.name, sink)
    index = (STATIC / "index.html").read_text()
    assert "Content-Security-Policy" in index and "script-src 'self'" in index
    assert "<script>" not in index  # inline scripts would need 'unsafe-inline'
    assert re.search(r"\son[a-z]+\s*=", index) is None  # no inline event handlers either


# ---------------------------------------------------------------------------- in Chromium


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "install chromium and chromium-driver (scripts/setup.sh)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1500,1000",
        "--force-device-scale-factor=1",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    # Before any page script: record what an injected handler would do, instead of a modal alert.
    driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {"source": "window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m));"},
    )
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: WebDriver, predicate: Any, what: str, timeout: float = WAIT_S) -> None:
    """Poll ``predicate(driver)`` until it is true; the failure names what was awaited and the page status."""

    def check() -> bool:
        try:
            return bool(predicate(driver))
        except Exception:  # elements come and go while the page redraws
            return False

    try:
        wait_until(check, timeout=timeout, what=what)
    except AssertionError:
        status = driver.execute_script("return document.getElementById('status-text')?.textContent")
        raise AssertionError(f"timed out waiting for {what} (page status: {status!r})") from None


def visible(driver: WebDriver, css: str) -> list[WebElement]:
    return [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]


def pool_cell(driver: WebDriver, column: str) -> str:
    cell = driver.find_element(By.CSS_SELECTOR, f'#pools-table tr[data-pool="appdb/app"] td.c-{column}')
    return str(cell.text)


def severe_console_messages(driver: WebDriver, expected: tuple[str, ...] = ()) -> list[str]:
    """Errors the page logged (script errors, CSP violations, failed requests) other than ``expected`` ones."""
    messages = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return [m for m in messages if not any(e in m for e in expected)]


class Traffic:
    """A client running short transactions until stopped, so that rates and percentiles move."""

    def __init__(self, proc: DoormanProcess) -> None:
        self.conn = connect(proc, application_name="web-console-traffic")
        self.stop = threading.Event()
        self.count = 0
        self.errors = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            try:
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_sleep(0.002)")
                    self.conn.execute("SELECT 1")
                self.count += 1
            except psycopg.errors.OperationalError:  # a paused pool may time a query out: keep going
                self.errors += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.conn.close()


def test_console_in_chromium(doorman: StartDoorman, pg_trust: TempPostgres, browser: WebDriver) -> None:
    proc, port = start_console(doorman, pg_trust)
    hostile = connect(proc, application_name=XSS_NAME)  # stays connected: listed on the Clients tab
    assert scalar(hostile, "SELECT current_setting('application_name')") == XSS_NAME
    traffic = Traffic(proc)
    try:
        run_console(browser, proc, port)
    finally:
        traffic.close()
        hostile.close()
    assert traffic.count > 0


def run_console(driver: WebDriver, proc: DoormanProcess, port: int) -> None:
    url = f"http://127.0.0.1:{port}/"
    driver.get(url)

    # Not anonymous-readable: the page's own login form, not the browser's dialog.
    until(driver, lambda d: d.find_element(By.ID, "login-dialog").get_attribute("open") is not None, "login form")
    driver.find_element(By.ID, "login-user").clear()
    driver.find_element(By.ID, "login-user").send_keys(ADMIN_USER)
    driver.find_element(By.ID, "login-password").send_keys("wrong-password")
    driver.find_element(By.ID, "login-submit").click()
    until(driver, lambda d: "Wrong" in d.find_element(By.ID, "login-error").text, "wrong password refused")
    assert not visible(driver, "#tiles .tile")
    driver.find_element(By.ID, "login-password").clear()
    driver.find_element(By.ID, "login-password").send_keys(ADMIN_PASSWORD)
    driver.find_element(By.ID, "login-submit").click()
    until(driver, lambda d: d.find_element(By.ID, "login-dialog").get_attribute("open") is None, "login accepted")
    assert driver.find_element(By.ID, "role").text == "admin"
    saved = driver.execute_script("return sessionStorage.getItem('pg_doorman.credentials')")
    assert isinstance(saved, str) and saved.startswith("Basic ")

    # The pools table: our pool with transactions flowing (a rate from two polls' counter deltas).
    until(driver, lambda d: pool_cell(d, "name") == "appdb/app", "the pool's row")
    until(driver, lambda d: pool_cell(d, "tps") not in ("", NO_VALUE, "0"), "a non-zero TPS for appdb/app")
    assert pool_cell(driver, "mode").startswith("transaction")
    assert re.fullmatch(r"\d+/\d+/\d+ of 10", pool_cell(driver, "servers")), pool_cell(driver, "servers")
    until(driver, lambda d: pool_cell(d, "q99").endswith(("µs", "ms", "s")), "a query p99")
    assert driver.find_element(By.ID, "status").get_attribute("data-state") == "live"

    # Charts: three SVG charts, each with a first line of at least three points (rates need two polls).
    def charts_drawn(d: WebDriver) -> bool:
        charts = d.find_elements(By.CSS_SELECTOR, "#charts svg.chart")
        lines = [c.find_element(By.CSS_SELECTOR, "path.line.s0").get_attribute("d") or "" for c in charts]
        points = [int(c.get_attribute("data-points") or 0) for c in charts]
        return len(charts) == 3 and all(line.count("L") >= 2 for line in lines) and min(points) >= 3

    until(driver, charts_drawn, "charts with data points")
    # Clicking the pool's name charts that pool alone (and clicking again, all pools).
    driver.find_element(By.CSS_SELECTOR, '#pools-table tr[data-pool="appdb/app"] .pool-name').click()
    assert driver.execute_script("return document.getElementById('scope').value") == "appdb/app"
    row_class = driver.find_element(By.CSS_SELECTOR, 'tr[data-pool="appdb/app"]').get_attribute("class") or ""
    assert "selected" in row_class
    until(driver, charts_drawn, "charts of one pool")
    driver.find_element(By.CSS_SELECTOR, '#pools-table tr[data-pool="appdb/app"] .pool-name').click()
    assert driver.execute_script("return document.getElementById('scope').value") == ""
    tps_tile = driver.find_element(By.CSS_SELECTOR, "#tile-tps .tile-value").text
    assert tps_tile.endswith("/s") and tps_tile != "0/s", tps_tile

    # RELOAD through the page's button: a toast, and the event in the feed.
    driver.find_element(By.ID, "reload-button").click()
    until(driver, lambda d: any("Reload: done" in t.text for t in visible(d, ".toast.ok")), "reload toast")
    until(
        driver,
        lambda d: any(e.text.startswith(tuple("0123456789")) for e in visible(d, "#event-feed li.kind-reload")),
        "RELOAD in the event feed",
    )
    assert "RELOAD" in driver.find_element(By.CSS_SELECTOR, "#event-feed li.kind-reload .kind").text

    # A refused configuration (with markup in the bad value): the page says why, as text, and keeps polling.
    good = proc.config_path.read_text()
    broken = yaml.safe_load(good)
    broken["pools"]["appdb"]["users"][0]["pool_size"] = "<b>many</b><img src=x onerror=alert(2)>"
    proc.config_path.write_text(yaml.safe_dump(broken))
    driver.find_element(By.ID, "reload-button").click()
    until(driver, lambda d: any("pool_size" in t.text for t in visible(d, ".toast.error")), "the refusal")
    assert any("got string '<b>many</b><img src=x" in t.text for t in visible(driver, ".toast.error"))
    until(driver, lambda d: visible(d, "#event-feed li.kind-config-validation-error"), "the refusal's event")
    proc.config_path.write_text(good)
    assert driver.find_elements(By.CSS_SELECTOR, "#toasts b, #toasts img, #event-feed b, #event-feed img") == []
    until(driver, lambda d: pool_cell(d, "servers").endswith("of 10"), "the old configuration still shown")

    # Clients tab: the hostile application name is text, nothing ran and nothing was fetched for it.
    driver.find_element(By.CSS_SELECTOR, '[data-tab="clients"]').click()
    until(
        driver,
        lambda d: any(td.text == XSS_NAME for td in d.find_elements(By.CSS_SELECTOR, "#clients-table td")),
        "the hostile application_name as text",
    )
    assert driver.find_elements(By.CSS_SELECTOR, "#clients-table img") == []
    assert driver.find_elements(By.CSS_SELECTOR, "main img") == []
    assert driver.execute_script("return window.__alerts") == []
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [name for name in fetched if name.rstrip("/").endswith("/x")], fetched
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - reading it is the check

    # Config with restart marks; logs (admin); process info.
    driver.find_element(By.CSS_SELECTOR, '[data-tab="config"]').click()
    until(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#config-table tbody tr")) > 20, "config rows")
    rows = {
        r.find_element(By.CSS_SELECTOR, "td.key").text: r
        for r in driver.find_elements(By.CSS_SELECTOR, "#config-table tbody tr")
    }
    assert "restart" in rows["general.port"].get_attribute("class")
    assert rows["general.port"].find_element(By.CSS_SELECTOR, ".badge").text == "restart"
    assert "restart" not in (rows["general.query_wait_timeout"].get_attribute("class") or "")
    assert rows["general.admin_password"].find_element(By.CSS_SELECTOR, "td.value").text == "********"
    driver.find_element(By.ID, "filter").send_keys("web.")

    def shown_sections(d: WebDriver) -> set[str]:
        keys = [r.find_element(By.CSS_SELECTOR, "td.key").text for r in visible(d, "#config-table tbody tr")]
        return {key.split(".")[0] for key in keys}

    until(driver, lambda d: shown_sections(d) == {"web"}, "filtered config")
    driver.execute_script(
        "const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input'))"
    )

    driver.find_element(By.CSS_SELECTOR, '[data-tab="logs"]').click()
    until(driver, lambda d: any("reload" in e.text.lower() for e in visible(d, ".log-line")), "the reload in the logs")

    driver.find_element(By.CSS_SELECTOR, '[data-tab="process"]').click()
    until(driver, lambda d: str(proc.pid) in d.find_element(By.ID, "process-facts").text, "process facts")

    driver.find_element(By.CSS_SELECTOR, '[data-tab="pools"]').click()
    until(driver, lambda d: visible(d, '#pools-table tr[data-pool="appdb/app"]'), "pools tab again")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "web_console.png"
    assert driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    print(f"\nweb console screenshot: {screenshot}")
    # The same in dark mode: the colours follow prefers-color-scheme.
    light_background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    dark_background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert dark_background != light_background
    dark = ARTIFACTS / "web_console_dark.png"
    assert driver.save_screenshot(str(dark))
    print(f"web console screenshot (dark): {dark}")
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    # Pause and resume from the row's button; then logging out brings the form back.
    pause = driver.find_element(By.CSS_SELECTOR, '#pools-table tr[data-pool="appdb/app"] button[data-action]')
    pause.click()
    until(driver, lambda d: "paused" in pool_cell(d, "mode"), "the pool paused")
    driver.find_element(By.CSS_SELECTOR, '#pools-table tr[data-pool="appdb/app"] button[data-action="resume"]').click()
    until(driver, lambda d: "paused" not in pool_cell(d, "mode"), "the pool resumed")
    with psycopg.connect(proc.dsn(), connect_timeout=10) as conn:
        assert scalar(conn, "SELECT 7") == 7
    kinds = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#event-feed .kind")]
    assert "PAUSE" in kinds and "RESUME" in kinds

    assert severe_console_messages(driver, expected=("status of 422",)) == []  # only the refused reload
    driver.find_element(By.ID, "logout-button").click()
    until(driver, lambda d: d.find_element(By.ID, "login-dialog").get_attribute("open") is not None, "logged out")
    assert driver.execute_script("return sessionStorage.getItem('pg_doorman.credentials')") is None


def test_console_for_anonymous_readers(doorman: StartDoorman, pg_trust: TempPostgres, browser: WebDriver) -> None:
    """``ui_anonymous``: the page reads without a password, and shows no admin actions or logs until login."""
    proc, port = start_console(doorman, pg_trust, ui_anonymous=True)
    with connect(proc) as conn:
        assert scalar(conn, "SELECT 1") == 1
        browser.get(f"http://127.0.0.1:{port}/")
        until(browser, lambda d: pool_cell(d, "name") == "appdb/app", "the pool's row")
        assert browser.find_element(By.ID, "login-dialog").get_attribute("open") is None
        assert browser.find_element(By.ID, "role").text == "read-only"
        assert not visible(browser, "#reload-button")
        assert not visible(browser, '[data-tab="logs"]')
        assert not visible(browser, "#pools-table button[data-action]")
        assert visible(browser, "#login-button")
        # A wrong password stored from an earlier session is dropped, and the form says so.
        browser.execute_script("sessionStorage.setItem('pg_doorman.credentials', 'Basic ' + btoa('admin:nope'))")
        browser.refresh()
        until(browser, lambda d: "refused" in d.find_element(By.ID, "login-error").text, "stale credentials refused")
        assert browser.execute_script("return sessionStorage.getItem('pg_doorman.credentials')") is None
        browser.find_element(By.ID, "login-password").send_keys(ADMIN_PASSWORD)
        browser.find_element(By.ID, "login-submit").click()
        until(browser, lambda d: visible(d, "#reload-button"), "admin actions after login")
        assert visible(browser, '[data-tab="logs"]')
        assert severe_console_messages(browser) == []
    # The pooler goes away: the page says so and keeps what it has.
    proc.stop()
    until(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "error", "status: error")
    assert "not answering" in browser.find_element(By.ID, "status-text").text
    assert visible(browser, '#pools-table tr[data-pool="appdb/app"]')
