"""Dashboard page loads on a real cache, in headless Chromium, both ways a user opens them.

`fresh`: the page's URL opened anew (a reload, a bookmark, a link from elsewhere): a new
Streamlit session, the browser's scripts started again. `navigated`: the sidebar's link
followed in an open tab (the same session). Each is timed until the page's title is drawn
and Streamlit's script has stopped running, the browser test's measure. The browser test
(tests/test_browser.py) times the pages on tiny fixtures (4 breeds); this times them on a
cache of your choice, by default the embedded demo's (37 breeds).

It starts `streamlit run dashboard.py` as the README does (the repository's
.streamlit/config.toml applies), drives Debian's chromium (or google-chrome) through
Playwright, and stops both at the end. Rounds are interleaved over the pages, so a slow
moment of a shared machine hits every page alike; the load average is printed with them.

Usage:
  python -m petq experiments                       # the demo's results, if not there yet
  python benchmarks/bench_pages.py                 # every page, 6 rounds, both ways
  python benchmarks/bench_pages.py --pages compare --rounds 10 --cache cache --ways fresh
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"": "Home", "convert": "Convert", "classify": "Classify", "tune": "Tune",
         "compare": "Compare", "layers": "Layers", "report": "Report"}  # URL path -> the sidebar link's label
READY_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return !!app && app.dataset.testScriptState === 'notRunning'
    && app.dataset.testConnectionState === 'CONNECTED'
    && !!document.querySelector('[data-testid="stMain"] h1');
}"""
# Click a sidebar link and resolve with the milliseconds until the script run it started
# has stopped (seen running, then not), or until the new title is drawn and nothing is stale.
CLICK_AND_TIME_JS = """(label) => new Promise((resolve) => {
  const app = document.querySelector('[data-testid="stApp"]');
  const link = Array.from(document.querySelectorAll('[data-testid="stSidebarNav"] a'))
    .find(a => a.innerText.trim().split('\\n').pop().trim() === label);
  if (!app || !link) { resolve({error: 'no link ' + label}); return; }
  const title = () => (document.querySelector('[data-testid="stMain"] h1') || {}).innerText;
  const before = title();
  let ran = false;
  const t0 = performance.now();
  const done = () => { observer.disconnect(); clearInterval(poll); clearTimeout(timer);
                       resolve({ms: performance.now() - t0}); };
  const check = () => {
    const state = app.dataset.testScriptState;
    if (state === 'running') ran = true;
    else if (state === 'notRunning' && ran) done();
    else if (state === 'notRunning' && title() && title() !== before
             && !document.querySelector('[data-stale="true"]')) done();
  };
  const observer = new MutationObserver(check);
  observer.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  const poll = setInterval(check, 10);
  const timer = setTimeout(() => { observer.disconnect(); clearInterval(poll);
                                   resolve({error: 'timeout'}); }, 120000);
  link.click();
})"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise SystemExit("bench_pages: error: no chromium or google-chrome on the PATH")


def open_fresh(page, url: str) -> float:
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_function(READY_JS, timeout=120_000, polling=20)
    return (time.perf_counter() - start) * 1000.0


def follow_link(page, label: str) -> float:
    timing = page.evaluate(CLICK_AND_TIME_JS, label)
    if "ms" not in timing:
        raise SystemExit(f"bench_pages: error: navigating to {label}: {timing}")
    page.wait_for_function(READY_JS, timeout=120_000, polling=20)
    return float(timing["ms"])


def main() -> int:
    from playwright.sync_api import sync_playwright

    from petq.demo import default_workspace

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="cache", help="the cache folder (default: cache)")
    parser.add_argument("--pages", nargs="+", default=list(PAGES), choices=list(PAGES),
                        help="page paths ('' is Home; default: every page)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--ways", nargs="+", default=["fresh", "navigated"],
                        choices=["fresh", "navigated"])
    args = parser.parse_args()

    ws = default_workspace(os.environ.get("PETQ_MODEL"),  # as the dashboard reads them
                           os.environ.get("PETQ_DATASET_ROOT"), args.cache, None)
    variants = len({r.variant for r in ws.results(any_threads=True)})
    port = free_port()
    env = dict(os.environ, PETQ_CACHE=str(Path(args.cache).resolve()), TF_CPP_MIN_LOG_LEVEL="2")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    times: dict[tuple[str, str], list[float]] = {
        (way, page): [] for way in args.ways for page in args.pages}
    loads = []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/_stcore/health", 90)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium(),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            try:
                tab = browser.new_page(viewport={"width": 1400, "height": 1000})
                for page in PAGES:  # the imports and every page's first reads: not timed
                    open_fresh(tab, f"{url}/{page}")
                for _ in range(args.rounds):
                    loads.append(os.getloadavg()[0])
                    for page in args.pages:
                        if "fresh" in args.ways:
                            times["fresh", page].append(open_fresh(tab, f"{url}/{page}"))
                            time.sleep(0.5)
                        if "navigated" in args.ways:
                            # from another page, by the sidebar's link
                            other = next(p for p in PAGES if p != page)
                            follow_link(tab, PAGES[other])
                            time.sleep(0.5)
                            times["navigated", page].append(follow_link(tab, PAGES[page]))
                            time.sleep(0.5)
            finally:
                browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
    print(f"{variants} variants cached for this workspace in {args.cache}; {os.cpu_count()} "
          f"cores, load average {min(loads):.2f}-{max(loads):.2f} over the rounds; ms")
    print(f"{'way':10s} {'page':10s} {'median':>7s} {'max':>7s}  each")
    for (way, page), values in times.items():
        print(f"{way:10s} {page or 'home':10s} {statistics.median(values):7.0f} "
              f"{max(values):7.0f}  " + " ".join(f"{v:.0f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
