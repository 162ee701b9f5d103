"""Command line: the lab's experiment runner plus synth, train, download and list.

`python -m petq experiments` keeps the lab's flags and task names; with no
model or dataset it runs on the embedded demo (shipped model, synthetic data).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from petq.console import (
    StageBars,
    add_common_options,
    download_dataset,
    open_workspace,
    result_line,
)
from petq.errors import DiskFullError, PetqError, SkippedImagesWarning
from petq.types import DEFAULT_CALIBRATION_SEED, Calibration, VariantSpec, parse_tasks


def cmd_experiments(args: argparse.Namespace) -> int:
    from petq.engine import start_converter

    ws = open_workspace(args)
    if args.tasks is None:  # a .tflite file brought as it is: evaluate it as it is
        args.tasks = ["source"] if ws.source_is_tflite else ["all"]
    # on a first run, the converter process starts before the calibration picks
    # (scikit-learn's import alone takes a second); evaluate_run takes it, or stops it
    started = start_converter(ws, parse_tasks(args.tasks))
    try:
        return _experiments(args, ws, started)
    finally:
        if started is not None:
            started.stop()  # an error before evaluate_run took it: TensorFlow's import


def _experiments(args: argparse.Namespace, ws, started) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from petq.engine import after_pass, after_variant, evaluate_run

    specs, refused = resolve_specs(ws, args)
    if not specs and len(refused) == 1:
        raise next(iter(refused.values()))  # the run's one task: its error is the run's
    for error in refused.values():  # each fails alone, before anything is decoded
        print(f"petq: error: {error}", file=sys.stderr)
    if not specs:
        raise PetqError(f"no variant could be evaluated ({', '.join(refused)})")
    data_note = " (synthetic demo data)" if ws.dataset.synthetic else ""
    print(f"model {ws.model_path}, dataset {ws.dataset.root}{data_note}, "
          f"{len(specs)} task(s), {ws.threads} thread(s)", file=sys.stderr)
    results, failures = [], list(refused)
    bars = StageBars()

    def progress_for(running) -> StageBars:  # one spec, or two side by side
        bars.close()
        bars.prefix = " + ".join(spec.name for spec in running) + ": "
        return bars

    passes: dict = {}  # spec -> its pass's Details, filled in the figures thread

    def scored(spec: VariantSpec, scores) -> None:  # before its latency is timed
        figures.submit(after_pass, ws, spec, scores, args.test_dataset_fraction, passes, specs)

    start = time.perf_counter()
    # each variant's figure and statistics are made in a thread while the next is evaluated
    with ThreadPoolExecutor(1) as figures:
        for spec, outcome, computed in evaluate_run(ws, specs, args.test_dataset_fraction,
                                                    progress_for, scored=scored,
                                                    started=started):
            bars.close()
            if isinstance(outcome, DiskFullError):  # every variant after it would fail alike
                raise outcome
            if isinstance(outcome, PetqError):  # a recipe the model cannot take: go on
                named = str(outcome) if spec.name in str(outcome) else f"{spec.name}: {outcome}"
                print(f"petq: error: {named}", file=sys.stderr)
                failures.append(spec.name)
                continue
            # results come in batches (latencies are timed once the converter process is
            # idle), so the time since the run began, not since the last line
            how = (f"computed, {time.perf_counter() - start:.1f} s into the run" if computed
                   else "cached")
            print(f"{spec.name:28s} {result_line(outcome)}  ({how})")
            results.append(outcome)
            # a failure here is met and raised again by write_reports
            figures.submit(after_variant, ws, outcome, specs)
    if not results:
        raise PetqError(f"no variant could be evaluated ({', '.join(failures)})")
    from petq.report import write_reports

    counts = {"test": results[0].images} | {  # trainval: when this run opened it
        split: c for split, c in ws.image_counts(args.test_dataset_fraction).items()
        if split == "trainval"}
    skipped = [f"{split}: {c.text('evaluated' if split == 'test' else 'decoded')}"
               for split, c in sorted(counts.items()) if c.skipped]
    if skipped:  # one line for the run, whether its images were decoded now or before
        print(f"petq: warning: {ws.dataset.root}: images skipped: " + "; ".join(skipped)
              + " (see summary.md)", file=sys.stderr)
    written = write_reports(ws, results, args.results_path)
    if args.layers:
        written += write_layer_reports(ws, results, Path(args.results_path), failures)
    config = {
        "model_path": str(ws.model_path), "dataset_root": str(ws.dataset.root),
        "results_path": str(args.results_path), "test_dataset_fraction":
        args.test_dataset_fraction, "tasks": [s.name for s in specs], "threads": ws.threads,
        "cache_dir": str(ws.cache.root), "synthetic": ws.dataset.synthetic,
        "contract": ws.contract.to_dict() | {"info": None},
        "contract_source": ws.contract_source, "seeds": calibration_seeds(args),
        "test_images": results[0].images.to_dict(), "failed_tasks": failures,
    }
    (Path(args.results_path) / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {len(written)} report files and config.json to {args.results_path}")
    if failures:
        print(f"petq: {len(failures)} task(s) failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


def write_layer_reports(ws, results, results_path: Path, failures: list[str]) -> list[Path]:
    """`<prefix>-layers.csv` for every quantized variant of the run."""
    from petq.cache import write_bytes_atomic
    from petq.report import layers_csv

    written = []
    for result in results:
        spec = result.spec
        if spec.is_native or not spec.recipe.quantized:
            continue
        bars = StageBars(f"{spec.name}: ")
        try:
            stats = ws.layer_stats(spec, progress=bars)
        except PetqError as exc:
            bars.close()
            print(f"petq: error: {spec.name}: per-layer statistics: {exc}", file=sys.stderr)
            failures.append(f"{spec.name} (layers)")
            continue
        bars.close()
        path = results_path / f"{spec.name}-layers.csv"
        write_bytes_atomic(path, layers_csv(stats).encode())
        written.append(path)
    return written


def calibration_seeds(args: argparse.Namespace) -> list[int]:
    """--seeds S1 S2 ... or --seed-count N (the lab's seed, then 1, 2, ...), else --seed."""
    if args.seeds:
        return list(dict.fromkeys(args.seeds))
    if args.seed_count:
        if args.seed_count < 1:
            raise PetqError(f"--seed-count must be at least 1, got {args.seed_count}")
        return [args.seed, *range(1, args.seed_count)]
    return [args.seed]


def resolve_specs(ws, args: argparse.Namespace
                  ) -> tuple[list[VariantSpec], dict[str, PetqError]]:  # fmt: skip
    """The run's specs from --tasks, with --calibration-classes and --seed applied, and
    those this model or dataset cannot serve (by name, with the reason: `Workspace.check`),
    found before any image is decoded: each of those fails alone."""
    specs = parse_tasks(args.tasks)
    if args.calibration_classes:
        classes = tuple(ws.class_index(c) for c in args.calibration_classes)
        specs = [s.with_calibration(Calibration(classes=classes))
                 if s.calibration.kind == "classes" else s for s in specs]
    if args.seeds or args.seed_count or args.seed != DEFAULT_CALIBRATION_SEED:
        seeds = calibration_seeds(args)  # given seeds replace a task name's own
        specs = [s.with_calibration(Calibration(s.fraction, seed=seed, count=s.calibration.count))
                 if s.uses_seed else s
                 for s in specs for seed in (seeds if s.uses_seed else [None])]
    specs = list(dict.fromkeys(specs))
    refused: dict[str, PetqError] = {}
    for spec in specs:
        try:
            ws.check(spec)
        except PetqError as exc:
            refused[spec.name] = exc
    return [s for s in specs if s.name not in refused], refused


def cmd_list(args: argparse.Namespace) -> int:
    ws = open_workspace(args)
    results = ws.results()
    if not results:
        print("no cached results for this model and dataset")
        return 0
    for r in results:
        print(f"{r.variant:28s} test {r.test_fraction:<5g} {result_line(r)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """Every recipe: its key (`petq sweep --recipes`), its variant names (`--tasks`), backend,
    scheme and what it is for."""
    from petq.types import RECIPES

    rows = [("recipe", "variant names (--tasks)", "backend", "scheme")]
    for recipe in RECIPES.values():
        pattern = recipe.stem + ("-<cal>" if recipe.calibrates else "")
        rows.append((recipe.key, pattern + (f"-{recipe.tag}" if recipe.tag else ""),
                     recipe.backend.value, recipe.scheme))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    summaries = ["what it is", *(r.summary for r in RECIPES.values())]
    for row, summary in zip(rows, summaries, strict=True):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              + "  " + summary)
    print("\n<cal>: a calibration fraction of trainval (0.08), or breeds (c5, c3+5; for "
          "tflite-int8 the lab's spelling, tflite-imbint8[-c3+5]); add -s<seed> for another "
          "seeded pick, -keep<N> to keep the N worst layers in float.")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from petq.synth import generate

    bars = StageBars()
    try:
        root = generate(args.output, trainval_per_class=args.trainval_per_class,
                        test_per_class=args.test_per_class, seed=args.seed,
                        progress=lambda done, total: bars("generating synthetic pets", done,
                                                          total))
    finally:
        bars.close()
    print(f"synthetic pets dataset in {root}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from petq.demo import DEMO_MODEL, ensure_demo_dataset
    from petq.train import TrainConfig, train

    config = TrainConfig.from_options(args)
    root = args.dataset_root or ensure_demo_dataset()

    def progress(epoch: int, epochs: int, logs: dict) -> None:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
        print(f"epoch {epoch}/{epochs}  {shown}", flush=True)

    info = train(root, args.model_path or DEMO_MODEL, config, progress=progress)
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from petq.download import download_model

    if not (args.dataset or args.model):
        raise PetqError("say what to download: --dataset and/or --model")
    if args.dataset:
        download_dataset(args.dataset_root)
        print(f"Oxford-IIIT Pet in {args.dataset_root}")
    if args.model:
        path = download_model(args.model_path)
        print(f"lab model in {path}")
    return 0


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("experiments", help="the lab's quantization experiments, with reports")
    add_common_options(p)
    p.add_argument("--results-path", type=Path, default=Path("results"),
                   help="where <prefix>-metrics.md, confusion PNGs and summary.md go")
    p.add_argument("--test-dataset-fraction", type=fraction, default=1.0,
                   help="stratified fraction of the test split to evaluate on (0, 1]")
    p.add_argument("--tasks", nargs="+", default=None,
                   help="variant names (native tflite-fp32 tflite-int8-<fraction> "
                        "tflite-imbint8 aeq-wi8-ai8-<fraction> ...; `petq recipes` lists them) "
                        "| all (the lab's seven) | tflite-int8-all | recipes (every recipe once) "
                        "| source (a .tflite source as it is). Default: all; for a .tflite "
                        "source, source")
    p.add_argument("--calibration-classes", nargs="+",
                   help="breed names or indices calibrating tflite-imbint8 (default: index 5)")
    p.add_argument("--seed", type=int, default=DEFAULT_CALIBRATION_SEED,
                   help="seed of the stratified INT8 calibration pick")
    p.add_argument("--layers", action="store_true",
                   help="also write <prefix>-layers.csv (per-layer quantization error) for "
                        "each quantized variant")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, nargs="+",
                       help="run every fraction-calibrated task once per seed (the spread "
                            "of calibration picks shows in summary.md and Compare)")
    seeds.add_argument("--seed-count", type=int,
                       help="like --seeds with N seeds: --seed, then 1, 2, ...")
    p.set_defaults(func=cmd_experiments)

    from petq import classify, curve, outliers, sweep, tunerun  # registered here

    classify.add_parser(sub)
    sweep.add_parser(sub)
    tunerun.add_parser(sub)
    curve.add_parser(sub)
    outliers.add_parser(sub)

    p = sub.add_parser("recipes", help="list the quantization recipes and their names")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("list", help="list cached results for a model and dataset")
    add_common_options(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("synth", help="generate the synthetic pets dataset (Oxford layout)")
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--trainval-per-class", type=int, default=40)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    from petq.train import TrainConfig

    p = sub.add_parser("train", help="train the lab's head on a backbone (default: the demo "
                                     "model's configuration)")
    p.add_argument("--dataset-root", type=Path, help="default: synthetic demo dataset")
    p.add_argument("--model-path", type=Path,
                   help="output .keras (default: models/petq-demo.keras)")
    TrainConfig.add_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("download", help="fetch Oxford-IIIT Pet and/or the lab's trained model")
    p.add_argument("--dataset", action="store_true")
    p.add_argument("--dataset-root", type=Path, default=Path("data/oxford-iiit-pet"))
    p.add_argument("--model", action="store_true")
    p.add_argument("--model-path", type=Path, default=Path("models/pet-dataset-tensorflow.h5"))
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out
    # skipped images are said once per run, with the counts the reports record
    warnings.filterwarnings("ignore", category=SkippedImagesWarning)
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "synth" and args.output is None:
        from petq.demo import demo_dataset_root

        args.output = demo_dataset_root()
    try:
        return args.func(args)
    except PetqError as exc:
        print(f"petq: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("petq: interrupted; the cache holds only complete entries", file=sys.stderr)
        return 130


def run(argv: list[str] | None = None) -> NoReturn:
    """`petq` and `python -m petq`: `main`, then exit. What is left is frozen first
    (`gc.freeze`): the interpreter's collections at exit would otherwise walk TensorFlow's
    objects for nothing (benchmarks/README.md measures it)."""
    code = main(argv)
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
