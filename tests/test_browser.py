"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, Selenium):
start `streamlit run dashboard/Home.py` on 127.0.0.1, open every page, upload a real Stable
Diffusion face and see a prediction and its heatmap appear, switch the attribution method on
the Upload and Saliency pages, open a face's drill-down from the Saliency browser, the Confusion
page and the Embeddings page (a click on a point, after hovering it and seeing its face), compare
two models on the Saliency browser while a sanity job started from its button runs to its
verdict. Screenshots of each page go to the ignored screenshots/."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fer_core.config import load_config
from fer_core.data import open_dataset
from fer_core.explain import load_quality
from fer_core.models import load_model
from fer_core.runs import Run
from fer_core.workflows import evaluate_model
from tests.conftest import IN_CI, REPO
from tests.test_dashboard import perturbed_copy

SCREENSHOTS = REPO / "screenshots"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
#: The second model in the pages' model boxes: a run folder of the server's runs (its label).
SECOND = "second"
#: The server's evaluation run (the Confusion page's faces).
EVALUATION = "browser-eval"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_config(project, tiny_model, face_model_path) -> Path:
    """The server's config: the tiny model and the session's data, with runs and a result cache of
    its own (the sanity job it starts and the check that job stores stay out of the other dashboard
    tests' project); in its runs, an evaluation on 150 FER+ test faces and a second model (the tiny
    one with a perturbed classifier)."""
    path = project / "configs" / "browser.yaml"
    path.write_text((REPO / "configs" / "config.yaml").read_text()
                    .replace("  weights_path: null", f"  weights_path: {tiny_model}")
                    .replace("  mediapipe_model: null", f"  mediapipe_model: {face_model_path}")
                    .replace("  cache_dir: cache", "  cache_dir: browser-cache")
                    .replace("  runs_dir: runs", "  runs_dir: browser-runs"))
    loaded = load_config(path)
    evaluate_model(loaded, load_model(tiny_model), open_dataset("ferplus:test", loaded.resolve(loaded.data.root)),
                   name=EVALUATION, limit=150, n_bootstrap=100, progress=False)
    perturbed_copy(tiny_model, loaded.resolve(loaded.paths.runs_dir) / SECOND / "best.safetensors")
    return path


@pytest.fixture(scope="module")
def server(browser_config):
    port = free_port()
    env = {**os.environ, "FER_CORE_CONFIG": str(browser_config)}
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


def until(driver, condition, what: str, timeout: float = 120):
    """The first truthy value of ``condition(driver)``, polled; on a time-out, fail saying ``what``
    was awaited and what the page shows (its text, and a screenshot in screenshots/timeout.png)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(driver, timeout).until(condition)
    except TimeoutException:
        shoot(driver, "timeout")
        shown = driver.find_element("tag name", "body").text
        pytest.fail(f"{driver.current_url}: {what} not within {timeout:.0f} s; the page shows:\n{shown}")


def wait_for(driver, css: str, text: str | None = None, timeout: float = 120):
    """The element ``css`` (holding ``text``), as :func:`until` waits."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    if text is None:
        return until(driver, ec.presence_of_element_located((By.CSS_SELECTOR, css)), repr(css), timeout)
    return until(driver, lambda d: d.execute_script(  # innerText: much faster than Selenium's text on a large page
        "const found = document.querySelector(arguments[0]);"
        "return found !== null && found.innerText.includes(arguments[1])", css, text),
        f"{css!r} holding {text!r}", timeout)


