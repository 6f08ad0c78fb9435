"""A real browser against a real cluster: headless Chromium (driven by Selenium) loads a page
whose script fetches in parallel over the connections Chromium keeps alive, reads a streamed
response, posts JSON and gets a 404 (tests/apps/browser.py). Skipped where Chromium and its
driver are not installed (``apt install chromium chromium-driver``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.apps.browser import CHUNKS
from tests.conftest import StartCluster

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402 - after the skip check

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                    reason="needs Chromium and ChromeDriver (apt install chromium chromium-driver)")
def test_a_browser_page_fetches_streams_and_posts_through_the_cluster(
        start_cluster: StartCluster, tmp_path: Path) -> None:
    cluster = start_cluster("tests.apps.browser", workers=2)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(DRIVER)))
    try:
        browser.set_page_load_timeout(30)
        browser.get(f"http://{cluster.host}:{cluster.port}/")
        text = WebDriverWait(browser, 30).until(
            lambda driver: (out := driver.find_element("id", "out").text) != "pending" and out)
    finally:
        browser.quit()
    seen = json.loads(text)

    assert "error" not in seen, seen
    assert seen["pids"] == sorted(cluster.worker_pids())  # the connections reached both
    assert "".join(seen["chunks"]) == "".join(f"chunk {number};" for number in range(CHUNKS))
    assert seen["encoding"] == "chunked"
    assert seen["echo"] == {"text": "héllo ✓", "n": 42}
    assert seen["missing"] == 404
    assert "Traceback" not in cluster.log()
