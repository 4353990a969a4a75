"""Headless Chromium for the crawler: finding the binaries, one driver per worker thread, loading
a search page and pressing its "load more" control.

Everything Selenium-specific lives here, so collect/crawl.py only decides what to crawl and when
to stop. Selenium is imported inside the functions: the page-parsing rules and the CLI's help
must not need it.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from retrieval.errors import LookalikeError

log = logging.getLogger(__name__)

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--window-size=1280,1024")
PAGE_LOAD_TIMEOUT_S = 60.0  # a search page that does not load in this time is a failed term

# The "load more" control, by its visible text and element kind; never by a generated id.
_LOAD_MORE_XPATH = (
    "//*[self::button or self::a or @role='button']"
    "[contains(translate(normalize-space(.), 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),"
    " 'load more')]"
)
_PAGE_STATE_JS = ("const n = performance.getEntriesByType('navigation');"
                  "return [location.href, n.length ? n[0].responseStatus : 0];")


class CrawlError(LookalikeError):
    """The crawl cannot start or a search page cannot be used (bad categories file, no browser, HTTP error)."""


def _find_binary(env: str, names: tuple[str, ...], fallback: str) -> str | None:
    for candidate in (os.environ.get(env), *(shutil.which(n) for n in names), fallback):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def find_chromedriver() -> str:
    """The chromedriver to use; passed to Selenium explicitly so Selenium Manager never downloads one."""
    path = _find_binary("LOOKALIKE_CHROMEDRIVER", ("chromedriver",), "/usr/bin/chromedriver")
    if path is None:
        raise CrawlError("chromedriver not found: install it (Debian: apt-get install chromium "
                         "chromium-driver) or set LOOKALIKE_CHROMEDRIVER to its path")
    return path


class DriverPool:
    """One Chrome per worker thread, created on first use; all quit (and their profiles removed) at close."""

    def __init__(self, driver_path: str):
        self._driver_path = driver_path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._live: list[tuple[Any, str]] = []

    def get(self) -> Any:
        entry = getattr(self._local, "entry", None)
        if entry is None:
            entry = self._local.entry = self._start()
            with self._lock:
                self._live.append(entry)
        return entry[0]

    def discard(self) -> None:
        """Drop this thread's driver (after a failure it may be wedged); the next term starts a fresh one."""
        entry = getattr(self._local, "entry", None)
        self._local.entry = None
        if entry is not None:
            with self._lock:
                self._live.remove(entry)
            self._quit(entry)

    def close(self) -> None:
        with self._lock:
            live, self._live = self._live, []
        for entry in live:
            self._quit(entry)

    def _start(self) -> tuple[Any, str]:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        profile = tempfile.mkdtemp(prefix="lookalike-chrome-")
        options = webdriver.ChromeOptions()
        for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        browser = _find_binary("LOOKALIKE_CHROME", ("chromium", "chromium-browser", "google-chrome"),
                               "/usr/bin/chromium")
        if browser:
            options.binary_location = browser
        try:
            driver = webdriver.Chrome(service=Service(self._driver_path), options=options)
        except Exception:
            shutil.rmtree(profile, ignore_errors=True)
            raise
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        return driver, profile

    @staticmethod
    def _quit(entry: tuple[Any, str]) -> None:
        driver, profile = entry
        try:
            driver.quit()
        except Exception as exc:  # a crashed browser must not stop the others from closing
            log.debug("quitting Chrome failed: %s", exc)
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver: Any, url: str) -> None:
    """Load `url` in `driver`; CrawlError if it did not load or answered an HTTP error."""
    from selenium.common.exceptions import WebDriverException

    try:  # Chrome either raises (net::ERR_...) or shows its own error page, depending on the case
        driver.get(url)
        href, status = driver.execute_script(_PAGE_STATE_JS)
        problem = "Chrome error page" if str(href).startswith("chrome-error://") else None
    except WebDriverException as exc:
        problem = (exc.msg or type(exc).__name__).strip().splitlines()[0]
    if problem:
        raise CrawlError(f"search page {url} could not be loaded ({problem}); is the site reachable?")
    if status and int(status) >= 400:
        raise CrawlError(f"search page {url} answered HTTP {status}")


def click_load_more(driver: Any) -> bool:
    """Click the first visible, enabled "load more" control; True if one was clicked."""
    from selenium.common.exceptions import WebDriverException

    for button in driver.find_elements("xpath", _LOAD_MORE_XPATH):
        try:
            if not (button.is_displayed() and button.is_enabled()):
                continue
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
            try:
                button.click()
            except WebDriverException:  # covered by an overlay: a script click still fires onclick
                driver.execute_script("arguments[0].click();", button)
            return True
        except WebDriverException as exc:  # gone between find and click (the page re-rendered)
            log.debug("load-more control vanished: %s", exc)
    return False
