"""Seconds of Python-thread time per part of a petq run, from a py-spy raw profile.

    pip install py-spy
    py-spy record -o build/prof.txt -f raw -r 100 --subprocesses --nonblocking -- \
        python benchmarks/bench_lab.py --skip-baseline
    python benchmarks/spy_summary.py build/prof.txt --rate 100

py-spy samples Python threads only: time in native worker threads (the
interpreters' and TensorFlow's thread pools) is not counted, so the parts add up
to less than the run's CPU time. Each sample goes to the first part (in PARTS'
order) whose function appears in its stack; the rest is "other".
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

PARTS = (  # (function name in the stack, part)
    ("convert_task", "converter process"),
    ("_decode_rows", "decoding"),
    ("predict_all", "accuracy passes"),
    ("measure_latency", "latency"),
    ("interleaved_latency", "interleaved latency (reports)"),
    ("write_reports", "reports"),
    ("cached_confusion_png", "confusion figures"),
    ("model_info", "model read (with TensorFlow's import)"),
    ("keras_runner", "Keras model load"),
    ("_bootstrap", "imports"),
)


def summarize(text: str, rate: float) -> Counter:
    """Seconds per part; `text` is py-spy's raw output (`stack count` per record, where a
    process's command line may span lines)."""
    seconds: Counter = Counter()
    for stack, count in re.findall(r"(.*?) (\d+)\n", text, flags=re.S):
        if "petq" not in stack and "spawn" not in stack:
            continue  # the benchmark's own parent process
        part = next((name for function, name in PARTS if function in stack), "other")
        seconds[part] += int(count) / rate
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile", type=Path, help="py-spy record -f raw output")
    parser.add_argument("--rate", type=float, default=100.0, help="py-spy's -r (samples/s)")
    args = parser.parse_args()
    for part, value in summarize(args.profile.read_text(), args.rate).most_common():
        print(f"{value:7.1f} s  {part}")


if __name__ == "__main__":
    main()
