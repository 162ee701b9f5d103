"""Benchmarks, measured not asserted.

1. Evaluation overhead: on the same test images and the same .tflite, petq's
   accuracy pass (`petq.evaluate.predict_all`, from the decoded store) against a
   bare loop of set_tensor + invoke + get_tensor on pre-made, pre-quantized inputs.
2. The lab's full task set through the CLI, cold (empty cache) and warm (rerun).
3. With --side-by-side: two variants' accuracy passes (`Workspace.predictions`) one after
   the other on all threads, against both at once on half the threads each, as
   `petq.engine.evaluate_run` runs them once the converter process is idle.
4. With --busy-core: the latency medians of FP32 and the variant (`measure_latency`, on
   the run's threads) on a quiet machine and beside one busy core, as they were when
   timed beside the converter process's calibration (why `evaluate_run` waits for it);
   and their accuracy passes beside one busy core on one and on two interpreter threads
   (why `evaluate_run` runs them on one while the converter process works).

Usage: python benchmarks/bench_eval.py [--variant tflite-int8-0.08] [--model M] [--skip-cli]
       python benchmarks/bench_eval.py --side-by-side [--variant V] [--other V2]
       python benchmarks/bench_eval.py --busy-core [--variant V]
Runs on the embedded demo (demo model + synthetic dataset) by default.
`--model lab-architecture` times the overhead on the lab's architecture instead
(MobileNetV2 at 224x224 + the lab's head, untrained: the same work per image as
the lab's trained model, built offline once under cache/bench/).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from petq.data import preprocess  # noqa: E402
from petq.demo import default_workspace  # noqa: E402
from petq.evaluate import predict_all  # noqa: E402
from petq.runtime import LiteRTRunner  # noqa: E402
from petq.types import VariantSpec  # noqa: E402


def bare_loop(runner: LiteRTRunner, inputs: np.ndarray) -> float:
    interp, index, out = runner.interpreter, runner.input_index, runner.output_index
    start = time.perf_counter()
    for i in range(len(inputs)):
        interp.set_tensor(index, inputs[i:i + 1])
        interp.invoke()
        interp.get_tensor(out)
    return time.perf_counter() - start


def lab_architecture_model() -> Path:
    """The lab's network with untrained weights, built once (the same bytes after)."""
    path = ROOT / "cache" / "bench" / "lab-architecture.keras"
    if not path.is_file():
        from petq.train import build_model

        path.parent.mkdir(parents=True, exist_ok=True)
        build_model(37, weights=None, seed=0).save(path)
    return path


def bench_overhead(variant: str, repeats: int, threads: int | None, model: str | None) -> None:
    if model == "lab-architecture":
        model = str(lab_architecture_model())
    ws = default_workspace(model_path=model, threads=threads)
    spec = VariantSpec.from_name(variant)
    entry, _ = ws.tflite(spec)
    store = ws.store("test")
    pixels, kept = store.pixels_of(ws.dataset.test_samples())
    runner = LiteRTRunner(entry.file("model.tflite"), ws.threads)
    premade = runner.quantize(preprocess(np.asarray(pixels), ws.contract))
    n = len(kept)
    petq_times, bare_times = [], []
    predict_all(runner, pixels[:32], ws.contract)  # warm-up
    bare_loop(runner, premade[:32])
    for _ in range(repeats):  # interleaved, so drift hits both alike
        start = time.perf_counter()
        predict_all(runner, pixels, ws.contract)
        petq_times.append(time.perf_counter() - start)
        bare_times.append(bare_loop(runner, premade))
    petq_best, bare_best = min(petq_times), min(bare_times)
    paired = np.array(bare_times) / np.array(petq_times)  # each pair ran back to back
    print(f"model {ws.model_path.name}, variant {variant}, {n} test images, "
          f"{ws.threads} thread(s), best of {repeats}")
    print(f"  petq evaluation : {n / petq_best:8.1f} img/s ({petq_best:.2f} s)")
    print(f"  bare invoke loop: {n / bare_best:8.1f} img/s ({bare_best:.2f} s)")
    print(f"  ratio petq/bare : {bare_best / petq_best:.3f} best/best; paired runs "
          f"median {np.median(paired):.3f}, range {paired.min():.3f}-{paired.max():.3f}")


