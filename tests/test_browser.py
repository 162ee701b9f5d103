"""End to end: `streamlit run dashboard.py` on a free loopback port, driven by headless Chromium.

Chromium is driven through the DevTools protocol over a websocket (`websockets`,
which streamlit already depends on). Every page is opened; any Streamlit
exception or error element fails the test. Screenshots go to
PETQ_SCREENSHOTS (default: tests/artifacts/screenshots, git-ignored).
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

from petq.jobs import list_jobs

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGES = [("home", ""), ("convert", "Convert"), ("compare", "Compare"),
         ("classify", "Classify"), ("report", "Report")]
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

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        return result.get("result", {}).get("value")

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(0.5)

    def wait_idle(self, timeout: float = 120, settle: float = 1.5) -> None:
        """Until the app is connected and its script has stopped running, twice in a row."""
        state_js = ("(() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
                    " return a ? a.dataset.testScriptState + '/' + a.dataset.testConnectionState"
                    " : 'none'; })()")
        deadline = time.monotonic() + timeout
        calm_since = None
        while time.monotonic() < deadline:
            state = self.js(state_js) or "none"
            if state.startswith("notRunning/") and "CONNECTED" in state.upper():
                calm_since = calm_since or time.monotonic()
                if time.monotonic() - calm_since >= settle:
                    return
            else:
                calm_since = None
            time.sleep(0.25)
        raise AssertionError(f"the app did not settle within {timeout} s (state {state})")

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


@pytest.fixture()
def screenshots() -> Path:
    folder = Path(os.environ.get("PETQ_SCREENSHOTS", ROOT / "tests" / "artifacts" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    ignore = folder.parent / ".gitignore"
    if folder.parent.name == "artifacts" and not ignore.exists():
        ignore.write_text("*\n")  # generated output: the folder ignores itself
    print(f"screenshots in {folder}")
    return folder


@pytest.fixture()
def server(tiny_model, pet_root, tmp_path):
    """`streamlit run dashboard.py` on the tiny fixtures, a fresh cache, a free loopback port."""
    port = free_port()
    cache = tmp_path / "cache"
    env = dict(os.environ, PETQ_MODEL=str(tiny_model), PETQ_DATASET_ROOT=str(pet_root),
               PETQ_CACHE=str(cache), PETQ_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
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
    """A good JPEG, an EXIF-rotated one, a grayscale PNG and an RGBA WebP; and a bad file."""
    rng = np.random.default_rng(3)
    pixels = np.clip(np.array([200, 60, 40]) + rng.normal(0, 25, (60, 90, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    good = [folder / "cat.jpg", folder / "rotated.jpg", folder / "gray.png", folder / "rgba.webp"]
    image.save(good[0], quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(good[1], exif=exif)
    image.convert("L").save(good[2])
    image.convert("RGBA").save(good[3], lossless=True)
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
    browser.screenshot(screenshots / "0-home-empty.png")
    browser.click_button("Run the lab's task set")
    deadline = time.monotonic() + 60
    while "variants done" not in browser.text() and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(1.0)
    browser.screenshot(screenshots / "0-home-job-running.png")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        jobs = list_jobs(server["cache"])
        if jobs and all(j["state"] not in ("queued", "running") for j in jobs):
            break
        time.sleep(1)
    assert jobs and all(j["state"] == "done" for j in jobs), jobs
    time.sleep(2.5)  # the job panel notices the end and reruns the page

    failures = {}
    for name, path in PAGES:
        browser.open(f"{url}/{path}")
        browser.wait_idle()
        failures[name] = browser.errors()
        browser.screenshot(screenshots / f"{PAGES.index((name, path)) + 1}-{name}.png")
    assert not any(failures.values()), failures

    # Report: the zip is made when the button is clicked, and holds markdown and PNGs.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.call("Page.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
    browser.open(f"{url}/Report")
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

    # Classify: good photos of every kind, then one bad file next to a good one.
    good, bad = photos(tmp_path)
    browser.open(f"{url}/Classify")
    browser.wait_idle()
    browser.upload(good)
    browser.wait_idle(settle=2.5)
    assert browser.errors() == []
    assert browser.text().count("tflite-fp32") >= len(good)
    browser.screenshot(screenshots / "6-classify-uploads.png")
    browser.upload([bad, good[0]])
    browser.wait_idle(settle=2.5)
    errors = browser.errors()
    assert len(errors) == 1 and "truncated.jpg" in errors[0], errors
    assert json.loads(browser.js(
        "JSON.stringify(document.querySelectorAll('[data-testid=\"stException\"]').length)"
    )) == 0
    browser.screenshot(screenshots / "7-classify-bad-file.png")
    log = server["log"].read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
