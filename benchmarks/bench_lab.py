"""petq against the lab's own harness on an Oxford-sized synthetic set, in one run.

Both run the lab's seven tasks (native, tflite-fp32, tflite-int8-0.01/0.08/0.3/0.8,
tflite-imbint8) on the same model and the same images, each as its own Python
process from a cold start:
- petq: `python -m petq experiments --dataset-root DIR --cache-dir <fresh> ...`,
  with the CLI's progress callbacks timestamped to give the time per stage;
- the lab: `benchmarks/lab_baseline.py`, the lab's ModelTester harness completed
  as its text asks (per-image decode for every variant, a per-image
  representative dataset, one Keras `predict` per image).
It prints both wall times, the ratio, petq's stages, each variant's metrics side
by side (they must agree to four digits) and whether the two harnesses' .tflite
files are byte-identical.

Usage:
  python benchmarks/bench_lab.py                 # 100 + 100 images per class: 3,700 + 3,700
  python benchmarks/bench_lab.py --small         # 10 + 10 per class, a smoke run
  python benchmarks/bench_lab.py --skip-baseline # petq alone (time per stage)
  python benchmarks/bench_lab.py --decode        # decoding alone: one thread, threads, processes
  python benchmarks/bench_lab.py --read-ahead    # the store's decode from a cold page cache (root)
Everything is written under benchmarks/out/ (ignored by git).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # --decode and --read-ahead import petq from this checkout
OUT = ROOT / "benchmarks" / "out"
DEMO_MODEL = ROOT / "models" / "petq-demo.keras"
VARIANTS = ("native", "tflite-fp32", "tflite-int8-0.01", "tflite-int8-0.08", "tflite-int8-0.3",
            "tflite-int8-0.8", "tflite-imbint8")
METRIC_LINES = {"Accuracy": "accuracy", "Mean precision": "mean_precision",
                "Mean sensitivity": "mean_sensitivity", "G-Mean": "g_mean",
                "Top-5 percentage": "top5"}

# Runs petq's CLI in-process with its progress callback timestamped: the same code
# path as `python -m petq experiments` (its entry point `run`, which also exits), plus
# one list append per progress call.
TIMED_CLI = r"""
import json, sys, time
t0 = time.perf_counter()
events = []
import petq.cli as cli
bars = getattr(cli, "StageBars", None)  # without it: the total time, no stages
if bars is not None:
    original = bars.__call__
    def timed(self, stage, done, total):
        prefix = getattr(self, "prefix", "").rstrip(": ")
        events.append((time.perf_counter() - t0, prefix, stage, done, total))
        return original(self, stage, done, total)
    bars.__call__ = timed
main = cli.main
def timed_main(argv):
    try:
        return main(argv)
    finally:
        with open(sys.argv[1], "w") as f:
            json.dump({"events": events, "end": time.perf_counter() - t0}, f)
cli.main = timed_main
run = getattr(cli, "run", lambda argv: sys.exit(cli.main(argv)))  # older commits: no run
run(sys.argv[2:])
"""


def synthetic_dataset(trainval: int, test: int) -> Path:
    """The synthetic set with `trainval` + `test` images per class (generated once)."""
    root = OUT / f"pets-{trainval}x{test}"
    if not (root / "SYNTHETIC").is_file():
        subprocess.run([sys.executable, "-m", "petq", "synth", "--trainval-per-class",
                        str(trainval), "--test-per-class", str(test), "--output", str(root)],
                       cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    return root


def run_timed(command: list[str], log: Path) -> tuple[float, float]:
    """Wall time and CPU time (user + system of it and every process it waited for, such
    as petq's converter process) of `command`, its output kept in `log`; a failure stops
    the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"})
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(command[:4])}... failed ({done.returncode}):\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def run_petq(dataset: Path, model: Path, tag: str) -> dict:
    cache = Path(tempfile.mkdtemp(prefix=f"cache-{tag}-", dir=OUT))  # cold: a fresh cache
    results = OUT / f"petq-results-{tag}"
    shutil.rmtree(results, ignore_errors=True)
    timing = OUT / f"petq-stages-{tag}.json"
    command = [sys.executable, "-c", TIMED_CLI, str(timing), "experiments", "--model-path",
               str(model), "--dataset-root", str(dataset), "--cache-dir", str(cache),
               "--results-path", str(results)]
    seconds, cpu = run_timed(command, OUT / f"petq-{tag}.log")
    return {"seconds": seconds, "cpu": cpu, "results": results, "cache": cache,
            "stages": stage_times(json.loads(timing.read_text()))}


def run_baseline(dataset: Path, model: Path, tag: str) -> dict:
    results = OUT / f"lab-results-{tag}"
    shutil.rmtree(results, ignore_errors=True)
    summary = OUT / f"lab-summary-{tag}.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "lab_baseline.py"), "--model-path",
               str(model), "--dataset-root", str(dataset), "--results-path", str(results),
               "--summary-json", str(summary)]
    seconds, cpu = run_timed(command, OUT / f"lab-{tag}.log")
    return {"seconds": seconds, "cpu": cpu, "results": results,
            **json.loads(summary.read_text())}