def bench_side_by_side(variant: str, other: str, repeats: int, threads: int | None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ws = default_workspace(threads=threads)
    pair = (VariantSpec.from_name(variant), VariantSpec.from_name(other))
    for spec in pair:
        ws.predictions(spec)  # converted and warm
    half = max(1, ws.threads // 2)

    def one_after_the_other() -> float:
        start = time.perf_counter()
        for spec in pair:
            ws.predictions(spec)
        return time.perf_counter() - start

    def side_by_side() -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda spec: ws.predictions(spec, threads=half), pair))
        return time.perf_counter() - start

    serial, both = [], []
    for _ in range(repeats):  # interleaved
        serial.append(one_after_the_other())
        both.append(side_by_side())
    print(f"{variant} and {other}, {len(ws.dataset.test)} test images each, best of {repeats}")
    print(f"  one after the other, {ws.threads} thread(s) each: {min(serial):.2f} s")
    print(f"  side by side, {half} thread(s) each:           {min(both):.2f} s")


def bench_busy_core(variant: str, repeats: int, threads: int | None) -> None:
    from petq.evaluate import measure_latency

    ws = default_workspace(threads=threads)
    x = preprocess(np.asarray(ws.store("test").pixels[0]), ws.contract)
    runners = {name: ws.runner(VariantSpec.from_name(name)) for name in ("tflite-fp32", variant)}
    for runner in runners.values():
        measure_latency(runner, x)  # warm

    def medians() -> dict[str, list[float]]:
        return {name: [measure_latency(runner, x)["latency_p50_ms"] for _ in range(repeats)]
                for name, runner in runners.items()}

    def passes() -> dict[tuple[str, int], float]:  # best of 3 accuracy passes, seconds
        seconds = {}
        for name in runners:
            for threads_ in (1, 2):
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    ws.predictions(VariantSpec.from_name(name), threads=threads_)
                    times.append(time.perf_counter() - start)
                seconds[name, threads_] = min(times)
        return seconds

    quiet = medians()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one core busy
    try:
        time.sleep(0.5)
        busy = medians()
        busy_passes = passes()
    finally:
        burner.kill()
    print(f"latency medians (ms) on {ws.threads} thread(s), {repeats} timings each "
          "(median of them, range)")
    for name in runners:
        for label, found in (("quiet", quiet[name]), ("one core busy", busy[name])):
            print(f"  {name:20s} {label:14s} {np.median(found):7.3f}  "
                  f"({min(found):.3f}-{max(found):.3f})")
    n = len(ws.dataset.test)
    print(f"accuracy passes beside one busy core ({n} images, best of 3), on one and two "
          "interpreter threads (what petq.engine's passes run on while the converter works)")
    for (name, threads_), seconds in busy_passes.items():
        print(f"  {name:20s} {threads_} thread(s)    {seconds:6.2f} s")


def bench_cli(threads: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "petq", "experiments", "--tasks", "all",
               "--cache-dir", f"{tmp}/cache", "--results-path", f"{tmp}/results"]
        if threads:
            cmd += ["--threads", str(threads)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        for label in ("cold (empty cache)", "warm (cached)"):
            start = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            print(f"  lab task set, {label}: {time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tflite-int8-0.08")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--model", help="a .keras model, or lab-architecture (default: demo)")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--side-by-side", action="store_true",
                        help="time two accuracy passes side by side (section 3) and stop")
    parser.add_argument("--other", default="tflite-int8-0.3",
                        help="the second variant of --side-by-side")
    parser.add_argument("--busy-core", action="store_true",
                        help="latency medians quiet and beside one busy core, and stop")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    if args.side_by_side:
        bench_side_by_side(args.variant, args.other, args.repeats, args.threads)
        return
    if args.busy_core:
        bench_busy_core(args.variant, args.repeats, args.threads)
        return
    bench_overhead(args.variant, args.repeats, args.threads, args.model)
    if not args.skip_cli:
        bench_cli(args.threads)


if __name__ == "__main__":
    main()