def shoot(driver, name: str, settle: float = 1.0) -> None:
    """A screenshot in screenshots/, after ``settle`` seconds (for charts to finish their transitions)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    time.sleep(settle)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


#: Every page: its URL path, its title and an element that shows it rendered its content.
PAGES = (
    ("", "Facial emotion recognition", "[data-testid='stDataFrame']"),  # faces per class, under the metrics
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
    """Pick ``option`` in the selectbox labelled ``label`` (Streamlit's baseweb select); again, up
    to twice, when the page draws the box anew meanwhile (a rerun a background job's end starts)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def labelled(d):
        return next((b for b in d.find_elements(By.CSS_SELECTOR, "[data-testid='stSelectbox']") if label in b.text),
                    False)
    for attempt in range(3):
        try:
            field = until(driver, labelled, f"the selectbox {label!r}", 60).find_element(By.CSS_SELECTOR, "input")
            field.click()
            field.send_keys(option)
            field.send_keys(Keys.ENTER)
            return
        except StaleElementReferenceException:
            if attempt == 2:
                raise


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


def main_text(driver) -> str:
    """The text the page shows (read in the page: much faster than Selenium's text of a large page)."""
    return driver.execute_script("return document.querySelector(\"[data-testid='stMain']\").innerText")


def scroll_to(driver, css: str) -> None:
    """Scroll the page to the first element ``css`` (to the top of the window)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", driver.find_element("css selector", css))


#: The open drill-down's title, probability bars (class: probability) and whether its first two
#: pictures (the photo and the crop) are loaded; null while the dialog is not drawn yet.
DRILL_DOWN = """
const dialog = document.querySelector("[role='dialog']");
const plot = dialog && dialog.querySelector(".js-plotly-plot");
if (!plot || !plot._fullData || !plot._fullData.length) return null;
const pictures = [...dialog.querySelectorAll("[data-testid='stImage'] img")].slice(0, 2);
const bars = plot._fullData[0];
return {title: plot._fullLayout.title.text, names: Array.from(bars.y), values: Array.from(bars.x),
        loaded: pictures.length === 2 && pictures.every((img) => img.complete && img.naturalWidth > 0)};
"""


def drill_down(driver, spec: str, key: str) -> tuple[str, dict[str, float]]:
    """The drill-down of face ``key`` of ``spec``, once open with its photo and crop loaded: its
    probability chart's title and bars (class: probability)."""
    wait_for(driver, "[role='dialog']", f"{spec}: {key}")
    shown = until(driver, lambda d: (lambda found: found if found and found["loaded"] else None)(
        d.execute_script(DRILL_DOWN)), "the drill-down's photo, crop and probabilities")
    return re.sub(r"<[^>]+>", "", shown["title"]), dict(zip(shown["names"], shown["values"]))


@pytest.mark.slow
def test_open_a_confused_face_in_its_drill_down(server, browser, browser_config):
    browser.get(server + "/confusion")
    wait_for(browser, "h1", "Confusion")
    details = wait_for(browser, ".st-key-drill-cell-0 button")  # the first face of the most frequent confusion
    true, predicted = re.search(r"\d+ face\(s\): true (\w+), predicted (\w+)", main_text(browser)).groups()
    caption = browser.execute_script(  # "<key>: p(<predicted>) 0.64, p(<true>) 0.09", under the face
        "return arguments[0].closest(\"[data-testid='stColumn']\")"
        ".querySelector(\"[data-testid='stCaptionContainer']\").innerText", details)
    key = caption.split(": p(")[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", details)
    details.click()
    title, probabilities = drill_down(browser, "ferplus:test", key)
    assert title.startswith(f"true {true}, predicted {predicted} ") and title.endswith("(wrong)")
    config = load_config(browser_config)
    scored = Run.load(config.resolve(config.paths.runs_dir) / EVALUATION).predictions.set_index("key").loc[key]
    for emotion, probability in probabilities.items():  # the face as the run scored it: float32 against stored
        assert abs(probability - scored[f"prob_{emotion}"]) <= 1e-4, emotion
    shoot(browser, "confusion_drilldown")


#: In the embedding scatter ``arguments[0]``, the synthetic point farthest from any other: its
#: position in the page (x, y), the chart's size, its text (key<br>domain emotion) and its picture.
ISOLATED_POINT = """
const plot = arguments[0], layout = plot._fullLayout, box = plot.getBoundingClientRect();
const points = plot._fullData.flatMap((trace) => Array.from(trace.x, (x, i) => ({
  x: layout.xaxis.l2p(x) + layout._size.l, y: layout.yaxis.l2p(trace.y[i]) + layout._size.t,
  synthetic: trace.name.startsWith("synthetic"), text: trace.text[i], picture: trace.customdata[i][1]})));
let best = null, farthest = -1;
for (const point of points.filter((p) => p.synthetic)) {
  let nearest = Infinity;
  for (const other of points) {
    if (other !== point) nearest = Math.min(nearest, Math.hypot(other.x - point.x, other.y - point.y));
  }
  if (nearest > farthest) { farthest = nearest; best = point; }
}
return [best.x, best.y, box.width, box.height, best.text, best.picture];
"""


@pytest.mark.slow
def test_hover_an_embedding_point_to_see_its_face_and_click_it(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    browser.get(server + "/embeddings")
    wait_for(browser, "h1", "Embeddings")
    plot = wait_for(browser, ".js-plotly-plot")
    wait_for(browser, "[data-testid='stMain']", "Hover a point to see its face")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
    # the synthetic point farthest from every other point (so the mouse over it hovers and clicks it
    # alone), where the chart draws it (from its own axes), its face's key and class and its picture
    x, y, width, height, text, picture = browser.execute_script(ISOLATED_POINT, plot)
    face = wait_for(browser, "#fer-hover-face", timeout=30)
    # the page script listens to the chart's hover events once it has found the chart
    until(browser, lambda d: d.execute_script("return arguments[0].ferHoverFaces === true", plot),
          "the hover script attached to the chart", timeout=30)
    to_point = (int(x - width / 2), int(y - height / 2))
    ActionChains(browser).move_to_element_with_offset(plot, to_point[0] - 30, to_point[1] - 30).perform()
    ActionChains(browser).move_to_element_with_offset(plot, *to_point).perform()
    until(browser, lambda d: face.is_displayed(), "the face of the hovered point", timeout=30)
    assert face.get_attribute("src") == picture and picture.startswith("data:image/jpeg;base64,")
    shoot(browser, "embeddings_hover")
    # a click on the point opens its face: the face clicked, its true class and its probabilities
    # (its maps and neighbours: in the Saliency browser's drill-down)
    key, (domain, emotion) = text.split("<br>")[0], text.split("<br>")[1].split(" ", 1)
    assert domain == "synthetic"
    ActionChains(browser).click().perform()
    title, probabilities = drill_down(browser, "sd_faces", key)
    assert title.startswith(f"true {emotion}, predicted {max(probabilities, key=probabilities.get)} ")
    assert abs(sum(probabilities.values()) - 1) <= 1e-4  # a softmax in float32


#: Closes the open dialog with its close button; whether it found one.
CLOSE_DIALOG = """
const close = document.querySelector("[role='dialog'] button[aria-label='Close']");
if (close) close.click();
return close !== null;
"""

#: Every face in the Saliency browser's grids: its pictures' (address, caption).
GRID_PICTURES = """
return [...document.querySelectorAll("[data-testid='stMain'] [data-testid='stImage']")].map((face) =>
  [...face.querySelectorAll("[data-testid='stImageContainer']")].map((picture) =>
    [picture.querySelector("img").getAttribute("src"), picture.innerText.trim()]));
"""


@pytest.mark.slow
def test_saliency_browser_method_drill_down_second_model_and_a_sanity_job(server, browser, browser_config):
    from selenium.webdriver.common.keys import Keys
    from dashboard.jobs import list_jobs
    config = load_config(browser_config)
    browser.get(server + "/saliency")
    wait_for(browser, "h1", "Saliency browser")
    wait_for(browser, "[data-testid='stMain']", "Mean gradcam map of Happiness")
    assert "No sanity check stored for gradcam" in main_text(browser)
    # a sanity check of Grad-CAM on 2 faces, started from the page's button: a background job, which
    # runs while the page is used
    browser.find_element("xpath", "//summary[contains(., 'Sanity checks')]").click()
    faces = wait_for(browser, ".st-key-sanity-faces input")
    faces.send_keys(Keys.CONTROL, "a")
    faces.send_keys("2", Keys.ENTER)
    wait_for(browser, "[data-testid='stMain']", "--method gradcam --faces 2")  # the command it will run
    browser.find_element("css selector", ".st-key-sanity-start button").click()
    job = until(browser, lambda d: next(iter(list_jobs(config)), None), "the sanity job's folder")
    assert list(job.command[-6:]) == ["--dataset", "fer2013:test", "--method", "gradcam", "--faces", "2"]

    # another method, then a face's drill-down: every method for its predicted class, its
    # probabilities, its neighbours
    choose(browser, "Method", "smoothgrad")
    wait_for(browser, "[data-testid='stMain']", "Mean smoothgrad map of Happiness")
    assert not browser.find_elements("css selector", "[data-testid='stException']")
    scroll_to(browser, "h3")  # the grids, below the sanity panel
    shoot(browser, "saliency_smoothgrad")
    # (the elements are found in the page as each action is taken: the job's end reruns the page
    # at any moment, and a rerun draws the dialog anew)
    browser.execute_script("const details = [...document.querySelectorAll(\"[data-testid='stMain'] button\")]"
                           ".find((button) => button.innerText.includes('Details'));"
                           "details.scrollIntoView({block: 'center'}); details.click();")
    wait_for(browser, "[role='dialog']", "Every method")
    wait_for(browser, "[role='dialog']", "Nearest synthetic faces")
    until(browser, lambda d: d.execute_script(  # the photo, the crop, 7 maps and 8 neighbours
        "return document.querySelectorAll(\"[role='dialog'] [data-testid='stImage'] img\").length") >= 2 + 7 + 8,
        "the drill-down's pictures")
    shoot(browser, "saliency_drilldown")
    until(browser, lambda d: d.execute_script(CLOSE_DIALOG), "the drill-down's close button")
    until(browser, lambda d: not d.find_elements("css selector", "[role='dialog']"), "the drill-down closed")

    # back on Grad-CAM, a second model beside the first: each face explained by both models (the
    # second's map its own), a row of mean maps each, then the region shares
    choose(browser, "Method", "gradcam (")  # not gradcam++
    choose(browser, "Compare with model", SECOND)
    wait_for(browser, "[data-testid='stMain']", f"{SECOND} (the same faces; each model explains its own predicted")
    until(browser, lambda d: len(d.find_elements("css selector", "[data-testid='stMain'] .js-plotly-plot")) == 7,
          "both models' mean maps (3 each) and the region shares")
    grid = browser.execute_script(GRID_PICTURES)
    assert len(grid) == 2 * 8  # the first 8 faces of each domain
    for (first, first_caption), (second, second_caption) in grid:
        assert first_caption.startswith("true Happiness · pred ") and second_caption == SECOND
        assert first != second  # the media address is the picture's digest: each model's own map
    scroll_to(browser, "h3")  # the grids
    shoot(browser, "saliency_compare")

    # the job has ended: 'finished' in its panel, and the page shows the verdict it stored (on its 2 faces)
    until(browser, lambda d: job.return_code is not None, "the sanity job's end", timeout=240)
    assert job.return_code == 0
    stored = load_quality(config, load_model(config.model.weights_path).fingerprint)["gradcam"]
    verdict = "passed the sanity check:" if stored["passed"] else "failed the sanity check for this model:"
    until(browser, lambda d: all(part in main_text(d) for part in (f"{job.id}: finished", f"gradcam {verdict}",
                                                                    "(2 faces)")), "the sanity job's verdict")
    scroll_to(browser, "h1")  # the verdict, under the widgets
    shoot(browser, "saliency_sanity", settle=0.2)  # no chart up there
