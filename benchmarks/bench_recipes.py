"""Every recipe on the demo: conversion time, file size, accuracy, G-Mean, median latency,
and how each differs from TFLite FP32 (paired: exact McNemar, bootstrap interval).

    python benchmarks/bench_recipes.py [--fraction 0.08] [--cache-dir DIR]

Prints a Markdown table (the one in benchmarks/README.md). Calibrating recipes use the
same trainval images at the given fraction. Conversion times are the ones recorded when
each variant was converted (a cached variant keeps its original time): use a fresh
--cache-dir for a cold run. Latency is the median of 100 timed invokes per variant on
this machine, measured one variant after another: read it as indicative, and see
`summary.md` for interleaved timings with intervals.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from petq.demo import default_workspace  # noqa: E402
from petq.errors import PetqError  # noqa: E402
from petq.stats import compare_paired  # noqa: E402
from petq.types import RECIPES, VariantSpec  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.08)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    ws = default_workspace(cache_root=args.cache_dir, threads=args.threads)
    specs = [VariantSpec.of(r, args.fraction if r.calibrates else None)
             for r in RECIPES.values()]
    results = {}
    start = time.perf_counter()
    for spec in specs:
        try:
            results[spec.name], computed = ws.evaluate(spec)
        except PetqError as exc:
            print(f"{spec.name}: {exc}", file=sys.stderr)
            continue
        print(f"{spec.name}: {'computed' if computed else 'cached'}", file=sys.stderr)
    fp32 = results[VariantSpec.fp32().name]
    reference = ws.details(fp32.result_key)
    print(f"Demo model, {fp32.n_images} synthetic test images, {ws.threads} threads; calibration "
          f"fraction {args.fraction:g}; wall time of this run {time.perf_counter() - start:.0f} s.")
    print()
    print("| Variant | Backend | Scheme | Convert (s) | Size (bytes) | Accuracy | G-Mean | "
          "Δ accuracy vs FP32 (95% CI) | McNemar p (b/c) | Latency median (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        details = ws.details(r.result_key)
        if r is fp32:
            delta, test = "reference", ""
        else:
            c = compare_paired(details.labels, details.top1, reference.top1,
                               len(details.class_names))
            d = c.accuracy_difference
            delta = (f"{100 * d.estimate:+.1f} ({100 * d.low:+.1f} to {100 * d.high:+.1f})"
                     + (" *" if c.significant else ""))
            test = f"{c.mcnemar.p_value:.3g} ({c.mcnemar.b}/{c.mcnemar.c})"
        print(f"| {name} | {r.spec.recipe.backend.value} | {r.scheme} | "
              f"{r.convert_seconds:.1f} | {r.file_size_bytes:,} | {r.accuracy:.4f} | "
              f"{r.g_mean:.4f} | {delta} | {test} | {r.latency_p50_ms:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
