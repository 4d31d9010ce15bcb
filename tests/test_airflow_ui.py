"""The Airflow UI in headless Chromium: log in, open the DAG, see the Params in the trigger form, trigger a run.

It uses the running stack of test_airflow_services.py. The DAG is paused first and the form's
"Unpause on trigger" box is cleared, so the triggered run, which has the full default settings,
stays queued and never starts training.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pytest

from test_airflow_services import ADMIN_PASSWORD, ADMIN_USER, airflow_stack  # noqa: F401 (a fixture)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
WAIT_S = 60
# Params that the trigger form must show as fields.
EXPECTED_FIELDS = ("preset", "source", "epochs", "batch_size", "num_samples", "store_uri")


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by Selenium; skipped when Chromium, its driver or Selenium is missing."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("Chromium not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="Selenium not installed: pip install -e '.[test]'")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def wait_until(driver, condition, description: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(condition, message=f"timed out waiting for {description}")


def element(by: str, locator: str):
    """Expected condition: the first visible element matching the locator."""
    from selenium.webdriver.support import expected_conditions

    return expected_conditions.visibility_of_element_located((by, locator))


def log_in(driver, api_url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{api_url}/auth/login")
    wait_until(driver, element(By.NAME, "username"), "the login form").send_keys(ADMIN_USER)
    driver.find_element(By.NAME, "password").send_keys(ADMIN_PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_until(driver, lambda d: "/auth/login" not in d.current_url, "the redirect after login")


def open_trigger_form(driver, api_url: str):
    """Open the DAG page and its Trigger dialog; returns the dialog element.

    The page renders the Trigger button before its handlers are ready, so an early click can be
    lost: the button is clicked again until the dialog opens.
    """
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{api_url}/dags/gan_retraining")
    wait_until(driver, element(By.XPATH, "//*[text()='announce_promotion']"), "the task list of the DAG page")
    form_shown = element(By.NAME, "element_source")
    for _ in range(5):
        driver.find_element(By.CSS_SELECTOR, "button[data-testid=trigger-dag-button]").click()
        try:
            field = WebDriverWait(driver, 10, poll_frequency=0.5).until(form_shown)
        except TimeoutException:
            continue
        return field.find_element(By.XPATH, "./ancestor::*[@role='dialog']")
    pytest.fail("the trigger dialog did not open after 5 clicks on Trigger")


def submit_run(driver, dialog, run_id: str) -> None:
    """Clear "Unpause on trigger", set the run id under Advanced Options, and press Trigger."""
    from selenium.webdriver.common.by import By

    unpause = dialog.find_element(By.XPATH, ".//label[@data-scope='checkbox'][contains(., 'Unpause')]")
    if unpause.get_attribute("data-state") == "checked":
        unpause.click()
    dialog.find_element(By.XPATH, ".//button[contains(., 'Advanced Options')]").click()
    run_id_input = wait_until(driver, element(By.NAME, "dagRunId"), "the run id field")
    run_id_input.send_keys(run_id)
    dialog.find_element(By.XPATH, ".//button[normalize-space()='Trigger']").click()


def test_ui_trigger_form_shows_params_and_triggers_run(airflow_stack, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    paused = airflow_stack.request("PATCH", "/api/v2/dags/gan_retraining", json={"is_paused": True})
    assert paused.status_code == 200, paused.text
    run_id = f"ui-{uuid.uuid4().hex[:8]}"

    log_in(browser, airflow_stack.api_url)
    browser.save_screenshot(str(tmp_path / "after-login.png"))
    dialog = open_trigger_form(browser, airflow_stack.api_url)
    for name in EXPECTED_FIELDS:
        assert dialog.find_elements(By.NAME, f"element_{name}"), name
    assert dialog.find_element(By.NAME, "element_epochs").get_attribute("aria-valuemin") == "1"
    browser.save_screenshot(str(tmp_path / "trigger-form.png"))

    submit_run(browser, dialog, run_id)
    run = wait_until(
        browser,
        lambda _: airflow_stack.request("GET", f"/api/v2/dags/gan_retraining/dagRuns/{run_id}").status_code == 200,
        f"DAG run {run_id} in the API",
    )
    assert run

    browser.get(f"{airflow_stack.api_url}/dags/gan_retraining/runs")
    wait_until(browser, element(By.XPATH, f"//*[contains(text(), '{run_id}')]"), f"run {run_id} in the runs list")
    screenshot = tmp_path / "runs-list.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0

    stored = airflow_stack.request("GET", f"/api/v2/dags/gan_retraining/dagRuns/{run_id}").json()
    assert stored["run_type"] == "manual"
    assert stored["conf"]["preset"] == "none"
