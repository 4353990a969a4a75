"""Each tab as a first-time visitor sees it, in a real headless Chromium at a desktop's 1400×1000 and
a phone's 390×844: one click on a test example per tab (then Search or Compare), a screenshot of
each under artifacts/browser/, and the checks a glance makes. The results are on the first screen,
each framed green or red as its class is the query's or not, nothing is wider than the phone, and
Compare fits in about 2,000 px with its summary on the first screen.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from app_support import frame_mark
from browser_support import ARTIFACTS, chromium, needs_chromium, open_tab, set_viewport
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from webui.results import RIGHT, WRONG
from webui.texts import example_images

WAIT_S = 60
SIZES = [(1400, 1000), (390, 844)]
FIRST_SCREEN = 1000        # px: a 1400×1000 window shows this much without scrolling
COMPARE_MAX_HEIGHT = 2300  # px at k = 5: "about 2,000" (2,150 measured on the sample library)
BUTTONS = {"pixel": "#pixel-search", "deep": "#deep-search", "compare": "#compare-run"}
TABS = {"Pixel metrics": "pixel", "Deep features": "deep", "Compare": "compare", "Evaluation": None,
        "Duplicates": None, "About": None}

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def browser():
    with chromium(1400, 1000) as driver:
        yield driver


def results_box(prefix: str) -> str:
    return f"#{prefix}-results-0" if prefix == "compare" else f"#{prefix}-results"


def search_with_first_example(driver, prefix: str, k: int = 5) -> list:
    """Click the tab's first test example, then its Search (or Compare) button; returns the
    result images once the browser has decoded them."""
    wait = WebDriverWait(driver, WAIT_S)
    examples = wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "button.gallery-item")
                                     if e.is_displayed()])
    examples[0].click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#{prefix}-image img"))
    driver.execute_script("arguments[0].click()", driver.find_element(By.CSS_SELECTOR, BUTTONS[prefix]))

    def decoded(d):
        imgs = d.find_elements(By.CSS_SELECTOR, f"{results_box(prefix)} img")
        done = len(imgs) == k and all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
                                      for i in imgs)
        return imgs if done else False
    return WebDriverWait(driver, WAIT_S).until(decoded)


def page_top(driver, selector: str) -> float:
    """Where an element starts, in page coordinates (0 = the top of the page)."""
    return driver.execute_script("const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                                 "return r.top + window.scrollY;", selector)


def frame_of(img) -> str | None:
    """The colour of a result image's frame as the browser received it: "right", "wrong" or None."""
    pixels = np.asarray(Image.open(io.BytesIO(requests.get(img.get_attribute("src"), timeout=10).content))
                        .convert("RGB"))
    marks = {frame_mark(pixels[2, 2]), frame_mark(pixels[-3, -3])}
    return marks.pop() if len(marks) == 1 else None


def test_pixel_results_framed_by_class_on_the_first_screen(browser, app):
    """One click on a test example and Search: the first result's frame is green exactly when its
    class is the query's (the example's test-split folder), and the results start on the first screen."""
    index, url = app.index, app.url   # conftest's app: the sample effnet index, served
    query_class = example_images(index).paths[0].split("/")[-2]
    set_viewport(browser, 1400, 1000)
    browser.get(url)
    imgs = search_with_first_example(browser, "pixel")
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#pixel-results .caption-label")]
    assert len(captions) == 5 and captions[0][2:].startswith("#1 ")
    for img, caption in zip(imgs, captions):
        result_class = caption.split(" · ")[0].split(" ", 2)[2]   # "✓ #1 bird · Δ40/255"
        right = result_class == query_class
        assert frame_of(img) == ("right" if right else "wrong"), (caption, query_class)
        assert caption.startswith(RIGHT if right else WRONG)
    assert page_top(browser, "#pixel-results") < FIRST_SCREEN
    status = browser.find_element(By.CSS_SELECTOR, "#pixel-status").text
    assert f"query class {query_class}" in status and "P@5" in status


@pytest.mark.parametrize("width,height", SIZES, ids=["desktop", "phone"])
def test_each_tab_after_one_example(browser, app, width, height):
    """Every tab at both sizes, after one click on a test example where the tab takes a query: a
    screenshot to look at, the results shown, nothing wider than the screen, and on a desktop the
    results (Compare: its summary) on the first screen and Compare in about 2,000 px."""
    url = app.url
    set_viewport(browser, width, height)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for title, prefix in TABS.items():
        browser.get(url)
        open_tab(browser, title)
        if prefix:
            search_with_first_example(browser, prefix)
            browser.execute_script("window.scrollTo(0, 0)")
        elif title == "Duplicates":   # one click on its button: the groups of the sample library
            browser.execute_script("arguments[0].click()", browser.find_element(By.CSS_SELECTOR, "#dup-find"))
            WebDriverWait(browser, WAIT_S).until(lambda d: "group" in d.find_element(By.CSS_SELECTOR, "#dup-summary").text)
        else:
            WebDriverWait(browser, WAIT_S).until(lambda d: any(
                e.is_displayed() for e in d.find_elements(By.CSS_SELECTOR, "#eval-winner, .prose h3")))
        browser.save_screenshot(str(ARTIFACTS / f"{title.split()[0].lower()}-{width}x{height}.png"))
        wide = browser.execute_script("return document.documentElement.scrollWidth")
        assert wide <= width, f"{title} at {width}×{height} is {wide} px wide: something is cut off"
        if prefix and width >= 1000:
            shown = "#compare-table" if prefix == "compare" else results_box(prefix)
            assert page_top(browser, shown) < FIRST_SCREEN, title
        if prefix == "compare" and width >= 1000:
            tall = browser.execute_script("return document.documentElement.scrollHeight")
            print(f"Compare page height at k=5, {width}×{height}: {tall} px")
            assert tall <= COMPARE_MAX_HEIGHT
