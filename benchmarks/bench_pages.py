"""Dashboard page loads on a real cache, in headless Chromium, as a user opens them.

The browser test (tests/test_browser.py) times every page on tiny fixtures (4 breeds).
This times fresh loads of the dashboard's pages on a cache of your choice, by default the
embedded demo's (37 breeds), from navigation until the page's title is drawn and
Streamlit's script has stopped running, the browser test's own measure: each page loaded
by its URL in the same tab (a reload) and in a new tab. It starts `streamlit run
dashboard.py` as the README does (the repository's .streamlit/config.toml applies) and
stops it at the end. The browser and the server come from benchmarks/browser.py.

Usage:
  python -m petq experiments                       # the demo's results, if not there yet
  python benchmarks/bench_pages.py                 # every page, 6 rounds
  python benchmarks/bench_pages.py --pages compare --rounds 10 --cache cache
Needs chromium (or google-chrome) on the PATH and Playwright for Python, like the browser
test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from browser import Chromium, dashboard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # petq from this checkout, as the other benchmarks import it
PAGES = ("", "convert", "classify", "tune", "compare", "layers", "report")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="cache", help="the cache folder (default: cache)")
    parser.add_argument("--pages", nargs="+", default=list(PAGES),
                        help="page paths ('' is Home; default: every page)")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    from petq.demo import default_workspace

    results = len(default_workspace(os.environ.get("PETQ_MODEL"),  # as the dashboard reads them
                                    os.environ.get("PETQ_DATASET_ROOT"), args.cache,
                                    None).results())
    env = dict(os.environ, PETQ_CACHE=str(Path(args.cache).resolve()), TF_CPP_MIN_LOG_LEVEL="2")
    with dashboard(env) as url:
        browser = Chromium()
        try:
            browser.open_timed(url)  # the workspace and the first imports, not timed
            time.sleep(2)
            ways = {"same tab": browser.open_timed, "new tab": browser.open_in_new_tab_timed}
            times = {(page, way): [] for page in args.pages for way in ways}
            for _ in range(args.rounds):  # interleaved: a slow moment hits every page alike
                for page in args.pages:
                    for way, load in ways.items():
                        times[page, way].append(load(f"{url}/{page}"))
                        time.sleep(1.0)
        finally:
            browser.close()
    print(f"{results} results of this workspace (threads as the dashboard's default) in "
          f"{args.cache}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; fresh loads, ms")
    print(f"{'page':10s} {'load':9s} {'median':>7s} {'max':>7s}  each")
    for (page, way), values in times.items():
        print(f"{page or 'home':10s} {way:9s} {statistics.median(values):7.0f} "
              f"{max(values):7.0f}  " + " ".join(f"{v:.0f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
