"""The web page `duet serve` shows at /, driven in a real browser (Debian's chromium
through Selenium and /usr/bin/chromedriver; .ci/run installs them).

A real server on 127.0.0.1 serves the small export; the browser loads the page,
uploads a validation image through the file input and reads the predicted label,
which must be the one `duet predict` gives for the same file. With an API key the
page must load without it, show the 401 and then succeed once the key is typed in,
and leave no trace of the key in any storage.

``DUET_UPDATE_SCREENSHOT=1`` also writes the screenshot to docs/img/serve-page-test.png
(docs/img/serve-page.png, in docs/serving.md, is the demo model's page, taken by hand).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import run_cli
from serve_support import Server, running_server, val_files

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "serve-page-test.png"
KEY = "page-test-key-0123456789abcdef"
WAIT_S = 20


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless chromium at 1280x800 with a fresh profile; nothing is downloaded
    (the driver path is given, so Selenium Manager never runs)."""
    if not CHROMEDRIVER.is_file():
        pytest.skip("no /usr/bin/chromedriver: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    viewport(driver, 1280, 800)
    try:
        yield driver
    finally:
        driver.quit()


def viewport(driver: Any, width: int, height: int, *, mobile: bool = False) -> None:
    """The page's viewport exactly (window-size would include the browser's own frame)."""
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def wait_for(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def upload(driver: Any, image: Path) -> None:
    """Pick ``image`` with the page's file input, as a user's file dialog would."""
    driver.find_element("id", "file").send_keys(str(image))


DROP_JS = """
const [name, b64] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, {type: "image/png"}));
const zone = document.getElementById("drop");
for (const type of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
}
"""


def drop(driver: Any, image: Path) -> None:
    """Drop ``image`` on the page's drop zone: the drag events a desktop drag delivers
    (WebDriver cannot drag a file from outside the browser)."""
    driver.execute_script(DROP_JS, image.name, base64.b64encode(image.read_bytes()).decode())


def wait_for_prediction(driver: Any) -> str:
    """The top-1 label, once the answer is on screen (the page empties it while it waits)."""
    wait_for(
        driver,
        lambda d: d.find_element("id", "result").is_displayed() and text_of(d, "top1-label"),
        "the prediction",
    )
    return text_of(driver, "top1-label")


def send_directly(url: str, images: list[Path]) -> None:
    """One multipart request with ``images`` (traffic the drift window counts)."""
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in images]
    answer = httpx.post(url + "/v1/predict", files=files, timeout=30)
    assert answer.status_code == 200, answer.text


def cli_top1(run: Path, image: Path) -> tuple[str, float]:
    proc = run_cli("predict", str(run), str(image), "--format", "onnx", "--json", "-k", "1")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.splitlines()[0])  # one file: one JSON object
    top = (answer[0] if isinstance(answer, list) else answer)["top"][0]
    return str(top["label"]), float(top["probability"])


