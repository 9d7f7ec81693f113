"""Browser fixtures: one headless Chromium per session, driven through Debian's chromedriver.

The binary and the driver are given by path, so Selenium Manager never runs and nothing
is downloaded (``CLIPIA_CHROMIUM`` / ``CLIPIA_CHROMEDRIVER`` name others). Without
Chromium, chromedriver or selenium the browser tests skip, unless
``CLIPIA_REQUIRE_BROWSER=1`` (as in CI): then that is a failure.

Every page a test opens records what the widget showed over time (``window.__clipiaSeen``,
see :data:`RECORDER_JS`). A failed test leaves a screenshot and the browser's console in
``tests/browser/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
WIDGET_JS = Path(__file__).resolve().parents[2] / "clipia_tasks" / "static" / "clipia-progress.js"

#: Runs in every page before its own scripts: once the page is parsed, samples the first
#: widget every 100 ms and on every DOM change, keeping each value that differs from the
#: one before.
RECORDER_JS = """
(() => {
  const seen = window.__clipiaSeen = {progress: [], state: [], status: [], eta: []};
  const keep = (list, value) => {
    if (list.length === 0 || list[list.length - 1] !== value) list.push(value);
  };
  const sample = () => {
    const root = document.querySelector("[data-clipia-events], [data-clipia-snapshot]");
    if (!root) return;
    const bar = root.querySelector("[data-clipia-progress]");
    if (bar) keep(seen.progress, bar.position < 0 ? null : bar.value);
    const state = root.getAttribute("data-clipia-state");
    if (state) keep(seen.state, state);
    const status = root.querySelector("[data-clipia-status]");
    if (status) keep(seen.status, status.textContent);
    const eta = root.querySelector("[data-clipia-eta]");
    if (eta) keep(seen.eta, eta.textContent);
  };
  // From the end of parsing on (deferred scripts, the widget among them, run after it).
  document.addEventListener("readystatechange", () => {
    if (document.readyState !== "interactive") return;
    sample();
    new MutationObserver(sample).observe(document, {
      subtree: true, childList: true, characterData: true, attributes: true});
    setInterval(sample, 100);
  });
})();
"""

#: A browser without EventSource, for the polling fallback.
NO_EVENT_SOURCE_JS = "delete window.EventSource;"

_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each test's call report, so the browser fixture knows whether it failed."""
    report = yield
    if report.when == "call":
        item.stash[_REPORT] = report
    return report


def _unavailable(reason: str) -> None:
    if os.environ.get("CLIPIA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (CLIPIA_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(f"{reason}; install Debian's chromium and chromium-driver")


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """The session's headless Chromium (a selenium WebDriver)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed")
    binary = os.environ.get("CLIPIA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = (os.environ.get("CLIPIA_CHROMEDRIVER") or shutil.which("chromedriver")
                   or "/usr/bin/chromedriver")
    missing = [p for p in (binary, driver_path) if not os.access(p, os.X_OK)]
    if missing:
        _unavailable(f"no {' or '.join(missing)}")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1000,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


class Browser:
    """One test's view of the session browser: open pages, read what the widget showed."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self._scripts: list[str] = []

    def before_page_scripts(self, source: str) -> None:
        """Run ``source`` in every page this test opens, before the page's own scripts."""
        answer = self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                             {"source": source})
        self._scripts.append(answer["identifier"])

    def open(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def seen(self) -> dict[str, list[Any]]:
        """What the first widget of the page showed, in order (see RECORDER_JS)."""
        return self.js("return window.__clipiaSeen") or {}

    def wait_for_state(self, *states: str, timeout_s: float = 30.0) -> dict[str, list[Any]]:
        """Wait until the first widget's data-clipia-state is one of ``states``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = self.seen()
            if seen.get("state") and seen["state"][-1] in states:
                return seen
            time.sleep(0.1)
        raise AssertionError(f"the widget did not reach {states} in {timeout_s} s; "
                             f"it showed {self.seen()}")

    def text(self, css: str) -> str:
        return str(self.js("return document.querySelector(arguments[0]).textContent", css))

    def output_media(self, root_css: str = "[data-clipia-output]") -> list[tuple[str, str]]:
        """(tag, src) of every element in the output, e.g. [("img", "http://...png")]."""
        return [tuple(pair) for pair in self.js(
            "return Array.from(document.querySelector(arguments[0]).children)"
            ".map(e => [e.localName, e.getAttribute('src') || ''])", root_css)]

    def image_loaded(self, root_css: str = "[data-clipia-output] img",
                     timeout_s: float = 10.0) -> int:
        """Wait for the first image in the output to load; its natural width (0: broken)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.js("const i = document.querySelector(arguments[0]);"
                       "return !!i && i.complete", root_css):
                break
            time.sleep(0.1)
        return int(self.js("const i = document.querySelector(arguments[0]);"
                           "return i ? i.naturalWidth : 0", root_css))

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def close(self, failed_test: str | None) -> None:
        if failed_test:
            self.screenshot(failed_test)
            console = "\n".join(f"{e['level']} {e['message']}"
                                for e in self.driver.get_log("browser"))
            (SCREENSHOTS / f"{failed_test}.console.txt").write_text(
                f"{self.driver.current_url}\n{self.seen()}\n{console}\n")
        for identifier in self._scripts:
            self.driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                        {"identifier": identifier})
        # Leaving the page closes its event streams, so servers can stop.
        self.driver.get("about:blank")


@pytest.fixture
def browser(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Browser]:
    """The session's browser, recording the widget in every page this test opens."""
    chromium.get_log("browser")  # drop earlier tests' console
    page = Browser(chromium)
    page.before_page_scripts(RECORDER_JS)
    yield page
    report = request.node.stash.get(_REPORT, None)
    failed = request.node.name.replace("/", "_") if report and report.failed else None
    page.close(failed)
