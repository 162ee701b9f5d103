"""Dashboard page loads on a real cache, in headless Chromium, as a user opens them.

The browser test (tests/test_browser.py) times every page on tiny fixtures (4 breeds).
This times the dashboard's pages on a cache of your choice, by default the embedded
demo's (37 breeds), from navigation until the page's title is drawn and Streamlit's
script has stopped running, the browser test's own measure, three ways (`--ways`):
`navigated` (a click on the sidebar's link from another page), `same-tab` (the page's URL
loaded in the same tab: a reload) and `new-tab` (the URL opened in a new tab: a bookmark,
a link opened aside). With `--baseline`, a Streamlit app that only draws a title is timed
the same ways in the same rounds: what Streamlit and the browser cost before any of
petq's work. It starts `streamlit run dashboard.py` as the README does (the repository's
.streamlit/config.toml applies) and stops it at the end. The browser and the server come
from benchmarks/browser.py.

Usage:
  python -m petq experiments                       # the demo's results, if not there yet
  python benchmarks/bench_pages.py                 # every page, every way, 6 rounds
  python benchmarks/bench_pages.py --pages compare --rounds 10 --cache cache --baseline
  python benchmarks/bench_pages.py --ways new-tab navigated
  python benchmarks/bench_pages.py --ways new-tab --baseline --breakdown   # where it goes
Needs chromium (or google-chrome) on the PATH and Playwright for Python, like the browser
test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from browser import Chromium, dashboard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # petq from this checkout, as the other benchmarks import it
PAGES = ("", "convert", "classify", "tune", "compare", "layers", "report")
WAYS = ("navigated", "same-tab", "new-tab")
BASELINE_APP = 'import streamlit as st\n\nst.title("A title only")\n'


class Tab:
    """The tab being timed on one server: knows which page it shows, so a navigated load
    always starts from another page."""

    def __init__(self, browser: Chromium, url: str, breakdown: bool = False):
        self.browser, self.url, self.breakdown = browser, url, breakdown
        self.parts: dict[str, list[dict[str, float]]] = {}  # new-tab breakdowns, by page
        browser.open(url)  # the server's first page, its imports and workspace: not timed
        self.links = {path: label for label, path in browser.nav_links()}
        self.shown = ""

    def load(self, page: str, way: str) -> float:
        if way == "new-tab" and self.breakdown:
            parts = self.browser.new_tab_breakdown(f"{self.url}/{page}")
            self.parts.setdefault(page, []).append(parts)
            return parts["ready"]
        if way == "new-tab":
            return self.browser.open_in_new_tab_timed(f"{self.url}/{page}")
        if way == "same-tab":
            self.shown = page
            return self.browser.open_timed(f"{self.url}/{page}")
        if self.shown == page:  # a click on the page shown reruns nothing: go elsewhere first
            other = next(path for path in self.links if path != page)
            self.browser.click_nav(self.links[other])
            self.browser.wait_idle(settle=0.5)
        ms, _ = self.browser.click_nav(self.links[page])
        self.shown = page
        return ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="cache", help="the cache folder (default: cache)")
    parser.add_argument("--pages", nargs="+", default=list(PAGES),
                        help="page paths ('' is Home; default: every page)")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--baseline", action="store_true",
                        help="also time a Streamlit app that only draws a title")
    parser.add_argument("--breakdown", action="store_true",
                        help="for new-tab loads, also where the time went (browser.py's "
                             "new_tab_breakdown)")
    args = parser.parse_args()

    from petq.demo import default_workspace

    results = len(default_workspace(os.environ.get("PETQ_MODEL"),  # as the dashboard reads them
                                    os.environ.get("PETQ_DATASET_ROOT"), args.cache,
                                    None).results(any_threads=True))
    env = dict(os.environ, PETQ_CACHE=str(Path(args.cache).resolve()), TF_CPP_MIN_LOG_LEVEL="2")
    times: dict[tuple[str, str], list[float]] = {}
    with contextlib.ExitStack() as stack:
        timed: dict[str, tuple[Tab, list[str]]] = {}
        if args.baseline:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            (folder / "title_only.py").write_text(BASELINE_APP)
            baseline_url = stack.enter_context(dashboard(env, script=folder / "title_only.py"))
        url = stack.enter_context(dashboard(env))
        browser = Chromium()
        stack.callback(browser.close)
        timed["petq"] = (Tab(browser, url, args.breakdown), args.pages)
        if args.baseline:
            timed["baseline"] = (Tab(browser.another_tab(), baseline_url, args.breakdown), [""])
        time.sleep(2)
        for _ in range(args.rounds):  # interleaved: a slow moment hits every page alike
            for app, (tab, pages) in timed.items():
                for page in pages:
                    for way in args.ways:
                        if app == "baseline" and way == "navigated":
                            continue  # one page: nowhere to navigate from
                        times.setdefault((name(app, page), way), []).append(tab.load(page, way))
                        time.sleep(1.0)
    report(times, f"{results} results of this workspace (any thread count) in {args.cache}")
    if args.breakdown:
        report_breakdown({name(app, page): parts for app, (tab, _) in timed.items()
                          for page, parts in tab.parts.items()})
    return 0


def name(app: str, page: str) -> str:
    return "baseline" if app == "baseline" else page or "home"


def report(times: dict[tuple[str, str], list[float]], what: str) -> None:
    print(f"{what}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; ms from the start "
          "of the load until the title is drawn and the script has stopped")
    print(f"{'page':10s} {'way':10s} {'median':>7s} {'max':>7s}  each")
    for (page, way), values in times.items():
        print(f"{page:10s} {way:10s} {statistics.median(values):7.0f} "
              f"{max(values):7.0f}  " + " ".join(f"{v:.0f}" for v in values))


def report_breakdown(parts: dict[str, list[dict[str, float]]]) -> None:
    keys = ("dom_ready", "late_start", "late_end", "ready", "late_scripts")
    print("\nnew tab, medians, ms from the navigation's start: DOMContentLoaded (Streamlit's "
          "own scripts), the first start and the last end of the scripts fetched after it "
          "(each element type's modules, on first use in a tab), ready; how many of them")
    print(f"{'page':10s} " + " ".join(f"{k:>18s}" for k in keys))
    for page, runs in parts.items():
        print(f"{page:10s} " + " ".join(f"{statistics.median(r[k] for r in runs):18.0f}"
                                          for k in keys))


if __name__ == "__main__":
    sys.exit(main())
