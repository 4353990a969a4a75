"""Headless Chromium for the browser tests: Debian's chromium + chromedriver, a fresh profile each time.

Shared by tests/test_app_browser.py and tests/test_compare_browser.py.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "browser"   # the screenshots to look at
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run")

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)")


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1800) -> Iterator[webdriver.Chrome]:
    """A headless Chromium driven by Selenium, quit (and its profile removed) on exit."""
    with tempfile.TemporaryDirectory(prefix="lookalike-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def have_chromedriver() -> bool:
    """Whether the crawler finds a chromedriver (it drives a real headless Chromium)."""
    from collect.crawl import CrawlError, find_chromedriver
    try:
        find_chromedriver()
    except CrawlError:
        return False
    return True


needs_chromedriver = pytest.mark.skipif(
    not have_chromedriver(),
    reason="chromedriver not found (apt-get install chromium chromium-driver); the crawler needs a real browser")


def set_viewport(driver: webdriver.Chrome, width: int, height: int) -> None:
    """The page's exact viewport (a window of that size keeps some of it for its frame), and a
    phone's touch and layout below 500 px."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500})


def open_tab(driver: webdriver.Chrome, title: str, timeout_s: float = 60) -> None:
    """Click the tab titled `title`; on a narrow page Gradio moves some tabs into its "More tabs"
    menu, which is opened once, then its item clicked."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d, css: str, text: str | None = None) -> list:
        return [b for b in d.find_elements(By.CSS_SELECTOR, css)
                if b.is_displayed() and (text is None or b.text == text)]

    wait = WebDriverWait(driver, timeout_s, ignored_exceptions=(StaleElementReferenceException,))   # re-rendered
    wait.until(lambda d: shown(d, "button[role=tab]"))   # the page has rendered its tabs
    tab = shown(driver, "button[role=tab]", title)
    if not tab:
        driver.execute_script("arguments[0].click()", wait.until(lambda d: shown(d, "button[aria-label='More tabs']"))[0])
        tab = wait.until(lambda d: shown(d, ".overflow-menu button, .overflow-dropdown button", title))
    driver.execute_script("arguments[0].click()", tab[0])
