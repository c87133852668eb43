"""Fixtures of the web UI tests: a real `ragqa serve` with tiny models, Debian's Chromium driven by
Selenium, and a screenshot (plus the page's HTML and console log) of every failing test.

The browser is the one apt installs (`chromium`, `chromium-driver`; `make test` installs them):
a test tool's own browser download does not work offline. Without it the tests are skipped,
except under CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.api.server_process import create_key, running_server, server_env

CHROMIUM = Path(os.environ.get("RAGQA_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("RAGQA_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
SCREENSHOTS = Path(os.environ.get("RAGQA_TEST_SCREENSHOTS", Path(__file__).resolve().parent / "screenshots"))
INSTALL_HINT = "install them with `apt-get install -y chromium chromium-driver` (`make test` does it)"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip on a developer machine; fail under CI, where a missing browser must not pass silently."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return f"web UI tests need {' and '.join(missing)}: {INSTALL_HINT}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "web UI tests need selenium: pip install -e '.[dev]'"
    return None


# -- the server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def web_server(tmp_path_factory, tiny_st_model, tiny_llm):
    """A real `ragqa serve` on a free loopback port with tiny models; yields base URL, key and home."""
    home = tmp_path_factory.mktemp("web-home")
    env = server_env(home, tiny_st_model, tiny_llm, RAGQA_QA__FULL_MAX_NEW_TOKENS="8")
    key = create_key(env, "web")
    log_path = home.parent / "server.log"
    with running_server(env, log_path) as (base, _proc):
        yield {"base": base, "key": key, "home": home, "headers": {"Authorization": f"Bearer {key}"}, "log": log_path}


# -- the browser ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium through its chromedriver, with a fresh profile (one per module)."""
    reason = missing_browser()
    if reason:
        skip_or_fail(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-quic",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def page(browser, web_server):
    """The browser on the UI's page with an empty localStorage (no key saved) and a desktop width."""
    browser.set_window_size(1280, 900)
    browser.get(web_server["base"] + "/static/app.css")  # same origin, no script running: clear the storage
    browser.execute_script("localStorage.clear()")
    browser.get(web_server["base"] + "/")
    return browser


# -- a screenshot of every failure -----------------------------------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed or rep.when not in ("setup", "call"):
        return
    driver = item.funcargs.get("page") or item.funcargs.get("browser")
    if driver is None:
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    stem = SCREENSHOTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", item.name)
    saved = []
    try:
        driver.save_screenshot(str(stem.with_suffix(".png")))
        saved.append(stem.with_suffix(".png"))
        stem.with_suffix(".html").write_text(driver.page_source, encoding="utf-8")
        saved.append(stem.with_suffix(".html"))
        logs = driver.get_log("browser")
        stem.with_suffix(".console.log").write_text(
            "\n".join(f"{e['level']} {e['message']}" for e in logs), encoding="utf-8"
        )
        saved.append(stem.with_suffix(".console.log"))
    except Exception as exc:  # the browser may be gone; the failure itself matters more
        saved.append(f"(could not save everything: {exc})")
    server = item.funcargs.get("web_server")
    if server is not None and Path(server["log"]).exists():
        shutil.copyfile(server["log"], stem.with_suffix(".server.log"))
        saved.append(stem.with_suffix(".server.log"))
    rep.sections.append(("web UI failure artefacts", "\n".join(str(s) for s in saved)))
