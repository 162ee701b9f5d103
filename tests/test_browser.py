"""End to end: `streamlit run dashboard.py` on a free loopback port, driven by Debian's
headless Chromium through Playwright (benchmarks/browser.py, shared with bench_pages.py).

Every page is reached through the sidebar's st.navigation links, then opened by its URL in
the same tab and in a new tab; any Streamlit exception or error element fails the test.
Every load is timed, each way in ROUNDS rounds; a page whose median is over
PAGE_LOAD_LIMIT_MS is named in a warning (measured, not asserted: a loaded 2-core machine
cannot hold a 1 s limit). The times go to tests/artifacts/page_times.json, screenshots to
PETQ_SCREENSHOTS (default: tests/artifacts, git-ignored).
"""

from __future__ import annotations

import io
import json
import os
import statistics
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import CHROMIUM, Chromium, dashboard
from petq.cache import Cache
from petq.jobs import Status, list_jobs
from petq.types import VariantSpec
from waiting import wait_until

# Six variants converted, the lab's task set run from Home, every page loaded 9 times:
# minutes on a busy 2-core machine.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
# (sidebar label, url path) of the pages this test expects, in the sidebar's order; pages
# added later (Layers) are visited too, found in the sidebar.
PAGES = [("Home", ""), ("Convert", "convert"), ("Classify", "classify"), ("Tune", "tune"),
         ("Compare", "compare"), ("Report", "report")]
PAGE_LOAD_LIMIT_MS = 1000.0  # every page, navigated and in a fresh tab (median of rounds)
ROUNDS = 3
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
    env = dict(os.environ, PETQ_MODEL=str(tiny_model), PETQ_DATASET_ROOT=str(pet_root),
               PETQ_CACHE=str(cache), PETQ_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PETQ_PREPROCESSING", None)
    env.pop("PETQ_TEST_FRACTION", None)
    log = tmp_path / "streamlit.log"
    with dashboard(env, log, extra_args=("--server.fileWatcherType", "none")) as url:
        yield {"url": url, "cache": cache, "log": log}


@pytest.fixture()
def browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (.ci/run installs it)")
    pytest.importorskip("playwright", reason="pip install playwright (no browser download)")
    chromium = Chromium(tmp_path / "chromium-profile")  # a fresh profile
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
    assert "petq" in browser.text()
    links = browser.nav_links()
    assert [link for link in links if link in PAGES] == PAGES  # st.navigation's sidebar
    browser.screenshot(screenshots / "0-home-before-the-lab-tasks.png")
    browser.click_button("Run the lab's task set")
    browser.wait_for_text("variants done", 60)
    browser.page.wait_for_timeout(1000)
    browser.screenshot(screenshots / "0-home-job-running.png")

    def finished():
        jobs = list_jobs(server["cache"])
        return jobs if jobs and not any(j.active for j in jobs) else None

    jobs = wait_until(finished, 300, interval=1.0,
                      message=lambda: f"jobs still running: {list_jobs(server['cache'])}")
    assert all(j.state is Status.DONE for j in jobs), jobs
    browser.page.wait_for_timeout(2500)  # the job panel notices the end and reruns the page
    browser.wait_idle()

    # Every page through the sidebar's links (st.navigation), timed, the first round
    # screenshotted; then each page opened by its URL in this tab and in a new tab, timed.
    times: dict[str, dict[str, list]] = {
        label: {"navigate_ms": [], "seen": [], "open_ms": [], "new_tab_ms": []}
        for label, _ in links}
    failures = {}
    for round_ in range(ROUNDS):
        for index, (label, path) in enumerate([*links[1:], links[0]]):
            ms, seen = browser.click_nav(label)
            times[label]["navigate_ms"].append(round(ms, 1))
            times[label]["seen"].append(seen)
            assert browser.href().rstrip("/") == f"{url}/{path}".rstrip("/")
            if round_ == 0:
                browser.wait_idle(settle=1.0)
                failures[label] = browser.errors()
                browser.screenshot(screenshots / f"{index + 1}-{label.lower()}.png")
    assert not any(failures.values()), failures
    for _ in range(ROUNDS):  # interleaved: a slow moment of the machine hits every page
        for label, path in links:
            times[label]["open_ms"].append(round(browser.open_timed(f"{url}/{path}"), 1))
            assert browser.errors() == [], label
            times[label]["new_tab_ms"].append(
                round(browser.open_in_new_tab_timed(f"{url}/{path}"), 1))
    medians = {label: {way: statistics.median(times[label][way])
                       for way in ("navigate_ms", "open_ms", "new_tab_ms")}
               for label in times}
    over = {f"{label} {way}": ms for label, ways in medians.items()
            for way, ms in ways.items() if ms > PAGE_LOAD_LIMIT_MS}
    cached = len(list(Cache(server["cache"]).entries("results")))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "page_times.json").write_text(json.dumps({
        "what": "ms from clicking a sidebar link (navigate_ms; seen: the script state "
                "observed running then stopped, or the new title drawn with nothing stale "
                "left), from loading the page's URL in the same tab (open_ms) or in a new "
                "tab (new_tab_ms), until Streamlit's script run stopped with the page's "
                f"title drawn; {ROUNDS} rounds each; tiny fixtures, headless Chromium, "
                "1 inference thread",
        "limit_ms": PAGE_LOAD_LIMIT_MS, "medians_over_the_limit": over,
        "results_in_the_cache": cached,
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "medians": medians, "pages": times,
    }, indent=2) + "\n")
    print(json.dumps(medians))
    if over:
        warnings.warn(f"page loads over {PAGE_LOAD_LIMIT_MS:g} ms (median of {ROUNDS}): "
                      + ", ".join(f"{k} {v:.0f}" for k, v in over.items()), stacklevel=1)

    # Report: the zip is made when the button is clicked, and holds markdown and PNGs.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.open(f"{url}/report")
    archive = browser.download("Download the report (zip)", downloads)
    assert archive.name == "petq-report.zip"
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
    assert "petq-report/summary.md" in names
    assert "petq-report/tflite-fp32-confusion-matrix.png" in names
    assert "petq-report/aeq-wi8-afp32-confusion-matrix.png" in names

    # Classify: good photos of every kind, then one bad file next to a good one.
    good, bad = photos(tmp_path)
    browser.open(f"{url}/classify")
    browser.upload(good)
    browser.wait_idle(settle=2.5)
    assert browser.errors() == []
    assert browser.text().count("tflite-fp32") >= len(good)
    browser.screenshot(screenshots / "classify-uploads.png")
    browser.upload([bad, good[0]])
    browser.wait_idle(settle=2.5)
    errors = browser.errors()
    assert len(errors) == 1 and "truncated.jpg" in errors[0], errors
    assert browser.page.locator('[data-testid="stException"]').count() == 0
    browser.screenshot(screenshots / "classify-bad-file.png")
    log = server["log"].read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
