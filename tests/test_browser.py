"""End to end: `streamlit run dashboard.py` on a free loopback port, driven by headless Chromium.

Chromium is driven through the DevTools protocol over a websocket (`websockets`,
which streamlit already depends on). Every page is reached through the sidebar's
st.navigation links and opened by its URL; any Streamlit exception or error element
fails the test. Each page's load time (navigation until Streamlit's script stops
running) is written to tests/artifacts/page_times.json, measured not asserted;
screenshots go to PETQ_SCREENSHOTS (default: tests/artifacts, git-ignored).
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petq.cache import Cache
from petq.jobs import Status, list_jobs
from petq.types import VariantSpec

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# (sidebar label, url path) of the pages this test expects, in the sidebar's order; pages
# added later (Layers) are visited too, found in the sidebar.
PAGES = [("Home", ""), ("Convert", "convert"), ("Classify", "classify"),
         ("Compare", "compare"), ("Report", "report")]
NAV_LINKS_JS = """JSON.stringify(Array.from(document.querySelectorAll(
  '[data-testid="stSidebarNav"] a')).map(a => [a.innerText.trim().split('\\n').pop().trim(),
  new URL(a.href).pathname.replace(/^\\//, '')]))"""
STATE_JS = ("(() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
            " return a ? a.dataset.testScriptState + '/' + a.dataset.testConnectionState"
            " : 'none'; })()")
# Clicks a sidebar navigation link and resolves with the milliseconds until the script run
# it starts has stopped. A MutationObserver sees the script state go `running` and back;
# when React batches a short run into one render (no `running` in the DOM), the run is over
# once the new page's title is drawn, the state is `notRunning` and no stale element is left.
CLICK_AND_TIME_JS = """(label) => new Promise((resolve) => {
  const app = document.querySelector('[data-testid="stApp"]');
  const link = Array.from(document.querySelectorAll('[data-testid="stSidebarNav"] a'))
    .find(a => a.innerText.trim().split('\\n').pop().trim() === label);
  if (!app || !link) { resolve({error: 'no link ' + label}); return; }
  const title = () => (document.querySelector('[data-testid="stMain"] h1') || {}).innerText;
  const before = title();
  let ran = false;
  const t0 = performance.now();
  const done = (how) => {
    observer.disconnect(); clearInterval(poll); clearTimeout(timer);
    resolve({ms: performance.now() - t0, how});
  };
  const check = () => {
    const state = app.dataset.testScriptState;
    if (state === 'running') ran = true;
    else if (state === 'notRunning' && ran) done('observed');
    else if (state === 'notRunning' && title() && title() !== before
             && !document.querySelector('[data-stale="true"]')) done('title');
  };
  const observer = new MutationObserver(check);
  observer.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  const poll = setInterval(check, 10);
  const timer = setTimeout(() => {
    observer.disconnect(); clearInterval(poll);
    resolve({error: 'timeout', state: app.dataset.testScriptState, title: title()});
  }, 120000);
  link.click();
})"""
ERRORS_JS = """JSON.stringify(Array.from(document.querySelectorAll(
  '[data-testid="stException"], [data-testid="stAlertContentError"]'
)).map(e => e.innerText.slice(0, 500)))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


class Chromium:
    """Headless Chromium and one page, spoken to over the DevTools protocol."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-dev-shm-usage", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError("Chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.resize(1400, 1000)

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str, timeout: float = 60):
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression,
                           returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(0.5)

    def wait_idle(self, timeout: float = 120, settle: float = 1.5) -> None:
        """Until the app is connected and its script has stopped running, twice in a row."""
        deadline = time.monotonic() + timeout
        calm_since = None
        while time.monotonic() < deadline:
            state = self.js(STATE_JS) or "none"
            if state.startswith("notRunning/") and "CONNECTED" in state.upper():
                calm_since = calm_since or time.monotonic()
                if time.monotonic() - calm_since >= settle:
                    return
            else:
                calm_since = None
            time.sleep(0.25)
        raise AssertionError(f"the app did not settle within {timeout} s (state {state})")

    def click_nav(self, label: str) -> tuple[float, str]:
        """Follow the sidebar's navigation link `label`: milliseconds until the page's
        script run has stopped, and how the end was seen (`observed` or `title`)."""
        timing = self.js(f"({CLICK_AND_TIME_JS})({json.dumps(label)})", timeout=130) or {}
        assert "ms" in timing, f"navigating to {label}: {timing}"
        return float(timing["ms"]), timing["how"]

    def open_timed(self, url: str, timeout: float = 120) -> float:
        """Load `url` afresh; milliseconds until the app is connected, its page title is
        drawn and its script has stopped running (polled every 20 ms)."""
        ready_js = ("(() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
                    " return !!a && a.dataset.testScriptState === 'notRunning'"
                    " && a.dataset.testConnectionState === 'CONNECTED'"
                    " && !!document.querySelector('[data-testid=\"stMain\"] h1'); })()")
        start = time.perf_counter()
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self.js(ready_js):
            assert time.monotonic() < deadline, f"{url} did not load within {timeout} s"
            time.sleep(0.02)
        return (time.perf_counter() - start) * 1000.0

    def errors(self) -> list[str]:
        return json.loads(self.js(ERRORS_JS) or "[]")

    def text(self) -> str:
        return self.js("document.body.innerText") or ""

    def click_button(self, label: str) -> None:
        found = self.js(
            "(() => { const b = Array.from(document.querySelectorAll('button'))"
            f".find(b => b.innerText.includes({json.dumps(label)}));"
            " if (!b) return false; b.click(); return true; })()"
        )
        assert found, f"no button labelled {label!r}"

    def upload(self, paths: list[Path]) -> None:
        document = self.call("DOM.getDocument", depth=-1, pierce=True)
        node = self.call("DOM.querySelector", nodeId=document["root"]["nodeId"],
                         selector='[data-testid="stFileUploader"] input[type="file"]')
        assert node.get("nodeId"), "no file input on the page"
        self.call("DOM.setFileInputFiles", nodeId=node["nodeId"],
                  files=[str(p) for p in paths])

    def screenshot(self, path: Path) -> None:
        """The whole page: grow the viewport to the content's height, then capture."""
        height = self.js(
            "Math.max(...Array.from(document.querySelectorAll("
            "'[data-testid=\"stMain\"], [data-testid=\"stMainBlockContainer\"], body'))"
            ".map(e => e.scrollHeight))"
        ) or 1000
        self.resize(1400, int(min(max(height, 1000), 9000)))
        time.sleep(1.0)
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        self.resize(1400, 1000)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)




ARTIFACTS = ROOT / "tests" / "artifacts"
# Cached before the server starts (the lab's task set, run from Home's button, adds more):
# three calibration seeds of one fraction, a class-calibrated INT8, an AI Edge Quantizer one.
PREFILLED = [VariantSpec.int8(0.5), VariantSpec.int8(0.5, seed=7),
             VariantSpec.int8(0.5, seed=8), VariantSpec.imbint8((1,)),
             VariantSpec.of("aeq-wi8-afp32"), VariantSpec.of("tflite-dynamic")]


@pytest.fixture()
def screenshots() -> Path:
    folder = Path(os.environ.get("PETQ_SCREENSHOTS", ARTIFACTS))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("[0-9]-*.png"):  # an earlier run's, whose pages may differ
        old.unlink()
    print(f"screenshots in {folder}")
    return folder


@pytest.fixture()
def cache(tiny_model, pet_root, tmp_path) -> Path:
    from petq.workspace import Workspace

    folder = tmp_path / "cache"
    ws = Workspace(tiny_model, pet_root, folder, threads=1)
    for spec in PREFILLED:
        ws.evaluate(spec, latency_runs=5)
    return folder


@pytest.fixture()
def server(tiny_model, pet_root, cache, tmp_path):
    """`streamlit run dashboard.py` on the tiny fixtures, a prefilled cache, a free port."""
    port = free_port()
    env = dict(os.environ, PETQ_MODEL=str(tiny_model), PETQ_DATASET_ROOT=str(pet_root),
               PETQ_CACHE=str(cache), PETQ_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PETQ_PREPROCESSING", None)
    env.pop("PETQ_TEST_FRACTION", None)
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port),
         "--server.headless", "true", "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", 90)
        yield {"url": f"http://127.0.0.1:{port}", "cache": cache,
               "log": tmp_path / "streamlit.log"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture()
def browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (.ci/run installs it)")
    chromium = Chromium(tmp_path / "chromium-profile")
    yield chromium
    chromium.close()


def photos(folder: Path) -> tuple[list[Path], Path]:
    """A good JPEG, an EXIF-rotated one, a grayscale PNG, an RGBA WebP, a GIF, a BMP, a
    TIFF and a 16-bit grayscale PNG; and a bad file."""
    rng = np.random.default_rng(3)
    pixels = np.clip(np.array([200, 60, 40]) + rng.normal(0, 25, (60, 90, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    good = [folder / name for name in ("cat.jpg", "rotated.jpg", "gray.png", "rgba.webp",
                                       "anim.gif", "plain.bmp", "scan.tiff", "depth16.png")]
    image.save(good[0], quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(good[1], exif=exif)
    image.convert("L").save(good[2])
    image.convert("RGBA").save(good[3], lossless=True)
    for path in good[4:7]:
        image.save(path)
    gray16 = (np.asarray(image.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(good[7])  # I;16: all white before 16-bit scaling
    bad = folder / "truncated.jpg"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    bad.write_bytes(buffer.getvalue()[:200])
    return good, bad


def test_every_page_renders_in_chromium(server, browser, screenshots, tmp_path):
    url = server["url"]

    # Home: run the lab's task set from the button, and wait for the worker to finish.
    browser.open(url + "/")
    browser.wait_idle()
    assert "petq" in browser.text()
    links = [tuple(link) for link in json.loads(browser.js(NAV_LINKS_JS) or "[]")]
    assert [link for link in links if link in PAGES] == PAGES  # st.navigation's sidebar
    browser.screenshot(screenshots / "0-home-before-the-lab-tasks.png")
    browser.click_button("Run the lab's task set")
    deadline = time.monotonic() + 60
    while "variants done" not in browser.text() and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(1.0)
    browser.screenshot(screenshots / "0-home-job-running.png")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        jobs = list_jobs(server["cache"])
        if jobs and not any(j.active for j in jobs):
            break
        time.sleep(1)
    assert jobs and all(j.state is Status.DONE for j in jobs), jobs
    time.sleep(2.5)  # the job panel notices the end and reruns the page
    browser.wait_idle()

    # Every page through the sidebar's links (st.navigation), timed: three rounds, the first
    # one screenshotted; then each page opened afresh by its URL, timed.
    times: dict[str, dict[str, list]] = {label: {"navigate_ms": [], "seen": [], "open_ms": []}
                                         for label, _ in links}
    failures = {}
    for round_ in range(3):
        for index, (label, path) in enumerate([*links[1:], links[0]]):
            ms, seen = browser.click_nav(label)
            times[label]["navigate_ms"].append(round(ms, 1))
            times[label]["seen"].append(seen)
            expected = f"{url}/{path}"
            assert browser.js("window.location.href").rstrip("/") == expected.rstrip("/")
            if round_ == 0:
                browser.wait_idle(settle=1.0)
                failures[label] = browser.errors()
                browser.screenshot(screenshots / f"{index + 1}-{label.lower()}.png")
    assert not any(failures.values()), failures
    for label, path in links:
        times[label]["open_ms"].append(round(browser.open_timed(f"{url}/{path}"), 1))
        assert browser.errors() == [], label
    cached = len(list(Cache(server["cache"]).entries("results")))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "page_times.json").write_text(json.dumps({
        "what": "ms from clicking a sidebar link (navigate_ms, 3 rounds; seen: the script "
                "state observed running then stopped, or the new title drawn with nothing "
                "stale left) or from loading the page's URL (open_ms) until Streamlit's script "
                "run stopped; tiny fixtures, headless Chromium, 1 inference thread",
        "results_in_the_cache": cached,
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "pages": times,
    }, indent=2) + "\n")
    print(json.dumps(times))

    # Report: the zip is made when the button is clicked, and holds markdown and PNGs.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.call("Page.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
    browser.open(f"{url}/report")
    browser.wait_idle()
    browser.click_button("Download the report (zip)")
    archive = downloads / "petq-report.zip"
    deadline = time.monotonic() + 60
    while not archive.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
    assert "petq-report/summary.md" in names
    assert "petq-report/tflite-fp32-confusion-matrix.png" in names
    assert "petq-report/aeq-wi8-afp32-confusion-matrix.png" in names

    # Classify: good photos of every kind, then one bad file next to a good one.
    good, bad = photos(tmp_path)
    browser.open(f"{url}/classify")
    browser.wait_idle()
    browser.upload(good)
    browser.wait_idle(settle=2.5)
    assert browser.errors() == []
    assert browser.text().count("tflite-fp32") >= len(good)
    browser.screenshot(screenshots / "classify-uploads.png")
    browser.upload([bad, good[0]])
    browser.wait_idle(settle=2.5)
    errors = browser.errors()
    assert len(errors) == 1 and "truncated.jpg" in errors[0], errors
    assert json.loads(browser.js(
        "JSON.stringify(document.querySelectorAll('[data-testid=\"stException\"]').length)"
    )) == 0
    browser.screenshot(screenshots / "classify-bad-file.png")
    log = server["log"].read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
