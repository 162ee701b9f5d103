"""The dashboard in a real browser: `streamlit run dashboard.py` on a free port, and Debian's
headless Chromium driven by Playwright for Python.

Shared by the browser test (tests/test_browser.py) and benchmarks/bench_pages.py.
Playwright drives the system's `chromium` (`executable_path`); it never downloads a
browser of its own, so `playwright install` is not needed. Every wait here is bounded.
Page loads are timed in the page itself (`performance.now()`), from the navigation's
start (or the link's click) until Streamlit is connected, its script has stopped
running and the page's title is drawn.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("google-chrome") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 1000}

READY_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const ready = !!app && app.dataset.testScriptState === 'notRunning'
    && app.dataset.testConnectionState === 'CONNECTED'
    && !!document.querySelector('[data-testid="stMain"] h1');
  if (ready && window.__petqReady === undefined) window.__petqReady = performance.now();
  return ready;
}"""
# True once the app has been connected with its script stopped for `settle` ms in a row.
SETTLED_JS = """(settle) => {
  const app = document.querySelector('[data-testid="stApp"]');
  const calm = !!app && app.dataset.testScriptState === 'notRunning'
    && app.dataset.testConnectionState === 'CONNECTED';
  if (!calm) { window.__petqCalm = null; return false; }
  if (window.__petqCalm == null) window.__petqCalm = performance.now();
  return performance.now() - window.__petqCalm >= settle;
}"""
NAV_LINKS_JS = """() => Array.from(document.querySelectorAll('[data-testid="stSidebarNav"] a'))
  .map(a => [a.innerText.trim().split('\\n').pop().trim(),
             new URL(a.href).pathname.replace(/^\\//, '')])"""
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
# Where a load's time went: DOMContentLoaded, and the scripts fetched after it (the lazily
# loaded modules of each element type), from the tab's resource timing.
LATE_SCRIPTS_JS = """() => {
  const dom = performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd;
  const late = performance.getEntriesByType('resource')
    .filter(e => e.initiatorType === 'script' && e.startTime > dom);
  return {dom_ready: dom, late_scripts: late.length,
          late_start: late.length ? Math.min(...late.map(e => e.startTime)) : dom,
          late_end: late.length ? Math.max(...late.map(e => e.responseEnd)) : dom};
}"""
ERRORS_JS = """() => Array.from(document.querySelectorAll(
  '[data-testid="stException"], [data-testid="stAlertContentError"]'
)).map(e => e.innerText.slice(0, 500))"""
CONTENT_HEIGHT_JS = """() => Math.max(...Array.from(document.querySelectorAll(
  '[data-testid="stMain"], [data-testid="stMainBlockContainer"], body'))
  .map(e => e.scrollHeight))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def dashboard(env: dict[str, str], log: Path | None = None, timeout: float = 90,
              extra_args: tuple[str, ...] = (), script: str | Path = "dashboard.py"
              ) -> Iterator[str]:  # fmt: skip
    """`streamlit run dashboard.py` (or another `script`) from the repository root, so with
    its .streamlit/config.toml, on a free loopback port with `env`; yields its URL once its
    health check answers, and stops its process group."""
    port = free_port()
    sink = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
         "--server.headless", "true", "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", *extra_args],
        cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: process.poll() is not None or answers(f"{url}/_stcore/health"),
                   timeout, interval=0.3, message=f"{url} did not answer")
        assert process.poll() is None, f"streamlit exited with {process.returncode}"
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        if log:
            sink.close()


class Chromium:
    """Headless Chromium with a fresh profile, and the tab being driven (`page`)."""

    def __init__(self, profile: Path | None = None, executable: str = CHROMIUM):
        from playwright.sync_api import sync_playwright

        self.own_profile = profile is None
        self.profile = Path(tempfile.mkdtemp(prefix="petq-chromium-")) if profile is None \
            else profile
        self.playwright = sync_playwright().start()
        try:
            self.context = self.playwright.chromium.launch_persistent_context(
                str(self.profile), executable_path=executable, headless=True,
                args=CHROMIUM_ARGS, viewport=VIEWPORT, accept_downloads=True, timeout=60_000)
        except BaseException:
            self.playwright.stop()
            raise
        self.context.set_default_timeout(120_000)
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()

    def another_tab(self) -> Chromium:
        """This browser driving another tab of its own (same profile, same cache), e.g. on
        another server; it closes with this browser (do not `close` it)."""
        other = copy.copy(self)
        other.page = self.context.new_page()
        return other

    def open(self, url: str, timeout: float = 120) -> None:
        """Go to `url` and wait until the app has settled."""
        self.page.goto(url, wait_until="commit")
        self.wait_idle(timeout)

    def wait_idle(self, timeout: float = 120, settle: float = 1.5) -> None:
        """Until the app is connected and its script has stopped running, `settle` s in a
        row."""
        self.page.evaluate("() => { window.__petqCalm = null; }")
        self.page.wait_for_function(SETTLED_JS, arg=settle * 1000, polling=250,
                                    timeout=timeout * 1000)

    def wait_for_text(self, text: str, timeout: float = 60) -> None:
        self.page.wait_for_function("(t) => document.body.innerText.includes(t)", arg=text,
                                    polling=250, timeout=timeout * 1000)

    def nav_links(self) -> list[tuple[str, str]]:
        """(label, url path) of each link in the sidebar's navigation, in its order."""
        return [tuple(link) for link in self.page.evaluate(NAV_LINKS_JS)]

    def click_nav(self, label: str) -> tuple[float, str]:
        """Follow the sidebar's navigation link `label`: milliseconds until the page's
        script run has stopped, and how the end was seen (`observed` or `title`)."""
        timing = self.page.evaluate(CLICK_AND_TIME_JS, label) or {}
        assert "ms" in timing, f"navigating to {label}: {timing}"
        return float(timing["ms"]), timing["how"]

    def open_timed(self, url: str, timeout: float = 120) -> float:
        """Load `url` in this tab afresh (a reload, a typed URL): milliseconds from the
        navigation's start until the app is connected, its title drawn, its script
        stopped."""
        return self._load_timed(self.page, url, timeout)

    def open_in_new_tab_timed(self, url: str, timeout: float = 120) -> float:
        """Open `url` in a new tab (a bookmark, a link opened aside), timed as `open_timed`;
        the tab is closed after."""
        tab = self.context.new_page()
        try:
            return self._load_timed(tab, url, timeout)
        finally:
            tab.close()

    def new_tab_breakdown(self, url: str, timeout: float = 120) -> dict[str, float]:
        """Open `url` in a new tab, timed as `open_in_new_tab_timed`, and where that time
        went, in ms from the navigation's start: `dom_ready` (Streamlit's own scripts
        loaded and run: DOMContentLoaded), `late_start` and `late_end` (when the
        first script fetched after that started, and the last ended: the modules of each
        element type, loaded on its first use in a tab), how many (`late_scripts`), and
        `ready`."""
        tab = self.context.new_page()
        try:
            ready = self._load_timed(tab, url, timeout)
            found = tab.evaluate(LATE_SCRIPTS_JS)
        finally:
            tab.close()
        return {"ready": ready, **found}

    @staticmethod
    def _load_timed(page, url: str, timeout: float) -> float:
        page.goto(url, wait_until="commit", timeout=timeout * 1000)
        page.wait_for_function(READY_JS, polling=10, timeout=timeout * 1000)
        return float(page.evaluate("() => window.__petqReady"))

    def errors(self) -> list[str]:
        return self.page.evaluate(ERRORS_JS)

    def text(self) -> str:
        return self.page.inner_text("body")

    def href(self) -> str:
        return self.page.url

    def click_button(self, label: str) -> None:
        self.page.locator("button", has_text=label).first.click()

    def download(self, button: str, folder: Path) -> Path:
        """Click the download button labelled `button`; the file saved into `folder`."""
        with self.page.expect_download(timeout=60_000) as info:
            self.click_button(button)
        target = folder / info.value.suggested_filename
        info.value.save_as(target)
        return target

    def upload(self, paths: list[Path]) -> None:
        self.page.set_input_files('[data-testid="stFileUploader"] input[type="file"]',
                                  [str(p) for p in paths])

    def screenshot(self, path: Path) -> None:
        """The whole page: Streamlit scrolls inside its main element, so the viewport grows
        to the content's height for the capture."""
        height = self.page.evaluate(CONTENT_HEIGHT_JS) or VIEWPORT["height"]
        self.page.set_viewport_size({"width": VIEWPORT["width"],
                                     "height": int(min(max(height, VIEWPORT["height"]), 9000))})
        self.page.wait_for_timeout(1000)  # let the charts redraw at the new size
        self.page.screenshot(path=str(path))
        self.page.set_viewport_size(VIEWPORT)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.context.close()
        self.playwright.stop()
        if self.own_profile:
            shutil.rmtree(self.profile, ignore_errors=True)