def stage_times(timing: dict) -> dict[str, float]:
    """Seconds per stage, summed over variants, from the timestamped progress calls.

    A stage's time runs from its first to its last progress call for a variant;
    `convert` excludes the `calibrate` span inside it. `start-up` is the time to the
    first call (imports, dataset, model load), `reports` the time after the last.
    """
    events = timing["events"]
    if not events:
        return {"total (no progress calls)": timing["end"]}
    spans: dict[tuple[str, str], list[float]] = {}
    for t, variant, stage, _, _ in events:
        span = spans.setdefault((variant, stage), [t, t])
        span[1] = t
    seconds: dict[str, float] = defaultdict(float)
    for (variant, stage), (first, last) in spans.items():
        seconds[stage] += last - first
        if stage == "convert" and (variant, "calibrate") in spans:
            inner = spans[(variant, "calibrate")]
            seconds[stage] -= inner[1] - inner[0]
    seconds["start-up (to the first progress call)"] = events[0][0]
    seconds["reports (after the last progress call)"] = timing["end"] - events[-1][0]
    seconds["between stages (model loads, interpreters, metrics)"] = (
        timing["end"] - sum(seconds.values())
    )
    return dict(seconds)


def read_metrics(results: Path, variant: str) -> dict[str, float]:
    """The lab's `<variant>-metrics.md` lines (both harnesses write them)."""
    text = (results / f"{variant}-metrics.md").read_text()
    found = {}
    for label, key in METRIC_LINES.items():
        match = re.search(rf"^\* {re.escape(label)}: ([-+0-9.eE]+)", text, re.MULTILINE)
        if match:
            found[key] = float(match.group(1))
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(petq: dict, lab: dict) -> bool:
    """Print the metrics side by side; True when every one agrees to four digits."""
    same = True
    keys = list(METRIC_LINES.values())
    print(f"\n{'variant':18s} " + " ".join(f"{k:>21s}" for k in keys) + "  (petq | lab)")
    for variant in VARIANTS:
        ours, theirs = read_metrics(petq["results"], variant), read_metrics(lab["results"],
                                                                            variant)
        cells = []
        for key in keys:
            a, b = ours.get(key), theirs.get(key)
            agree = a is not None and b is not None and f"{a:.4f}" == f"{b:.4f}"
            same &= agree
            cells.append(f"{a if a is None else f'{a:.4f}'} | "
                         f"{b if b is None else f'{b:.4f}'}{'' if agree else ' !'}")
        print(f"{variant:18s} " + " ".join(f"{c:>21s}" for c in cells))
    return same


def tflite_identity(petq: dict, lab: dict) -> tuple[int, int]:
    """(baseline .tflite files whose bytes petq's fresh cache also holds, files)."""
    ours = {sha256(p) for p in Path(petq["cache"]).rglob("*.tflite")}
    files = [Path(row["tflite"]) for row in lab["rows"] if row.get("tflite")]
    for path in files:
        print(f"  {path.name:40s} {'identical' if sha256(path) in ours else 'DIFFERENT'}")
    return sum(sha256(p) in ours for p in files), len(files)


def _decode_chunk(pixels_path: str, paths: list[str], start: int, size: tuple[int, int]) -> int:
    """A spawned process's share: decode rows start.. straight into the .npy (no pickling)."""
    import numpy as np

    from petq.data import decode, open_image

    pixels = np.load(pixels_path, mmap_mode="r+")
    for row, path in enumerate(paths, start):
        pixels[row] = decode(open_image(path), size)
    pixels.flush()
    return len(paths)