@pytest.fixture(scope="module")
def served(small_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server, no API key, a drift verdict every second, for the page tests below."""
    with running_server(small_export, tmp_path_factory.mktemp("page-serve"), "--drift-interval", "1") as server:
        yield server


@pytest.fixture
def page(browser: Any, served: Server) -> Any:
    """The browser on a freshly loaded page, once /v1/card has filled it in."""
    browser.get(served.url + "/")
    wait_for(browser, lambda d: text_of(d, "model-title") == "digits", "the model name from /v1/card")
    return browser


def window_count(driver: Any) -> int | None:
    """Images in the drift window, as the page shows it (None before the first verdict)."""
    match = re.fullmatch(r"(\d+) / 500 images", text_of(driver, "drift-fill"))
    return int(match.group(1)) if match else None


@pytest.mark.e2e
def test_the_card_route_describes_the_served_model(served: Server, small_export: Path) -> None:
    info = httpx.get(served.url + "/v1/card", timeout=10).json()
    assert info["labels"] == ["0", "1", "7"] and info["image_size"] == 24 and info["version"] == "1"
    assert info["drift"] == {"on": True, "window": 500, "interval": 1.0}
    assert info["card"] == (small_export / "MODEL_CARD.md").read_text()


@pytest.mark.e2e
def test_the_page_shows_the_model_and_its_card_and_loads_nothing_from_outside(page: Any, served: Server) -> None:
    assert text_of(page, "model-version") == "v1"
    card = text_of(page, "card-text")
    assert "Model card: digits" in card and "Intended use" in card
    assert page.find_elements("css selector", "#card-text table")  # the card's tables are tables
    facts = text_of(page, "facts")
    assert "resnet18" in facts and "24 × 24" in facts and "0, 1, 7" in facts
    links = {a.text: a.get_attribute("href") for a in page.find_elements("css selector", "nav a")}
    assert links["API docs"] == served.url + "/docs" and links["Metrics"] == served.url + "/metrics"

    urls = page.execute_script(
        "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name))"
    )
    assert len(urls) >= 4 and all(u.startswith(served.url + "/") for u in urls), urls
    # what the page's CSP blocked leaves no resource entry, only a console error
    blocked = [e["message"] for e in page.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not blocked, blocked


@pytest.mark.e2e
def test_a_picked_image_gets_the_label_and_probability_duet_predict_gives(page: Any, small_run: Path) -> None:
    image = val_files(small_run)[0][0]
    upload(page, image)
    label = wait_for_prediction(page)
    cli_label, cli_probability = cli_top1(small_run, image)
    assert label == cli_label
    assert text_of(page, "top1-prob") == f"{100 * cli_probability:.1f} %"
    assert len(page.find_elements("css selector", "#bars li")) == 3  # top-k capped at the 3 labels
    assert "Round trip" in text_of(page, "latency") and image.name in text_of(page, "latency")


@pytest.mark.e2e
def test_a_dropped_image_gets_the_label_duet_predict_gives(page: Any, small_run: Path) -> None:
    image = val_files(small_run)[2][0]
    drop(page, image)
    wait_for(page, lambda d: image.name in text_of(d, "latency"), "the dropped image's answer")
    assert wait_for_prediction(page) == cli_top1(small_run, image)[0]


@pytest.mark.e2e
def test_the_drift_panel_follows_the_window_to_a_verdict(
    page: Any, served: Server, small_run: Path, tmp_path: Path
) -> None:
    wait_for(page, lambda d: window_count(d) is not None, "the first drift verdict on the page")
    before = window_count(page)
    assert before is not None
    if before < 30:  # each detector needs 30 images
        assert text_of(page, "drift-verdict") == "Warming up"
    images = [f for f, _ in val_files(small_run)] * 2
    send_directly(served.url, images)
    # the panel asks again by itself: no reload
    wait_for(page, lambda d: (window_count(d) or 0) >= before + len(images), "the drift window to fill")
    wait_for(page, lambda d: text_of(d, "drift-verdict") in ("No drift", "Drift detected"), "a verdict")
    confidence = page.find_element("xpath", "//table[@id='drift-detectors']//tr[td[1]='confidence']")
    assert confidence.text.startswith("confidence KS D 0.") and not confidence.text.endswith("skipped")
    save_screenshot(page, val_files(small_run)[0][0], tmp_path)


@pytest.mark.e2e
def test_a_refused_image_shows_the_server_error_as_text(page: Any, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"<b>not a png</b>")
    upload(page, bad)
    wait_for(page, lambda d: d.find_element("id", "predict-message").is_displayed(), "the error message")
    message = text_of(page, "predict-message")
    assert "400" in message and "broken.png" in message
    assert not page.find_elements("css selector", "#predict-message *")  # text, no markup
    assert not page.find_element("id", "result").is_displayed()


@pytest.mark.e2e
def test_every_input_has_a_label_and_the_file_picker_is_reached_with_tab(page: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    unlabelled = page.execute_script(
        "return [...document.querySelectorAll('input')].filter(i => i.labels.length === 0).map(i => i.id)"
    )
    assert unlabelled == []
    reached = []
    for _ in range(8):  # the header's links first, then the drop zone's file input
        ActionChains(page).send_keys(Keys.TAB).perform()
        reached.append(page.execute_script("return document.activeElement.id || document.activeElement.textContent"))
    assert "file" in reached and "top-k" in reached, reached
    assert reached.index("file") < reached.index("top-k")


@pytest.mark.e2e
def test_the_page_fits_a_phone_width(page: Any) -> None:
    viewport(page, 390, 844, mobile=True)
    try:
        widths = page.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1] == 390, widths  # one column, nothing scrolls sideways
    finally:
        viewport(page, 1280, 800)


def test_the_card_is_shown_only_while_it_matches_model_json(tmp_path: Path) -> None:
    """read_card: the served folder's MODEL_CARD.md, None without one or once it changed."""
    from duet.artifacts.model_package import ModelPackage, sha256_file
    from duet.serve.page import read_card

    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Model card: x\n")
    listed = ModelPackage(tmp_path, {"files": {"MODEL_CARD.md": {"sha256": sha256_file(card)}}})
    assert read_card(listed) == "# Model card: x\n"
    assert read_card(ModelPackage(tmp_path, {"files": {}})) is None  # an export without a card
    card.write_text("# Model card: changed after export\n")
    assert read_card(listed) is None


def test_the_page_files_name_nothing_outside_the_server() -> None:
    """No absolute URL in the shipped page (src, href, fetch, CSS url() or @import), and every
    file the HTML loads is one the server serves."""
    from duet.serve.page import ASSETS, HERE

    served = {name for name, _ in ASSETS.values()}
    assert {p.name for p in HERE.iterdir() if p.suffix in (".html", ".js", ".css")} == served
    for name in served:
        text = (HERE / name).read_text()
        assert not re.search(r"(https?:)?//[\w.-]+\.\w", text.replace("// ", "")), name
        assert "@import" not in text, name
        # text goes in with textContent; the key goes nowhere but a variable
        assert not re.search(r"\.(inner|outer)HTML\b|(local|session)Storage\.|document\.cookie", text), name
    loaded = re.findall(r'(?:src|href)="([^"]+)"', (HERE / "index.html").read_text())
    assert sorted(loaded) == ["data:,", "docs", "metrics", "openapi.json", "page/page.css", "page/page.js"]


def save_screenshot(driver: Any, image: Path, tmp_path: Path) -> None:
    """The page with a prediction on screen, to tmp_path (and docs/img on request)."""
    upload(driver, image)
    wait_for_prediction(driver)
    shot = tmp_path / "serve-page.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("DUET_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)


