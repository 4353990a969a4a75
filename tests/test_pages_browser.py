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


def no_overflow(driver, width: int, what: str) -> None:
    wide = driver.execute_script("return document.documentElement.scrollWidth")
    assert wide <= width, f"{what} at {width} px is {wide} px wide: something is cut off"


def shown_image(driver, css: str):
    """The image under `css` once it is displayed and decoded, else False (for WebDriverWait)."""
    imgs = [i for i in driver.find_elements(By.CSS_SELECTOR, f"{css} img") if i.is_displayed()]
    ok = imgs and driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", imgs[0])
    return imgs[0] if ok else False


def click(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click()", element)


def explain_first_result(driver, width: int, height: int) -> None:
    """Deep tab: one example, Search, a click on result #1: its explanation figure and formula."""
    open_tab(driver, "Deep features")
    search_with_first_example(driver, "deep")
    click(driver, driver.find_elements(By.CSS_SELECTOR, "#deep-results .thumbnail-item")[0])
    figure = WebDriverWait(driver, WAIT_S).until(lambda d: shown_image(d, "#deep-explain"))
    WebDriverWait(driver, WAIT_S).until(lambda d: "```" not in d.find_element(By.CSS_SELECTOR, "#deep-explain-text").text
                                        and "matched" in d.find_element(By.CSS_SELECTOR, "#deep-explain-text").text)
    top = page_top(driver, "#deep-explain")
    print(f"explanation at {width}×{height}: top {top:.0f} px, figure {figure.size}")
    if width >= 1000:
        assert top < FIRST_SCREEN   # the answer to the click on the first screen
        driver.execute_script("window.scrollTo(0, 0)")
    else:
        driver.execute_script("document.querySelector('#deep-results').scrollIntoView()")
    assert figure.is_displayed() and figure.size["width"] <= width
    driver.save_screenshot(str(ARTIFACTS / f"explain-{width}x{height}.png"))
    no_overflow(driver, width, "the explanation")


def refine_once(driver, width: int, height: int) -> None:
    """Mark each result right or wrong as its frame says, press Refine: round 1, new results."""
    captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#deep-results .caption-label")]
    right = [c.startswith(RIGHT) for c in captions]
    for i, ok in enumerate(right):
        box = driver.find_elements(By.CSS_SELECTOR, f"#deep-{'right' if ok else 'wrong'} input[type=checkbox]")[i]
        click(driver, box)
    click(driver, driver.find_element(By.CSS_SELECTOR, "#deep-refine"))
    line = f"Round 1 · {sum(right)} right, {len(right) - sum(right)} wrong marked"
    WebDriverWait(driver, WAIT_S).until(lambda d: line in d.find_element(By.CSS_SELECTOR, "#deep-refine-line").text)
    WebDriverWait(driver, WAIT_S).until(lambda d: "refined by" in d.find_element(By.CSS_SELECTOR, "#deep-status").text)
    assert not [e for e in driver.find_elements(By.CSS_SELECTOR, "#deep-explain") if e.is_displayed()]   # gone
    if width >= 1000:
        driver.execute_script("window.scrollTo(0, 0)")
        assert page_top(driver, "#deep-refine-line") < FIRST_SCREEN
    else:
        driver.execute_script("document.querySelector('#deep-results').scrollIntoView()")
    driver.save_screenshot(str(ARTIFACTS / f"refine-{width}x{height}.png"))
    no_overflow(driver, width, "the refined results")


def map_click_and_place(driver, index, width: int, height: int) -> None:
    """Map tab: the map drawn on opening; a click on a dot shows that image; a placed example."""
    from selenium.webdriver.common.action_chains import ActionChains
    from webui.map_tab import MapView
    open_tab(driver, "Map")
    figure = WebDriverWait(driver, WAIT_S).until(lambda d: shown_image(d, "#map-figure"))
    if width >= 1000:   # a click on dot 7 of the deep panel, scaled to the figure as shown
        geometry = MapView(index).base()[2]
        x, y = geometry.panels[1].points[7]
        scale = figure.size["width"] / geometry.size[0]
        ActionChains(driver).move_to_element_with_offset(figure, x * scale - figure.size["width"] / 2,
                                                         y * scale - figure.size["height"] / 2).click().perform()
        WebDriverWait(driver, WAIT_S).until(lambda d: index.rels[7] in d.find_element(By.CSS_SELECTOR, "#map-point-text").text)
    examples = [e for e in driver.find_elements(By.CSS_SELECTOR, "#map-examples button.gallery-item") if e.is_displayed()]
    click(driver, examples[0])
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#map-image img"))
    click(driver, driver.find_element(By.CSS_SELECTOR, "#map-place"))
    WebDriverWait(driver, WAIT_S).until(lambda d: "star is your query" in d.find_element(By.CSS_SELECTOR, "#map-text").text)
    WebDriverWait(driver, WAIT_S).until(lambda d: shown_image(d, "#map-figure"))
    driver.execute_script("window.scrollTo(0, 0)" if width >= 1000 else
                          "document.querySelector('#map-figure').scrollIntoView()")
    if width >= 1000:
        assert page_top(driver, "#map-figure") + 200 < FIRST_SCREEN
    driver.save_screenshot(str(ARTIFACTS / f"map-{width}x{height}.png"))
    no_overflow(driver, width, "the map")


@pytest.mark.parametrize("width,height", SIZES, ids=["desktop", "phone"])
def test_why_refine_and_map(browser, app, width, height):
    """The three views of issue 22 as a visitor meets them: click result #1 on the Deep tab and see
    why it matched; mark the results and Refine; open the Map, click a dot, place an example."""
    set_viewport(browser, width, height)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get(app.url)
    explain_first_result(browser, width, height)
    refine_once(browser, width, height)
    browser.get(app.url)
    map_click_and_place(browser, app.index, width, height)