def bench_decode(dataset: Path, counts: list[int], repeats: int) -> None:
    """Decoding n images into a memory-mapped .npy: petq's store with one thread and with
    its threads, and a pool of spawned processes writing their rows (pool start included).
    Interleaved; best of `repeats`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    from petq.data import PetDataset
    from petq.store import DECODE_CHUNK, PARALLEL_MIN_IMAGES, decode_into, decode_workers

    pets = PetDataset.load(dataset)
    paths = [str(pets.image_path(s.image_id)) for s in pets.trainval + pets.test]
    size = (224, 224)
    workers = decode_workers()
    print(f"decoding into a .npy at {size[0]}x{size[1]}; {workers} threads or processes; best "
          f"of {repeats}, interleaved")
    print(f"{'images':>7s} {'one thread':>11s} {'threads':>9s} {'processes':>10s} "
          f"{'threads x':>10s} {'processes x':>12s}")
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        for n in counts:
            target = Path(tmp) / f"pixels-{n}.npy"
            pixels = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8,
                                               shape=(n, *size, 3))
            times: dict[str, list[float]] = defaultdict(list)
            for _ in range(repeats):
                start = time.perf_counter()
                decode_into(pixels, paths[:n], size, workers=1)
                times["serial"].append(time.perf_counter() - start)
                start = time.perf_counter()
                decode_into(pixels, paths[:n], size, workers=workers)
                times["threads"].append(time.perf_counter() - start)
                pixels.flush()
                start = time.perf_counter()
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(workers, mp_context=context) as pool:
                    chunks = range(0, n, DECODE_CHUNK)
                    list(pool.map(_decode_chunk, [str(target)] * len(chunks),
                                  [paths[i:i + DECODE_CHUNK] for i in chunks], chunks,
                                  [size] * len(chunks)))
                times["processes"].append(time.perf_counter() - start)
            best = {k: min(v) for k, v in times.items()}
            note = "  (threads: one, under PARALLEL_MIN_IMAGES)" if n < PARALLEL_MIN_IMAGES else ""
            print(f"{n:7d} {best['serial']:10.2f}s {best['threads']:8.2f}s "
                  f"{best['processes']:9.2f}s {best['serial'] / best['threads']:9.2f}x "
                  f"{best['serial'] / best['processes']:11.2f}x{note}", flush=True)
            del pixels


def bench_read_ahead(dataset: Path, repeats: int) -> None:
    """The store's threaded decode of every image with the page cache dropped first (as
    after a reboot, or once other files pushed the images out), with and without reading
    the files ahead (`petq.store.prefetch`); then once more warm. Needs root."""
    import numpy as np

    from petq.data import PetDataset
    from petq.store import decode_into

    pets = PetDataset.load(dataset)
    paths = [str(pets.image_path(s.image_id)) for s in pets.trainval + pets.test]
    size = (224, 224)
    pixels = np.empty((len(paths), *size, 3), np.uint8)

    def timed(read_ahead: bool, cold: bool = True) -> float:
        if cold:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
        start = time.perf_counter()
        decode_into(pixels, paths, size, read_ahead=read_ahead)
        return time.perf_counter() - start

    print(f"{len(paths)} images, the store's threads, page cache dropped before each; seconds")
    for _ in range(repeats):  # interleaved
        print(f"  without read-ahead {timed(False):6.2f}   with read-ahead {timed(True):6.2f}",
              flush=True)
    print(f"  warm (files cached), with read-ahead {timed(True, cold=False):6.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="10 + 10 images per class")
    parser.add_argument("--trainval-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--model-path", type=Path, default=DEMO_MODEL)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--keep-cache", action="store_true",
                        help="keep petq's fresh cache folder (removed by default)")
    parser.add_argument("--decode", type=int, nargs="*", metavar="N",
                        help="time decoding N images (default: 32 64 128 512 2048) and stop")
    parser.add_argument("--repeats", type=int, default=3, help="for --decode, --read-ahead")
    parser.add_argument("--read-ahead", action="store_true",
                        help="time the store's decode from a cold page cache (needs root)")
    args = parser.parse_args()
    trainval, test = (10, 10) if args.small else (args.trainval_per_class, args.test_per_class)
    OUT.mkdir(parents=True, exist_ok=True)
    dataset = synthetic_dataset(trainval, test)
    if args.decode is not None:
        bench_decode(dataset, args.decode or [32, 64, 128, 512, 2048], args.repeats)
        return 0
    if args.read_ahead:
        bench_read_ahead(dataset, args.repeats)
        return 0
    tag = f"{trainval}x{test}"
    print(f"dataset {dataset} ({37 * trainval} trainval + {37 * test} test images), model "
          f"{args.model_path.name}; {os.cpu_count()} cores, {platform.processor() or 'cpu'}, "
          f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    petq = run_petq(dataset, args.model_path, tag)
    print(f"\npetq cold:   {petq['seconds']:7.1f} s  (CPU {petq['cpu']:.1f} s, all its processes)",
          flush=True)
    for stage, seconds in sorted(petq["stages"].items(), key=lambda kv: -kv[1]):
        print(f"  {stage:54s} {seconds:6.1f} s")
    record = {"dataset": str(dataset), "model": str(args.model_path), "petq_seconds":
              petq["seconds"], "petq_cpu_seconds": petq["cpu"], "petq_stages": petq["stages"]}
    if not args.skip_baseline:
        lab = run_baseline(dataset, args.model_path, tag)
        print(f"lab harness: {lab['seconds']:7.1f} s  (CPU {lab['cpu']:.1f} s)")
        for row in lab["rows"]:
            print(f"  {row['variant']:18s} convert {row['optimize_seconds']:6.1f} s, "
                  f"test {row['test_seconds']:6.1f} s")
        ratio = lab["seconds"] / petq["seconds"]
        print(f"\nspeed-up: {ratio:.2f}x (lab harness time / petq cold time, one run each)")
        same = compare(petq, lab)
        print(f"\nall metrics equal to four digits: {'yes' if same else 'NO'}")
        print("baseline .tflite files also in petq's cache (byte-identical):")
        identical, files = tflite_identity(petq, lab)
        print(f"  {identical} of {files}")
        record |= {"lab_seconds": lab["seconds"], "ratio": ratio, "metrics_equal": same,
                   "tflite_identical": [identical, files], "lab_rows": lab["rows"]}
    (OUT / f"bench_lab-{tag}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    if not args.keep_cache:
        shutil.rmtree(petq["cache"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