@pytest.mark.e2e
def test_with_an_api_key_the_page_asks_for_it_and_keeps_it_in_memory_only_and_drift_off_says_so(
    browser: Any, small_run: Path, small_export: Path, tmp_path: Path
) -> None:
    image = val_files(small_run)[1][0]
    # --no-drift too: the drift panel must then say that monitoring is off
    with running_server(small_export, tmp_path, "--no-drift", env={"DUET_API_KEY": KEY}) as server:
        for path in ("/", "/page/page.js", "/page/page.css"):  # the page's own files are open
            assert httpx.get(server.url + path, timeout=10).status_code == 200, path
        for path in ("/v1/card", "/v1/monitor", "/metrics"):  # what it fetches is not
            assert httpx.get(server.url + path, timeout=10).status_code == 401, path
        with image.open("rb") as f:
            assert httpx.post(server.url + "/v1/predict", files={"file": f}, timeout=10).status_code == 401

        browser.get(server.url + "/")
        wait_for(browser, lambda d: d.find_element("id", "auth").is_displayed(), "the API key form")
        assert "needs an API key" in text_of(browser, "auth-message")
        upload(browser, image)
        wait_for(browser, lambda d: d.find_element("id", "predict-message").is_displayed(), "the 401 message")
        assert "Not authorised (401)" in text_of(browser, "predict-message")

        browser.find_element("id", "api-key").send_keys(KEY)
        browser.find_element("id", "api-key-use").click()
        wait_for(browser, lambda d: text_of(d, "model-title") == "digits", "the card, with the key")
        wait_for(browser, lambda d: text_of(d, "drift-verdict") == "Drift monitoring is off", "the drift panel")
        assert "--no-drift" in text_of(browser, "drift-sentence")
        assert not browser.find_element("id", "drift-detectors").is_displayed()
        upload(browser, image)
        assert wait_for_prediction(browser) == cli_top1(small_run, image)[0]
        assert not browser.find_element("id", "predict-message").is_displayed()

        stored = browser.execute_script(
            "return [localStorage.length, sessionStorage.length, document.cookie, location.href,"
            " document.getElementById('api-key').value]"
        )
        assert stored == [0, 0, "", server.url + "/", ""]
        assert KEY not in browser.page_source
