"""The app in a real headless Chromium (Selenium): click an example, search, see k images render.

The screenshot goes to artifacts/browser/app.png, the folder CI keeps (named in the README).
"""
from __future__ import annotations


import pytest
from browser_support import ARTIFACTS, chromium, needs_chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from webui.layout import serve
from webui.results import RIGHT, WRONG
from retrieval.library import scan_split
from retrieval.search import LookalikeIndex

WAIT_S = 30

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def app_url(sample_pixel_index):
    demo, url = serve(LookalikeIndex.open(sample_pixel_index))
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with chromium(1400, 1800) as driver:
        yield driver


def _set_k(driver, k: int) -> None:
    box = driver.find_element(By.CSS_SELECTOR, "#pixel-k input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(k), Keys.TAB)


def _rendered_results(driver, k: int) -> list:
    """Wait until the results gallery shows exactly k images that the browser has decoded."""
    def ready(d):
        imgs = d.find_elements(By.CSS_SELECTOR, "#pixel-results img")
        loaded = len(imgs) == k and all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
                                        for i in imgs)
        return imgs if loaded else False
    return WebDriverWait(driver, WAIT_S).until(ready)


def test_example_click_and_upload_render_k_results(browser, app_url, sample_data):
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(app_url)
    examples = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button.gallery-item"))
    assert len(examples) >= 10                              # test-split images offered as examples
    examples[0].click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pixel-image img"))
    _set_k(browser, 7)
    browser.find_element(By.CSS_SELECTOR, "#pixel-search").click()
    imgs = _rendered_results(browser, 7)
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#pixel-results .caption-label")]
    ranks = [c.lstrip(f"{RIGHT}{WRONG} ").split(" ", 1)[0] for c in captions]   # a test image: marked ✓ / ✗
    assert ranks == [f"#{r}" for r in range(1, 8)] and all(c[0] in (RIGHT, WRONG) for c in captions)
    assert all("/gradio_api/file=" in i.get_attribute("src") for i in imgs)
    assert "7 results in" in browser.find_element(By.CSS_SELECTOR, "#pixel-status").text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app.png"))

    # Upload a file through the page's own file input, pick another metric and k.
    query = scan_split(sample_data, "test")[-1].path(sample_data)
    browser.find_element(By.CSS_SELECTOR, "#pixel-image input[type=file]").send_keys(str(query))
    browser.find_element(By.CSS_SELECTOR, "#pixel-metric input[value=corr]").click()
    _set_k(browser, 3)
    browser.find_element(By.CSS_SELECTOR, "#pixel-search").click()
    _rendered_results(browser, 3)
    wait.until(lambda d: "pixel-corr" in d.find_element(By.CSS_SELECTOR, "#pixel-status").text)
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000
