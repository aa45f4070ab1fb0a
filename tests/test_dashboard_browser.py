"""The lab's web dashboard in a real headless Chromium, against a real ``kmsemu lab``.

The page stays open while clients activate from the command line: rows must
arrive over the event stream without a reload. Then the admin token unlocks
time travel, and 181 days later the client's licence has lapsed. A screenshot
of the page lands in ``artifacts/dashboard.png`` (or ``$KMSEMU_ARTIFACTS``).

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/test`` installs
them); Selenium is pointed at both so that it never downloads anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import kmsemu_command, start_until_ready

REPO = Path(__file__).resolve().parents[1]
WAIT = 10.0  # seconds any one thing may take to show on the page

# the rows as the page shows them, read in one go (innerHTML is rebuilt on every change)
ROWS_JS = """
const cells = (row, sel) => { const c = row.querySelector(sel); return c ? c.className : ""; };
return {
  clients: [...document.querySelectorAll("#clients tr.client")].map(r => ({
    cmid: r.dataset.cmid, cls: r.className, text: r.textContent,
    licence: cells(r, ".licence"), licenceText: (r.querySelector(".licence") || {}).textContent,
  })),
  requests: [...document.querySelectorAll("#requests tr.request")].map(r => ({
    id: r.dataset.id, cls: r.className, text: r.textContent,
    hresult: (r.querySelector(".hresult") || {}).textContent,
  })),
};
"""


def _executable(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and os.access(f"/usr/bin/{name}", os.X_OK):
        found = f"/usr/bin/{name}"
    return found


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    chromium, chromedriver = _executable("chromium"), _executable("chromedriver")
    for what, path, package in (
        ("chromium", chromium, "chromium"),
        ("chromedriver", chromedriver, "chromium-driver"),
    ):
        if path is None:
            pytest.skip(
                f"{what} is not installed (scripts/test installs it with apt-get install {package})"
            )
    assert chromium is not None and chromedriver is not None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


class Lab:
    """``kmsemu lab`` with the dashboard, as a real process."""

    def __init__(self, home: Path, token: str) -> None:
        self.home, self.token = home, token
        # --min-count 25: every client activates at once, so that its licence can lapse
        self.process, rest, self.lines = start_until_ready(
            kmsemu_command(
                "lab",
                "--kms-listen",
                "127.0.0.1:0",
                "--dns-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--admin-token",
                token,
                "--min-count",
                "25",
                "--quiet",
            ),
            "ready lab",
            {"KMSEMU_HOME": str(home)},
        )
        fields = dict(re.findall(r"(\w+)=(\S+)", rest))
        self.kms = fields["kms"].split(",")[0]
        self.http = fields["http"]

    def activate(self, *args: str) -> dict[str, Any]:
        result = subprocess.run(
            kmsemu_command("client", "activate", "--host", self.kms, "--json", *args),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "KMSEMU_HOME": str(self.home)},
        )
        assert result.stdout, result
        reply: dict[str, Any] = json.loads(result.stdout)
        return reply

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    running = Lab(tmp_path / "home", secrets.token_urlsafe(16))
    try:
        yield running
    finally:
        running.stop()


def _until(driver: WebDriver, what: str, check: Callable[[], Any]) -> Any:
    """Wait (bounded) until ``check()`` is truthy; fail saying what never showed."""
    wait = WebDriverWait(
        driver, WAIT, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
    )
    try:
        return wait.until(lambda _: check())
    except TimeoutException:
        pytest.fail(f"the dashboard never showed {what}")


def _rows(driver: WebDriver) -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = driver.execute_script(ROWS_JS)
    return rows


def _client(driver: WebDriver, cmid: uuid.UUID) -> dict[str, str] | None:
    return next((row for row in _rows(driver)["clients"] if uuid.UUID(row["cmid"]) == cmid), None)


def _screenshot(driver: WebDriver) -> Path:
    """The whole page as ``dashboard.png`` in the artifacts directory."""
    folder = Path(os.environ.get("KMSEMU_ARTIFACTS") or REPO / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    page, chrome = driver.execute_script(
        "return [document.documentElement.scrollHeight, outerHeight - innerHeight]"
    )
    driver.set_window_size(1440, min(int(page) + int(chrome), 4000))
    path = folder / "dashboard.png"
    driver.save_screenshot(str(path))
    return path


def test_the_dashboard_follows_the_lab_live_and_travels_in_time(
    lab: Lab, browser: WebDriver
) -> None:
    driver = browser
    clock_buttons = "button[data-advance], button#clock-reset"
    try:
        driver.get(lab.http + "/")
        _until(driver, "#live = live", lambda: driver.find_element(By.ID, "live").text == "live")

        # no token yet: a read-only page, the clock buttons disabled
        _until(
            driver,
            "the read-only hint",
            lambda: driver.find_element(By.ID, "read-only-hint").is_displayed(),
        )
        assert "read-only" in driver.find_element(By.ID, "read-only-hint").text
        buttons = driver.find_elements(By.CSS_SELECTOR, clock_buttons)
        assert {b.get_attribute("data-advance") for b in buttons} >= {"1d", "7d", "30d", "181d"}
        assert not any(b.is_enabled() for b in buttons)
        assert _rows(driver) == {"clients": [], "requests": []}
        assert "No client has asked yet" in driver.find_element(By.ID, "clients").text

        # a client activates while the page stays open: it arrives without a reload
        driver.execute_script("window.__marker = 1")
        cmid = uuid.uuid4()
        reply = lab.activate(
            "--product", "windows-11-pro", "--name", "BROWSER-PC", "--cmid", str(cmid)
        )
        assert reply["status"] == 0, reply
        row = _until(driver, "the BROWSER-PC client row", lambda: _client(driver, cmid))
        assert "BROWSER-PC" in row["text"]
        assert "state-licensed" in row["licence"].split(), row
        assert "duplicate" not in row["cls"].split()
        request = _until(driver, "the request row", lambda: _rows(driver)["requests"])[0]
        assert request["hresult"] == "0x00000000" and "BROWSER-PC" in request["text"]
        assert "failed" not in request["cls"].split()
        assert driver.execute_script("return window.__marker") == 1, "the page was reloaded"

        # the same CMID from another workstation name: a cloned image. The name is
        # hostile HTML, which the page must show as text
        clone = '<img id="injected" src="x">'
        lab.activate("--product", "windows-11-pro", "--name", clone, "--cmid", str(cmid))
        row = _until(
            driver,
            "the duplicate CMID",
            lambda: (r := _client(driver, cmid)) and "duplicate" in r["cls"].split() and r,
        )
        assert "duplicate CMID" in row["text"] and clone in row["text"]
        assert driver.execute_script("return document.getElementById('injected')") is None

        # a client whose clock is 5 hours off is refused: a failed request
        lab.activate("--product", "windows-11-pro", "--name", "SKEWED-PC", "--clock-offset", "5h")
        failed = _until(
            driver,
            "the failed request",
            lambda: [r for r in _rows(driver)["requests"] if "SKEWED-PC" in r["text"]],
        )[0]
        assert "failed" in failed["cls"].split() and failed["hresult"] != "0x00000000", failed
        assert len(driver.find_elements(By.CSS_SELECTOR, "#counts [data-application]")) >= 1
        totals = driver.execute_script("return document.getElementById('totals').textContent")
        assert re.findall(r"\d+", totals) == ["3", "1", "0"], totals  # requests, refused, below
        assert driver.execute_script("return window.__marker") == 1, "the page was reloaded"

        # the admin token unlocks the clock; 181 days later the licence has lapsed
        driver.find_element(By.ID, "token").send_keys(lab.token)
        driver.find_element(By.ID, "token-save").click()
        advance = driver.find_element(By.CSS_SELECTOR, 'button[data-advance="181d"]')
        _until(driver, "the clock buttons enabled", advance.is_enabled)
        assert not driver.find_element(By.ID, "read-only-hint").is_displayed()
        advance.click()
        _until(
            driver,
            "the +181d offset",
            lambda: "+181d" in driver.find_element(By.ID, "clock-offset").text,
        )
        row = _until(
            driver,
            "the lapsed licence",
            lambda: (r := _client(driver, cmid)) and "state-lapsed" in r["licence"].split() and r,
        )
        assert "Lapsed" in row["licenceText"], row
        shown = driver.find_element(By.ID, "lab-now").get_attribute("datetime")
        assert shown is not None
        ahead = datetime.fromisoformat(shown.replace("Z", "+00:00")) - datetime.now(UTC)
        assert timedelta(days=180) < ahead < timedelta(days=182), shown
        message = driver.find_element(By.ID, "message")
        assert not (message.is_displayed() and "error" in (message.get_attribute("class") or "")), (
            message.text
        )
        assert driver.execute_script("return window.__marker") == 1, "the page was reloaded"
    finally:
        with contextlib.suppress(WebDriverException):  # never hide the real failure
            print(f"screenshot: {_screenshot(driver)}")

    assert lab.stop() == 0, "\n".join(lab.lines)
