"""featlift demo in a real browser: headless Chromium (Debian's chromium package) driven by Selenium with
chromium-driver. Uploads the example picture, waits for both PCA pictures, clicks a pixel, waits for the
similarity maps and saves a screenshot (also to $FEATLIFT_DEMO_SCREENSHOT when set, e.g. docs/demo.png).

Runs in the default suite; skipped only where /usr/bin/chromium or /usr/bin/chromedriver is missing
(CI installs them: see .ci/run).
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featlift.demo import DemoEngine
from featlift.demo._pictures import example_images

from .test_demo import launched, tiny_upsampler

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),  # gradio 6 with pandas 3, not featlift
    pytest.mark.skipif(
        not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    pytest.importorskip("gradio", reason='gradio is not installed (pip install "featlift[demo]")')
    from featlift.demo import build_app

    app = build_app(tiny_upsampler(), folder=tmp_path_factory.mktemp("gradio"))
    with launched(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _image_src(driver, elem_id: str) -> str | None:
    return driver.execute_script(
        "const img = document.querySelector(arguments[0]); return img && img.complete && img.naturalWidth ? img.src : null;",
        f"#{elem_id} img",
    )


def _wait_for_pictures(driver, ids: list[str], before: dict[str, str | None], timeout: float = 60) -> dict[str, str]:
    """Wait until every picture in ``ids`` shows a loaded image other than the one in ``before``."""
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        srcs = {i: _image_src(d, i) for i in ids}
        return srcs if all(s and s != before.get(i) for i, s in srcs.items()) else False

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(ready, f"pictures {ids} did not appear")


def _upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(path))


def _toasts(driver) -> str:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.toast-body, [data-testid=\"toast-body\"]'))"
        ".map(e => e.innerText).join('\\n');"
    )


def _open(browser, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return !!document.querySelector('#photo input[type=file]');")
    )


def test_upload_click_and_screenshot(page_url, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "garden.png"
    example_images()["garden"].save(photo)
    _open(browser, page_url)
    _upload(browser, photo)
    pca_ids = ["bilinear-pca", "featlift-pca"]
    pictures = _wait_for_pictures(browser, pca_ids, {})
    status = browser.find_element(By.ID, "status").text
    assert "[1, 6, 336, 448]" in status and "peak memory" in status, status

    # Click a pixel of featlift's picture: 3/4 across, 1/3 down.
    img = browser.find_element(By.CSS_SELECTOR, "#featlift-pca img")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", img)
    width, height = img.size["width"], img.size["height"]
    natural = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight];", img)
    assert natural == [448, 336]
    # The picture is drawn scaled to fit the element's box (object-fit: contain), centred.
    scale = max(natural[0] / width, natural[1] / height)
    shown_w, shown_h = natural[0] / scale, natural[1] / scale
    dx, dy = round((width - shown_w) / 2 + shown_w * 0.75), round((height - shown_h) / 2 + shown_h / 3)
    ActionChains(browser).move_to_element_with_offset(img, dx - width // 2, dy - height // 2).click().perform()
    sims = _wait_for_pictures(browser, ["bilinear-sim", "featlift-sim"], {})
    text = WebDriverWait(browser, 30).until(
        lambda d: (
            d.find_element(By.ID, "similarity-status").text
            if "x=" in d.find_element(By.ID, "similarity-status").text
            else False
        )
    )
    x, y = (int(v) for v in re.search(r"x=(\d+), y=(\d+)", text).groups())
    assert abs(x - 448 * 0.75) <= 4 and abs(y - 336 / 3) <= 4, text
    assert set(sims.values()).isdisjoint(pictures.values())
    # What the page shows is what the engine computes for that pixel.
    import httpx

    engine = DemoEngine(tiny_upsampler())
    expected = engine.similarity(engine.upsample(photo).token, x, y)
    for elem_id, picture in (("bilinear-sim", expected[0]), ("featlift-sim", expected[1])):
        shown = httpx.get(sims[elem_id], timeout=30)
        assert shown.status_code == 200
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(shown.content)).convert("RGB")), picture), elem_id

    # The whole page in one screenshot (Chrome DevTools: beyond the window's viewport).
    browser.execute_script("window.scrollTo(0, 0);")
    width, page_height = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];"
    )
    clip = {"x": 0, "y": 0, "width": width, "height": page_height, "scale": 1}
    data = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    shot = tmp_path / "demo.png"
    shot.write_bytes(base64.b64decode(data["data"]))
    with Image.open(shot) as image:
        assert image.size == (width, page_height)
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10
    if os.environ.get("FEATLIFT_DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["FEATLIFT_DEMO_SCREENSHOT"])


def test_files_that_are_not_pictures_get_a_message_on_the_page_then_an_example_works(page_url, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1280, 1400)
    # Named like a picture, so the page uploads it: the server reads it and says what is wrong.
    fake = tmp_path / "holiday.png"
    fake.write_text("these are not pixels")
    _open(browser, page_url)
    _upload(browser, fake)
    message = WebDriverWait(browser, 30).until(lambda d: _toasts(d) or False)
    assert "'holiday.png' is not a picture" in message, message
    # Named as text: the page itself refuses it, naming the file.
    text = tmp_path / "notes.txt"
    text.write_text("these are not pixels either")
    _open(browser, page_url)
    _upload(browser, text)
    message = WebDriverWait(browser, 30).until(lambda d: _toasts(d) or False)
    assert "notes.txt" in message, message
    # The server keeps serving: pick an example picture on the page.
    from selenium.webdriver.common.by import By

    _open(browser, page_url)
    buttons = browser.find_elements(By.CSS_SELECTOR, "#examples button")
    names = [b.find_element(By.TAG_NAME, "img").get_attribute("src").rsplit("/", 1)[-1] for b in buttons]
    assert names == ["garden.png", "table.png", "shapes.png"]
    buttons[2].click()
    _wait_for_pictures(browser, ["bilinear-pca", "featlift-pca"], {})
    status = browser.find_element(By.ID, "status").text
    assert "[1, 6, 320, 480]" in status, status
