"""The Compare tab in a real headless Chromium: click an example, see every method's row with its
hits marked, click a result ("more like this") and see the rows change.

The screenshot goes to artifacts/browser/compare.png (beside the app test's app.png).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import ARTIFACTS, chromium, needs_chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from webui.compare import RIGHT, WRONG

MARKS = (RIGHT, WRONG)

WAIT_S = 60

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def browser():
    with chromium(1400, 2400) as driver:
        yield driver


def row_captions(driver, n_rows: int) -> list[list[str]]:
    """Each method row's gallery captions, once every row shows one image per caption and the first
    row's thumbnails are decoded (rows further down load lazily, when scrolled to)."""
    def ready(d):
        rows = []
        for i in range(n_rows):
            imgs = d.find_elements(By.CSS_SELECTOR, f"#compare-results-{i} img")
            caps = [c.text for c in d.find_elements(By.CSS_SELECTOR, f"#compare-results-{i} .caption-label")]
            if not caps or len(imgs) != len(caps):
                return False
            rows.append(caps)
        first = d.find_elements(By.CSS_SELECTOR, "#compare-results-0 img")
        decoded = all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", x) for x in first)
        return rows if decoded else False
    return WebDriverWait(driver, WAIT_S).until(ready)


def open_compare_tab(driver, url: str) -> None:
    driver.get(url)
    wait = WebDriverWait(driver, WAIT_S)
    tab = wait.until(lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == "Compare"])
    tab[0].click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#compare-run").is_displayed())


def run_compare_flow(driver, url: str, methods: list[str], screenshot: Path) -> tuple[list[list[str]], list[list[str]]]:
    """Example click + Compare, then a click on a result; returns the rows' captions before and after."""
    open_compare_tab(driver, url)
    wait = WebDriverWait(driver, WAIT_S)
    examples = wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "#compare-examples button.gallery-item")
                                     if e.is_displayed()])
    examples[0].click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#compare-image img"))
    driver.find_element(By.CSS_SELECTOR, "#compare-run").click()
    # the HNSW family starts folded (its rows repeat the exact ones): unfold it, as a reader would
    driver.execute_script("arguments[0].click()", driver.find_element(By.CSS_SELECTOR, "#compare-family-hnsw .label-wrap"))
    before = row_captions(driver, len(methods))
    wait.until(lambda d: "Query class" in d.find_element(By.CSS_SELECTOR, "#compare-summary").text)
    labels = [driver.find_element(By.CSS_SELECTOR, f"#compare-label-{i}").text for i in range(len(methods))]
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(screenshot))
    # "More like this": click the 3rd result of the last row (a re-ranked method).
    last = len(methods) - 1
    thumbs = driver.find_elements(By.CSS_SELECTOR, f"#compare-results-{last} button.thumbnail-item, "
                                                   f"#compare-results-{last} .thumbnail-item")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", thumbs[2])
    thumbs[2].click()
    WebDriverWait(driver, WAIT_S).until(lambda d: row_captions(d, len(methods)) != before)
    after = row_captions(driver, len(methods))
    driver.save_screenshot(str(screenshot.with_name(screenshot.stem + "-more-like-this.png")))
    return before, after, labels


def test_compare_tab_rows_marked_and_more_like_this(browser, app):
    index, url = app.index, app.url   # conftest's app: the sample effnet index, served
    from webui.compare import Comparer
    methods = Comparer(index).methods
    assert any("+dba+qe" in m for m in methods) and any(m.startswith("pixel-") for m in methods)
    before, after, labels = run_compare_flow(browser, url, methods, ARTIFACTS / "compare.png")
    assert len(before) == len(methods)
    for method, label, caps in zip(methods, labels, before):
        assert method in label and "P@5" in label and "AP" in label
        assert len(caps) == 5 and all(c[0] in MARKS for c in caps), (method, caps)   # every hit marked
    assert any(c.startswith(RIGHT) for caps in before for c in caps)
    assert after != before
    assert all(len(caps) == 5 and all(c[0] in MARKS for c in caps) for caps in after)   # a library image: class known
    assert (ARTIFACTS / "compare.png").stat().st_size > 20_000


def test_one_upload_carries_across_tabs(browser, app, sample_data):
    """A photo uploaded in the Pixel tab is the Compare tab's query too, without a second upload."""
    from retrieval.library import scan_split
    url = app.url
    browser.get(url)
    wait = WebDriverWait(browser, WAIT_S)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#pixel-image input[type=file]"))
    upload.send_keys(str(scan_split(sample_data, "test")[-1].path(sample_data)))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pixel-image img"))
    tab = [b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == "Compare"]
    tab[0].click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#compare-image img"))
    browser.find_element(By.CSS_SELECTOR, "#compare-run").click()
    wait.until(lambda d: "Query class" in d.find_element(By.CSS_SELECTOR, "#compare-summary").text)
