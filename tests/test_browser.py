"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, Selenium):
start `streamlit run dashboard/Home.py` on 127.0.0.1, open every page, upload a real Stable
Diffusion face and see a prediction and its heatmap appear, switch the attribution method on
the Upload and Saliency pages, open a face's drill-down from the Saliency browser, hover an
embedding point and see its face. Screenshots of each page go to the ignored screenshots/."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from fer_core.config import load_config
from fer_core.data import open_dataset
from fer_core.models import load_model
from fer_core.workflows import evaluate_model
from tests.conftest import IN_CI, REPO

SCREENSHOTS = REPO / "screenshots"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(project, tiny_model, face_model_path):
    config = project / "configs" / "browser.yaml"
    config.write_text((REPO / "configs" / "config.yaml").read_text()
                      .replace("  weights_path: null", f"  weights_path: {tiny_model}")
                      .replace("  mediapipe_model: null", f"  mediapipe_model: {face_model_path}"))
    loaded = load_config(config)
    evaluate_model(loaded, load_model(tiny_model), open_dataset("ferplus:test", loaded.resolve(loaded.data.root)),
                   name="browser-eval", limit=150, n_bootstrap=100, progress=False)
    port = free_port()
    env = {**os.environ, "FER_CORE_CONFIG": str(config)}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "Home.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"streamlit did not start: {process.stdout.read().decode()[-2000:]}")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1600",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, css: str, text: str | None = None, timeout: float = 120):
    """The element ``css`` (holding ``text``); on a time-out, fail with what the page shows
    (its text, and a screenshot in screenshots/timeout.png)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    wait = WebDriverWait(driver, timeout)
    try:
        if text is None:
            return wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))
        return wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
    except TimeoutException:
        shoot(driver, "timeout")
        shown = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"{driver.current_url}: no {css!r} {text or ''} within {timeout:.0f} s; the page shows:\n{shown}")


def shoot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    time.sleep(1.0)  # let charts finish their transitions
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


#: Every page: its URL path, its title and an element that shows it rendered its content.
PAGES = (
    ("", "Facial emotion recognition", "[data-testid='stMetric']"),
    ("/baseline_metrics", "Baseline metrics", "[data-testid='stPlotlyChart']"),
    ("/confusion", "Confusion", "[data-testid='stImage'] img"),
    ("/saliency", "Saliency browser", "[data-testid='stImage'] img"),
    ("/embeddings", "Embeddings", "[data-testid='stPlotlyChart']"),
    ("/cross_domain", "Cross-domain", "[data-testid='stPlotlyChart']"),
    ("/upload", "Upload a photo", "input[type='file']"),
    ("/synthetic", "Synthetic data", "[data-testid='stCode']"),
    ("/runs", "Runs", "[data-testid='stDataFrame']"),
)


@pytest.mark.slow
def test_every_page_renders(server, browser):
    for path, title, content in PAGES:
        browser.get(server + path)
        wait_for(browser, "h1", title)
        wait_for(browser, content)
        assert not browser.find_elements("css selector", "[data-testid='stException']"), path
        shoot(browser, path.strip("/") or "home")


def choose(driver, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` (Streamlit's baseweb select)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def labelled(d):
        return next((b for b in d.find_elements(By.CSS_SELECTOR, "[data-testid='stSelectbox']") if label in b.text),
                    False)
    box = WebDriverWait(driver, 60).until(labelled)
    field = box.find_element(By.CSS_SELECTOR, "input")
    field.click()
    field.send_keys(option)
    field.send_keys(Keys.ENTER)


@pytest.mark.slow
def test_upload_a_face_see_its_prediction_and_switch_the_method(server, browser, synthetic_root):
    browser.get(server + "/upload")
    wait_for(browser, "h1", "Upload a photo")
    wait_for(browser, "input[type='file']")
    face = synthetic_root / "happy" / "happy_001.jpg"
    browser.find_element("css selector", "input[type='file']").send_keys(str(face))
    wait_for(browser, "[data-testid='stPlotlyChart']")
    wait_for(browser, "[data-testid='stMain']", "face 1 (aligned)")
    wait_for(browser, "[data-testid='stMain']", "gradcam map of")
    assert len(browser.find_elements("css selector", "[data-testid='stImage'] img")) >= 3  # photo, crop, heatmap
    shoot(browser, "upload_prediction")
    choose(browser, "Attribution method", "integrated_gradients")
    wait_for(browser, "[data-testid='stMain']", "integrated_gradients map of")
    shoot(browser, "upload_integrated_gradients")


@pytest.mark.slow
def test_switch_the_saliency_method(server, browser):
    browser.get(server + "/saliency")
    wait_for(browser, "h1", "Saliency browser")
    wait_for(browser, "[data-testid='stMain']", "Mean gradcam map of Happiness")
    choose(browser, "Method", "smoothgrad")
    wait_for(browser, "[data-testid='stMain']", "Mean smoothgrad map of Happiness")
    assert not browser.find_elements("css selector", "[data-testid='stException']")
    shoot(browser, "saliency_smoothgrad")
    # a face's drill-down: every method for its predicted class, its probabilities, its neighbours
    details = next(b for b in browser.find_elements("css selector", "[data-testid='stMain'] button")
                   if "Details" in b.text)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", details)
    details.click()
    wait_for(browser, "[role='dialog']", "Every method")
    wait_for(browser, "[role='dialog']", "Nearest synthetic faces")
    dialog = browser.find_element("css selector", "[role='dialog']")
    assert len(dialog.find_elements("css selector", "[data-testid='stImage'] img")) >= 2 + 7 + 8  # photo, crop, maps
    shoot(browser, "saliency_drilldown")


@pytest.mark.slow
def test_hover_an_embedding_point_to_see_its_face(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    browser.get(server + "/embeddings")
    wait_for(browser, "h1", "Embeddings")
    plot = wait_for(browser, ".js-plotly-plot")
    wait_for(browser, "[data-testid='stMain']", "Hover a point to see its face")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
    # where the first synthetic point is drawn, from the chart's own axes
    x, y, width, height = browser.execute_script(
        "const plot = arguments[0], trace = plot._fullData[1], layout = plot._fullLayout;"
        "const box = plot.getBoundingClientRect();"
        "return [layout.xaxis.l2p(trace.x[0]) + layout._size.l, layout.yaxis.l2p(trace.y[0]) + layout._size.t,"
        "        box.width, box.height];", plot)
    face = wait_for(browser, "#fer-hover-face", timeout=30)
    for _ in range(100):  # the page script listens to the chart's hover events once it has found the chart
        if browser.execute_script("return arguments[0].ferHoverFaces === true", plot):
            break
        time.sleep(0.1)
    to_point = (int(x - width / 2), int(y - height / 2))
    ActionChains(browser).move_to_element_with_offset(plot, to_point[0] - 30, to_point[1] - 30).perform()
    ActionChains(browser).move_to_element_with_offset(plot, *to_point).perform()
    for _ in range(50):  # the picture shows on the hover event
        if face.is_displayed():
            break
        time.sleep(0.1)
    assert face.is_displayed() and face.get_attribute("src").startswith("data:image/jpeg;base64,")
    shoot(browser, "embeddings_hover")
