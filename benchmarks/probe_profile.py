"""What does profiling each image alone cost against one calibrator for the whole set?

The range profile (petq/profile.py) runs each image through its own converter
calibrator, so that a set's ranges can be merged from its images' later. This times,
on the same N trainval images of the demo model (or --model-path), interleaved
--repeats times:
- `one calibrator`: the converter's calibrator fed all N images (what a plain
  conversion's calibration does);
- `per image`: `RangeProfile.ensure` on an empty profile (one calibrator per image,
  the ranges written to a cache).
and checks that the merged per-image ranges equal the one calibrator's. It also times
the converter's export, which a process reading the kept export (the cache's
`exports/`) skips.

Usage:
  python benchmarks/probe_profile.py [--images 64] [--repeats 3] [--model-path M]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import numpy as np
    from tensorflow.lite.python.optimize import calibrator

    from petq.cache import Cache
    from petq.calibration import _range_views
    from petq.convert import captured_output
    from petq.demo import default_workspace
    from petq.profile import RangeProfile
    from petq.types import VariantSpec

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-path")
    args = parser.parse_args()
    ws = default_workspace(model_path=args.model_path)
    spec = VariantSpec.of("tflite-int8", count=args.images, seed=0)
    ids = ws.calibration_ids(spec)
    inputs = [np.asarray(x, dtype=np.float32) for x in ws._inputs(ids)]
    backend = ws._shared.backend(spec)
    start = time.perf_counter()
    with captured_output():
        export = backend._exported(spec)  # what a process without the kept export does
    exported = time.perf_counter() - start
    with captured_output():
        backend.ready_profile()
    prepared = backend._prepared
    assert prepared == export.prepared  # the kept export is this process's own
    one, per = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        with captured_output():
            whole = calibrator.Calibrator(prepared).calibrate(lambda: iter([[x] for x in inputs]))
        one.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            profile = RangeProfile(Cache(tmp), "probe")
            backend.profile = profile  # _measure keeps its template in this profile
            start = time.perf_counter()
            with captured_output():
                profile.ensure(ids, lambda some: (inputs[ids.index(i)] for i in some),
                               backend._measure)
            per.append(time.perf_counter() - start)
            merged = profile.merged(ids)
        same = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
                   for a, b in zip(_range_views(whole), merged, strict=True))
    load = os.getloadavg()[0]
    print(f"{ws.model_path.name}: {len(ids)} images, {args.repeats} interleaved repeats, "
          f"load average {load:.1f}")
    print(f"export (the Keras model to the calibrator's float model, "
          f"{len(prepared) / 1e6:.1f} MB): {exported:.1f} s")
    print(f"one calibrator: {1000 * min(one) / len(ids):.2f} ms/image (best), "
          f"{1000 * np.median(one) / len(ids):.2f} median")
    print(f"per image (profile): {1000 * min(per) / len(ids):.2f} ms/image (best), "
          f"{1000 * np.median(per) / len(ids):.2f} median")
    print(f"per image / one calibrator (medians): {np.median(per) / np.median(one):.2f}x; "
          f"merged ranges equal the one calibrator's: {same}")


if __name__ == "__main__":
    main()
