"""The reviewer's desk in a real browser: Chromium (Debian's, driven by Selenium through its
chromedriver) opens the Prefect UI of the local servers on non-default ports, logs in with the API
auth string, finds the evidence in the paused run's approval form, approves, and then opens the
MLflow UI at the promoted model version. Screenshots of both pages are saved under the test's temp
dir (and copied to $SLIMFLOW_TEST_ARTIFACTS when set).

Without Chromium the test is skipped locally and fails under CI=true (`make test` installs it with
infra/local/install-browser.sh, as it installs PostgreSQL).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from slimflow.cli import local_servers as servers
from tests.integration.servers_stack import BIN, _wait_state, approved_champion, pipeline_yaml, poll_api
from tests.integration.test_promotion import free_port

pytestmark = [pytest.mark.integration, pytest.mark.browser]

WAIT_S = 60


def _browser_paths() -> tuple[str, str]:
    binary = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    driver = shutil.which("chromedriver")
    if binary and driver:
        return binary, driver
    why = "Chromium and chromedriver are not installed (infra/local/install-browser.sh installs them)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def browser(tmp_path):
    binary, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1300", f"--user-data-dir={tmp_path / 'chromium-profile'}"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, what: str, timeout: float = WAIT_S):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException:
        shot = Path(os.environ.get("PYTEST_CURRENT_TMP", "/tmp")) / "browser-timeout.png"
        driver.save_screenshot(str(shot))
        body = driver.find_element("tag name", "body").text[:3000]
        pytest.fail(f"browser: {what} not seen within {timeout} s at {driver.current_url}\n{body}")


def _text_visible(text: str):
    def seen(driver):
        return text in driver.find_element("tag name", "body").text

    return seen


def _save(driver, path: Path) -> Path:
    driver.save_screenshot(str(path))
    keep = os.environ.get("SLIMFLOW_TEST_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(keep) / path.name)
    return path


def _paused_run(stack, name: str, timeout_s: float = 600) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        runs = poll_api(stack, "POST", "/flow_runs/filter",
                        json={"flow_runs": {"name": {"like_": name}}, "limit": 5})  # fmt: skip
        for fr in runs or []:
            if (fr.get("state") or {}).get("type") == "PAUSED":
                return fr
        time.sleep(2)
    pytest.fail(f"no paused flow run named like {name!r} after {timeout_s} s")


def _open_resume_form(driver, timeout_s: float = WAIT_S) -> None:
    """The run page's action menu ('Open menu') holds 'Resume' while the run is paused.

    The page has several menu buttons, some hidden or still rendering; each visible one is opened in
    turn and closed with Escape (sent to the page, not to the button, which an open menu covers) until
    one holds 'Resume'. Rendering races are retried until the timeout."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def visible_items(d):
        return [i for i in d.find_elements(By.CSS_SELECTOR, "[role=menuitem]") if i.is_displayed()]

    seen: list[str] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-haspopup=menu]"):
            try:
                if not button.is_displayed():
                    continue
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
                button.click()
                items = WebDriverWait(driver, 10, poll_frequency=0.3).until(visible_items)
                labels = [i.text.strip() for i in items]
                seen.append("/".join(labels))
                resume = [i for i in items if i.text.strip() == "Resume"]
                if resume:
                    resume[0].click()
                    return
            except WebDriverException as e:  # detached, covered or menu-less while re-rendering; timeouts
                seen.append(type(e).__name__)
            ActionChains(driver).send_keys(Keys.ESCAPE).perform()
            time.sleep(0.3)
        time.sleep(1)
    pytest.fail(f"no 'Resume' action on the paused run's page; menus seen: {seen[-12:]}")


