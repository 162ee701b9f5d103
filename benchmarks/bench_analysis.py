"""What the statistics and the layer view cost on the demo, computed and cached.

    python benchmarks/bench_analysis.py [--variants tflite-int8-0.8 tflite-imbint8]

Needs the variants evaluated (it evaluates them if not). Prints seconds for: the paired
statistics of each variant against FP32 (McNemar + 2,000 bootstrap resamples + per-breed
intervals), the same at Oxford size (37 breeds x 100 synthetic images), the whole report
(summary.md, comparisons.csv, metrics files; interleaved latency timings included the first
time, read from the cache after), and the per-layer statistics (the time recorded when they
were computed, and a cached read).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from petq.demo import default_workspace  # noqa: E402
from petq.report import report_files  # noqa: E402
from petq.stats import compare_paired, per_class_changes  # noqa: E402
from petq.types import VariantSpec, lab_tasks  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["tflite-int8-0.8", "tflite-imbint8"])
    parser.add_argument("--cache-dir", type=Path)
    args = parser.parse_args()
    ws = default_workspace(cache_root=args.cache_dir)
    results = [ws.evaluate(spec)[0] for spec in lab_tasks()]
    fp32 = next(r for r in results if r.spec == VariantSpec.fp32())
    reference = ws.details(fp32.result_key)
    print(f"demo, {fp32.n_images} test images, {len(results)} variants")
    for r in results:
        if r is fp32:
            continue
        d = ws.details(r.result_key)
        _, paired = timed(lambda d=d: compare_paired(d.labels, d.top1, reference.top1,
                                                     len(d.class_names)))
        _, breeds = timed(lambda d=d: per_class_changes(d.labels, d.top1, reference.top1,
                                                        len(d.class_names)))
        print(f"  paired statistics {r.variant:20s} {paired:.3f} s, per-breed {breeds:.3f} s")
    rng = np.random.default_rng(0)  # Oxford size: 37 breeds x 100 images, a 3% change
    labels = np.repeat(np.arange(37), 100)
    ref = np.where(rng.random(len(labels)) < 0.85, labels, rng.integers(0, 37, len(labels)))
    var = np.where(rng.random(len(labels)) < 0.97, ref, rng.integers(0, 37, len(labels)))
    _, oxford = timed(lambda: compare_paired(labels, var, ref, 37))
    print(f"  paired statistics at Oxford size ({len(labels)} images): {oxford:.3f} s")
    for attempt in ("first", "again"):
        _, seconds = timed(lambda: report_files(ws, results))
        print(f"report files ({attempt}): {seconds:.2f} s")
    for name in args.variants:
        spec = VariantSpec.from_name(name)
        cached = ws.cached_layer_stats(spec) is not None
        stats, seconds = timed(lambda spec=spec: ws.layer_stats(spec))
        entry_seconds = ws.cache.get("layers", ws._layer_key(spec)[0]).manifest["seconds"]
        print(f"layer statistics {name}: {len(stats)} layers; computed in {entry_seconds:.1f} s"
              f" ({'cached before this run' if cached else 'this run'}); this call "
              f"{seconds:.3f} s")
        _, again = timed(lambda spec=spec: ws.layer_stats(spec))
        print(f"layer statistics {name}, cached read: {again:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
