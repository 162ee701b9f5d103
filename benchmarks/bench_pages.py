"""Dashboard page loads on a real cache, in headless Chromium, as a user opens them.

The browser test (tests/test_browser.py) times every page on tiny fixtures (4 breeds).
This times fresh loads of the dashboard's pages on a cache of your choice, by default the
embedded demo's (37 breeds), from navigation until the page's title is drawn and
Streamlit's script has stopped running, the browser test's own measure (`open_timed`).
It starts `streamlit run dashboard.py` as the README does (the repository's
.streamlit/config.toml applies) and stops it at the end.

Usage:
  python -m petq experiments                       # the demo's results, if not there yet
  python benchmarks/bench_pages.py                 # every page, 6 rounds
  python benchmarks/bench_pages.py --pages compare --rounds 10 --cache cache
Needs chromium (or google-chrome) on the PATH, like the browser test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # petq, and the browser test's Chromium
PAGES = ("", "convert", "classify", "compare", "layers", "report")


def main() -> int:
    from test_browser import Chromium, free_port, wait_http

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
    port = free_port()
    env = dict(os.environ, PETQ_CACHE=str(Path(args.cache).resolve()), TF_CPP_MIN_LOG_LEVEL="2")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    profile = Path(tempfile.mkdtemp(prefix="petq-pages-"))
    browser = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/_stcore/health", 90)
        browser = Chromium(profile)
        browser.open_timed(url)  # the workspace and the first imports, not timed
        time.sleep(2)
        times: dict[str, list[float]] = {page: [] for page in args.pages}
        for _ in range(args.rounds):  # interleaved: a slow moment hits every page alike
            for page in args.pages:
                times[page].append(browser.open_timed(f"{url}/{page}"))
                time.sleep(1.0)
        print(f"{results} results of this workspace (threads as the dashboard's default) in "
              f"{args.cache}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; fresh loads, "
              f"ms")
        print(f"{'page':10s} {'median':>7s} {'max':>7s}  each")
        for page, values in times.items():
            print(f"{page or 'home':10s} {statistics.median(values):7.0f} {max(values):7.0f}  "
                  + " ".join(f"{v:.0f}" for v in values))
    finally:
        if browser is not None:
            browser.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)
        shutil.rmtree(profile, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
