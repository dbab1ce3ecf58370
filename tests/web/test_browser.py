"""A real headless Chromium (Debian's, driven by selenium) on the page of a real daemon.

The daemon (`python -m watcher run`) polls the simulator; the browser loads the overview, a
batch page and a job page and must log no console error (a CSP violation, a failed asset
or a script error all show there), and the page must refresh itself without a reload.
Set SCREENSHOTS=DIR to save the screenshots the README shows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import Servers, free_port
from tests.test_run_process import (
    Daemon,
    child_env,
    daemons,  # noqa: F401 - a fixture
    http_get,
    restore_logging,  # noqa: F401 - a fixture
    servers,  # noqa: F401 - a fixture
    sim_control,
    wait_for,
)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
XSS = "<img src=x onerror=alert(1)>"

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    if os.environ.get("CI"):
        raise RuntimeError("CI must install chromium and chromium-driver (see .ci/run)")
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture
def browser() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container: the sandbox cannot start
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def screenshot(driver: Any, name: str, width: int, height: int) -> None:
    folder = os.environ.get("SCREENSHOTS")
    if not folder:
        return
    driver.set_window_size(width, height)
    time.sleep(0.3)  # let layout settle after the resize
    Path(folder).mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(Path(folder) / f"{name}.png"))
    driver.set_window_size(1280, 1000)


def test_pages_load_in_chromium_against_a_polling_daemon(
    servers: Servers,  # noqa: F811
    daemons: list[Daemon],  # noqa: F811
    browser: Any,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = servers.config(interval="5s", extra=f"http:\n  listen: 127.0.0.1:{port}\n")
    batch = [
        sim_control(servers, "jobs", {"state": state, "batch_name": "spring-sale"})
        for state in ("AUDITING", "AUDITING", "SUCCEED", "PROCESSING", "SUCCEED", "AUDITING")
    ]
    odd = sim_control(servers, "jobs", {"state": "WAITING", "voice_name": XSS})
    daemon = Daemon(config, child_env())
    daemons.append(daemon)
    daemon.wait_log("poll_finished")
    failed = batch[0]["job_id"]
    sim_control(
        servers,
        f"jobs/{failed}",
        {
            "state": "AUDIT_FAILED",
            "job_failed_code": "MSS.00012",
            "job_failed_reason": "audio too noisy in 3 of 20 clips",
        },
    )
    sim_control(servers, f"jobs/{batch[1]['job_id']}", {"state": "SUCCEED"})
    daemon.wait_log("alert_sent")

    browser.get(base + "/")
    assert browser.title == "Overview · metastudio-watcher"
    assert "spring-sale" in browser.find_element(By.CSS_SELECTOR, "table.batches").text
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert [c.find_element(By.TAG_NAME, "h2").text for c in cards] == ["prod ok"]
    # The XSS voice name is text on the page, never an element.
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert XSS in browser.find_element(By.TAG_NAME, "main").text
    # Auto-refresh swaps <main> in place: a marker set on the window survives it.
    browser.execute_script("window.__notReloaded = true;")
    first = browser.find_element(By.ID, "refresh-status").text
    wait_for(
        "the page to refresh itself",
        lambda: browser.find_element(By.ID, "refresh-status").text != first,
        15,
    )
    assert browser.execute_script("return window.__notReloaded === true;")
    screenshot(browser, "overview", 1200, 1400)
    screenshot(browser, "overview-phone", 390, 1500)
    # On a phone the page itself never scrolls sideways (only wide tables do, inside a box).
    browser.set_window_size(390, 900)
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth;"
    )
    browser.set_window_size(1280, 1000)
    assert console_errors(browser) == []

    browser.find_element(By.LINK_TEXT, "spring-sale").click()
    wait_for("the batch page", lambda: "Batch spring-sale" in browser.title, 10)
    rows = browser.find_elements(By.CSS_SELECTOR, "main tbody tr")
    assert len(rows) == len(batch)
    assert "MSS.00012 audio too noisy in 3 of 20 clips" in rows[0].text  # failed first
    screenshot(browser, "batch", 1200, 800)
    assert console_errors(browser) == []

    browser.find_element(By.LINK_TEXT, failed).click()
    wait_for("the job page", lambda: failed in browser.title, 10)
    main = browser.find_element(By.TAG_NAME, "main").text
    assert "Why it failed" in main
    assert "AUDITING → AUDIT_FAILED" in main
    assert "hook rule failures — sent at" in main  # where the alert went and when
    screenshot(browser, "job", 1200, 900)
    assert console_errors(browser) == []

    browser.get(f"{base}/events?kind=transition")
    assert "AUDIT_FAILED" in browser.find_element(By.CSS_SELECTOR, "table.events").text
    assert console_errors(browser) == []
    # The simulator hands out phone numbers and signed links: none may reach a page.
    planted = servers.loop.call(
        lambda: [
            v for j in servers.sim.jobs.values() for v in (j["phone"], j["voice_authorization_url"])
        ]
    )
    for path in ("/", "/batch?source=prod&name=spring-sale", f"/job?source=prod&id={failed}"):
        browser.get(base + path)
        assert [v for v in planted if v in browser.page_source] == [], path
    assert odd["job_id"]
    assert http_get(f"{base}/healthz")[0] == 200
    assert daemon.stop() == 0
