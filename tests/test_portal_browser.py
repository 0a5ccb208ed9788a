"""The portal end to end in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) against a real ``cosim portal`` process: a
prosumer registers; the operator logs in, admits them, changes the tariff, launches a
short run of the smoke scenario, watches its progress bar (HTMX) reach the end, and opens
the report; the prosumer logs in and sees only their own bills.

Chromium is required, never skipped: ``.ci/run`` installs it. With
``PORTAL_SCREENSHOTS=docs/img`` the screenshots of the main pages go to the docs
(``make portal-screenshots``); otherwise to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from portal_support import OPERATOR, RUN_TIMEOUT_S

pytest_plugins = ["portal_support"]  # its fixture `live`

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900")
PROSUMER = ("erin@example.org", "erin-pass-2024")
#: Seconds a page element may take to appear (a run of the smoke scenario: RUN_TIMEOUT_S).
WAIT_S = 20


@pytest.fixture()
def browser(tmp_path):
    assert Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file(), (
        "Debian's chromium and chromium-driver are needed: apt-get install -y chromium chromium-driver "
        "(.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)



def test_operator_and_prosumer_end_to_end_in_chromium(browser, live, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    shots = Path(os.environ.get("PORTAL_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    d = browser
    wait = WebDriverWait(d, WAIT_S)

    def shot(name: str) -> None:
        d.save_screenshot(str(shots / f"portal-{name}.png"))

    def fill(name: str, value: str) -> None:
        box = d.find_element(By.NAME, name)
        box.clear()
        box.send_keys(value)

    def until_text(text: str) -> None:
        wait.until(lambda driver: text in driver.page_source)

    def log_in(who) -> None:
        d.get(live.url + "/login")
        fill("email", who[0])
        fill("password", who[1])
        d.find_element(By.ID, "login").click()

    def log_out() -> None:
        d.find_element(By.ID, "logout").click()
        wait.until(ec.presence_of_element_located((By.ID, "login")))

    # a prosumer registers
    d.get(live.url + "/register")
    fill("email", PROSUMER[0])
    fill("password", PROSUMER[1])
    fill("name", "Erin")
    fill("pv_kwp", "6")
    shot("register")
    d.find_element(By.ID, "register").click()
    until_text("Registration received")

    # the operator logs in and admits them to bus 2
    log_in(OPERATOR)
    wait.until(ec.title_contains("Operator"))
    until_text("Erin")
    d.get(live.url + "/operator/prosumers")
    row = d.find_element(By.XPATH, f"//tr[td[text()='{PROSUMER[0]}']]")
    Select(row.find_element(By.NAME, "bus")).select_by_value("2")
    row.find_element(By.CLASS_NAME, "admit").click()
    row = wait.until(ec.presence_of_element_located((By.XPATH, f"//tr[td[text()='{PROSUMER[0]}']]")))
    assert row.find_element(By.CLASS_NAME, "status").text == "admitted"
    shot("prosumers")

    # changes the tariff (a wrong value first: the loader's message beside the field)
    d.get(live.url + "/operator/settings")
    fill("market.retail_price_per_kwh", "-1")
    d.find_element(By.ID, "save-settings").click()
    error = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-field='market.retail_price_per_kwh']")))
    assert "market.retail_price_per_kwh: expected" in error.text
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", error)
    shot("settings-error")
    fill("market.retail_price_per_kwh", "0.35")
    fill("start", "2016-06-14 11:00")  # midday: the PV produces
    fill("duration", "2h")
    d.find_element(By.ID, "save-settings").click()
    wait.until(ec.presence_of_element_located((By.ID, "saved")))
    shot("settings")

    # launches a short run and watches the progress bar (HTMX polling) reach the end
    d.get(live.url + "/operator/runs")
    d.find_element(By.ID, "launch").click()
    status = wait.until(ec.presence_of_element_located((By.ID, "run-status")))
    assert status.text in ("queued", "running")
    seen = set()
    long_wait = WebDriverWait(d, RUN_TIMEOUT_S, poll_frequency=0.2)

    def finished(driver):  # read in one script: HTMX replaces the elements every second
        text, value = driver.execute_script(
            "return [document.getElementById('run-status').textContent, document.getElementById('run-progress').value]")
        seen.add(float(value))
        return text not in ("queued", "running") and text

    assert long_wait.until(finished) == "finished"
    assert max(seen) == 1.0 and len(seen) >= 2  # the bar moved while the page was open
    assert d.find_element(By.ID, "ledger").text == "intact"
    shot("run")
    d.get(live.url + "/operator/runs")
    shot("runs")
    d.find_element(By.CSS_SELECTOR, "a.report").click()
    wait.until(ec.presence_of_element_located((By.TAG_NAME, "img")))
    assert "report" in d.title.lower() or d.find_elements(By.TAG_NAME, "h1")
    assert d.execute_script("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    shot("report")
    d.get(live.url + "/operator/audit")
    audit = d.find_element(By.ID, "audit").text
    assert "market.retail_price_per_kwh" in audit and "admit prosumer" in audit and "launch run" in audit
    shot("audit")
    d.get(live.url + "/operator")
    log_out()

    # the prosumer logs in and sees only their own bills
    log_in(PROSUMER)
    wait.until(ec.presence_of_element_located((By.ID, "my-runs")))
    assert d.find_element(By.ID, "my-status").text == "admitted"
    d.find_element(By.CSS_SELECTOR, "#my-runs a").click()
    bills = wait.until(ec.presence_of_element_located((By.ID, "my-bills")))
    assert "household P000" in d.find_element(By.TAG_NAME, "h1").text
    assert "rooftop PV 6.0 kWp, battery 0.0 kWh" in d.find_element(By.ID, "my-assets").text  # as declared
    assert float(d.find_element(By.ID, "grid-export").text) > 0.0  # her midday PV surplus
    assert float(d.find_element(By.ID, "bill-market").text) == pytest.approx(
        float(d.find_element(By.ID, "bill-baseline").text) - float(d.find_element(By.ID, "savings").text), abs=2e-4)
    rounds = d.find_elements(By.CSS_SELECTOR, "#my-settlement tbody tr")
    assert len(rounds) == 8  # 2 h at 15 min: one row per round, their own
    assert bills.is_displayed()
    shot("prosumer")
    for other in ("/operator/runs", "/operator/prosumers"):
        d.get(live.url + other)
        assert "Error 403" in d.page_source
    trades = d.execute_script("return fetch('/prosumers/999/runs/1/settlement.csv').then(r => r.status)")
    assert trades == 404
    assert re.search(r"P00[1-9]", d.execute_script(
        "return fetch(location.origin + '/me/runs/1').then(r => r.text())").split('id="my-settlement"')[1]) is None