def test_a_reviewer_approves_in_the_prefect_ui_and_sees_the_card_in_mlflow(
    stack, tmp_path, tiny_model_dir, browser
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from slimflow.models.release import deployments as serve

    port = free_port()
    cfg = pipeline_yaml(
        tmp_path, tiny_model_dir, "it-browser",
        promote__approval={"required": True, "timeout_s": 900}, promote__deploy={"port": port},
        promote__model_name="browser-clf",
    )  # fmt: skip
    log = (tmp_path / "run.log").open("w")
    run = subprocess.Popen([str(BIN / "slimflow"), "run", "-c", str(cfg)], env=stack.env, stdout=log,
                           stderr=subprocess.STDOUT)  # fmt: skip
    workdir = tmp_path / "it-browser"
    try:
        fr = _paused_run(stack, "it-browser")
        root = stack.api.removesuffix("/api")
        assert root.rsplit(":", 1)[1] != "4200"  # non-default ports: the UI must find its API anyway
        settings = httpx.get(f"{root}/ui-settings", timeout=10).json()
        assert settings["api_url"] == stack.api and settings["auth"] == "BASIC"
        ui = root + settings[f"{settings['default_ui']}_base_url"].rstrip("/")

        # 1. the Prefect UI asks for the auth string, then shows the paused run
        browser.get(f"{ui}/runs/flow-run/{fr['id']}")
        password = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"), "login")
        password[0].send_keys(servers.auth_file(stack.plan.state_dir).read_text().strip(), Keys.ENTER)
        _wait(browser, _text_visible(fr["name"]), "the flow run page")
        _wait(browser, _text_visible("Paused"), "the paused state")
        _open_resume_form(browser)
        dialog = _wait(
            browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[role=dialog]"), "the approval form"
        )[0]
        _wait(browser, _text_visible("Resume Flow Run"), "the approval form's title")

        # 2. the evidence is in the form's description
        _wait(browser, _text_visible("Promote browser-clf version"), "the evidence")
        text = dialog.text
        for expected in ("challenger", "champion", "teacher", "test accuracy", "retention of teacher",
                         "p95 latency, batch 1", "95% CI", "min_retention", "Great Expectations: passed",
                         "MLflow run", "model version"):  # fmt: skip
            assert expected in text, f"{expected!r} not in the form:\n{text}"
        links = [a.get_attribute("href") or "" for a in dialog.find_elements(By.TAG_NAME, "a")]
        assert any(
            h.startswith(stack.mlflow_url) and "/#/models/browser-clf/versions/" in h for h in links
        ), links
        _save(browser, tmp_path / "prefect-approval-form.png")

        # 3. the reviewer fills in the form (approve, reviewer, comment: the RunInput's fields) and submits
        switch = dialog.find_elements(By.CSS_SELECTOR, "[role=switch], input[type=checkbox]")
        fields = dialog.find_elements(By.CSS_SELECTOR, "textarea, input[type=text]")
        assert switch and len(fields) >= 2, dialog.get_attribute("innerHTML")[:2000]
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", switch[0])
        switch[0].click()
        fields[0].send_keys("alice-in-chromium")
        fields[1].send_keys("approved from the browser test")
        _save(browser, tmp_path / "prefect-approval-filled.png")
        resume = [b for b in dialog.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Resume"]
        assert resume, [b.text for b in dialog.find_elements(By.TAG_NAME, "button")]
        resume[0].click()
        _wait(browser, _text_visible("Flow run resumed"), "the UI's confirmation")

        done = _wait_state(stack, fr["id"], {"COMPLETED"}, timeout_s=600)
        assert done["state"]["type"] == "COMPLETED"
        run.wait(120)
        champion, _ = approved_champion(stack, "browser-clf", "alice-in-chromium")
        r = httpx.post(
            f"http://127.0.0.1:{port}/predict", json={"texts": ["good great film", "bad awful dull"]}
        )
        assert r.status_code == 200 and r.json()["version"] == champion, r.text

        # 4. MLflow shows the version with its aliases and the model card (its description)
        browser.get(f"{stack.mlflow_url}/#/models/browser-clf/versions/{champion}")
        _wait(browser, _text_visible("champion"), "the champion alias in MLflow")
        _wait(browser, _text_visible("approved by alice-in-chromium"), "the model card in MLflow")
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "challenger" in page and "champion" in page
        _save(browser, tmp_path / "mlflow-model-version.png")
        print(f"\nscreenshots in {tmp_path}: prefect-approval-form.png, prefect-approval-filled.png, "
              "mlflow-model-version.png")  # fmt: skip
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait(60)
        log.close()
        serve.stop(workdir, "browser-clf")
