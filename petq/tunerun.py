"""`petq tune`'s faces: the command and what a tune leaves behind (the search and its
statistics live in petq.tune and petq.certify).

`write_outputs` writes tune.md (the decision, the certified bound, the candidates with
their selection estimates, the Pareto front), tune.json (the same as data, both image
lists included) and the chosen `.tflite` with its sidecar JSON; `read_outputs` reads them
back for the Tune page. The page runs a tune as a background job (petq.jobs, kind TUNE),
whose worker calls petq.tune.tune and `write_outputs` into the job's folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from petq.tune import (
    DEFAULT_BUDGET,
    DEFAULT_CERTIFY_TOP,
    METRICS,
    OBJECTIVES,
    Candidate,
    Engine,
    TuneConfig,
    TuneError,
    TuneOutcome,
    amount,
    change_text,
    tune,
)

# ---------------------------------------------------------------- outputs


def tune_markdown(outcome: TuneOutcome) -> str:
    """tune.md: the decision, the certified bound, the candidates (selection estimates),
    the Pareto front."""
    cfg = outcome.config
    unit = "%" if cfg.relative else " pts"
    lines = ["# petq tune", "", outcome.decision(), ""]
    lines += [f"- {line}" for line in outcome.advice()]
    if outcome.advice():
        lines.append("")
    split = outcome.split
    lines += [
        f"- Held to: {cfg.metric} drop below {amount(cfg.max_drop, cfg)} against "
        f"{outcome.reference}, confidence {cfg.confidence:.0%} (each of at most "
        f"{cfg.certify_top} certification test(s) at {cfg.test_confidence:.2%}, Bonferroni)",
        f"- Test images: {len(split.selection) if split else 0} for selection, "
        f"{len(split.certification) if split else 0} for certification (stratified, seed "
        f"{cfg.seed}); both lists are in tune.json",
        f"- Objective: {cfg.objective}; {outcome.built} candidate(s) built (budget "
        f"{cfg.budget}), {outcome.attempts} certification test(s); {outcome.stopped}; "
        f"{outcome.seconds:.1f} s",
    ]
    if cfg.guard_breeds is not None:
        lines.append(f"- Breed guard: {len(cfg.guard_breeds) or 'every'} breed(s); a breed "
                     "whose sensitivity interval lies entirely below -max drop fails a "
                     "candidate")
    if cfg.metric == "g-mean":
        lines.append("- G-Mean bounds are paired percentile bootstraps, a large-sample "
                     "approximation, held no tighter than the score bound of a variant "
                     "that agrees with the reference on every image")
    chosen = outcome.chosen
    if chosen is not None:
        b = chosen.certification
        lines += ["", "## Certified", "",
                  f"{chosen.name}: {cfg.metric} change {change_text(b.estimate, cfg)} on "
                  f"{b.n} certification images, one-sided {b.confidence:.2%} lower bound "
                  f"{change_text(b.bound, cfg)} ({b.method}; {b.only_reference} image(s) only "
                  f"{outcome.reference} gets right, {b.only_variant} only {chosen.name})."]
    objective = "Size" if cfg.objective == "size" else "Latency p50"
    lines += ["", "## Candidates (selection part)", "",
              f"| # | variant | why | {objective} | {cfg.metric} | change | bound | "
              "verdict |", "|---|---|---|---|---|---|---|---|"]
    for i, c in enumerate(outcome.candidates, 1):
        shown = _objective(c, cfg.objective)
        verdict = c.state.value + (f": {c.error}" if c.error else "")
        if c.certification is not None:
            verdict += f" (certification bound {change_text(c.certification.bound, cfg)})"
        if c.selection_harm or c.certification_harm:
            verdict += " (hurt: " + ", ".join(
                f"{h.breed} {100 * h.difference:+.0f}" for h in
                (c.certification_harm or c.selection_harm)) + ")"
        lines.append(
            f"| {i} | {c.name} | {c.why} | {shown} | "
            f"{'' if c.selection_metric is None else f'{c.selection_metric:.4f}'} | "
            f"{'' if c.selection is None else f'{100 * c.selection.estimate:+.1f}{unit}'} | "
            f"{'' if c.selection is None else f'{100 * c.selection.bound:+.1f}{unit}'} | "
            f"{verdict.replace('|', '/')} |")
    if cfg.objective == "latency":
        lines += ["", "Latencies are each candidate's median from its own evaluation (pool "
                  "tasks may run side by side, and the machine may be busy): indicative. "
                  "The search order comes from the recipe, not from these numbers; Compare "
                  "times two variants interleaved."]
    lines += ["", f"## Pareto front: {objective.lower()} against {cfg.metric} (selection "
              "part)", ""]
    front = outcome.pareto()
    if front:
        lines += [f"- {c.name}: {_objective(c, cfg.objective)}, {cfg.metric} "
                  f"{c.selection_metric:.4f}" for c in front]
    else:
        lines.append("- no candidate was built")
    lines += ["", f"Reference {outcome.reference}: {cfg.metric} "
              f"{outcome.reference_selection:.4f} on the selection part"
              if outcome.reference_selection is not None else ""]
    return "\n".join(lines).rstrip() + "\n"


def _objective(candidate: Candidate, objective: str) -> str:
    value = candidate.objective_value(objective)
    if value is None:
        return ""
    return f"{value:,} bytes" if objective == "size" else f"{value:.3f} ms"


def write_outputs(ws, outcome: TuneOutcome, results_path: Path | str) -> list[Path]:
    """tune.md, tune.json and, when certified, the chosen `<variant>.tflite` with its
    sidecar `<variant>.json` (recipe, calibration source, layers kept in float)."""
    from petq.cache import write_bytes_atomic, write_json_atomic

    root = Path(results_path)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    write_bytes_atomic(root / "tune.md", tune_markdown(outcome).encode())
    write_json_atomic(root / "tune.json", outcome.to_dict())
    written += [root / "tune.md", root / "tune.json"]
    if outcome.chosen is not None:
        written += write_chosen(ws, outcome, root)
    return written


def chosen_record(ws, outcome: TuneOutcome) -> dict[str, Any]:
    """What the shipped file's sidecar says: recipe, calibration source, kept layers,
    and the certificate."""
    from petq.workspace import library_versions

    c = outcome.chosen
    spec = c.spec
    entry = ws.cached_tflite(spec)
    if entry is None:
        raise TuneError(f"{spec.name}: its .tflite is not in the cache {ws.cache.root}")
    calibration = [s.image_id for s in ws.calibration_samples(spec)]
    return {
        "variant": spec.name, "description": spec.describe(ws.class_names),
        "recipe": spec.recipe.to_dict(), "scheme": spec.recipe.scheme,
        "calibration": {"kind": spec.calibration.kind, "fraction": spec.fraction,
                        "seed": spec.seed if spec.uses_seed else None,
                        "classes": list(spec.classes), "split": "trainval",
                        "count": c.calibration_count, "image_ids": calibration},
        "kept_float_layers": list(ws.kept_float_layers(spec)),
        "source_model": str(ws.model_path), "source_sha256": ws.model_sha,
        "file_size_bytes": entry.file("model.tflite").stat().st_size,
        "certificate": {"reference": outcome.reference, "max_drop": outcome.config.max_drop,
                        "relative": outcome.config.relative,
                        "metric": outcome.config.metric,
                        "confidence": outcome.config.confidence,
                        "certification_images": len(outcome.split.certification),
                        "bound": c.certification.to_dict()},
        "versions": library_versions(),
    }


def write_chosen(ws, outcome: TuneOutcome, root: Path) -> list[Path]:
    from petq.cache import write_bytes_atomic, write_json_atomic

    record = chosen_record(ws, outcome)
    name = outcome.chosen.name
    entry = ws.cached_tflite(outcome.chosen.spec)
    write_bytes_atomic(root / f"{name}.tflite", entry.file("model.tflite").read_bytes())
    write_json_atomic(root / f"{name}.json", record)
    return [root / f"{name}.tflite", root / f"{name}.json"]


# ---------------------------------------------------------------- reading it back


@dataclass(frozen=True)
class CandidateRow:
    """One candidate as the Tune page shows it (from tune.json)."""

    variant: str
    why: str
    objective: float | None
    metric: float | None
    change: float | None
    bound: float | None
    verdict: str
    pareto: bool


@dataclass(frozen=True)
class TuneReport:
    """What a finished tune wrote (`write_outputs`), read back from its folder."""

    folder: Path
    decision: str
    advice: tuple[str, ...]
    certified: bool
    objective: str
    metric: str
    relative: bool
    rows: tuple[CandidateRow, ...]
    chosen_file: Path | None


def read_outputs(folder: Path | str) -> TuneReport | None:
    """The tune written into `folder`, or None when its tune.json is not there (yet)."""
    folder = Path(folder)
    try:
        data = json.loads((folder / "tune.json").read_text())
    except (OSError, ValueError):
        return None
    config = TuneConfig.from_dict(data["config"])
    front = set(data["pareto"])
    value_key = "file_size_bytes" if config.objective == "size" else "latency_p50_ms"
    rows = tuple(CandidateRow(
        variant=c["variant"], why=c["why"], objective=c[value_key],
        metric=c["selection_metric"],
        change=c["selection"]["estimate"] if c["selection"] else None,
        bound=c["selection"]["bound"] if c["selection"] else None,
        verdict=c["state"] + (f": {c['error']}" if c["error"] else ""),
        pareto=c["variant"] in front) for c in data["candidates"])
    chosen = folder / f"{data['chosen']}.tflite" if data["chosen"] else None
    return TuneReport(folder=folder, decision=data["decision"], advice=tuple(data["advice"]),
                      certified=bool(data["certified"]), objective=config.objective,
                      metric=config.metric, relative=config.relative, rows=rows,
                      chosen_file=chosen if chosen and chosen.exists() else None)


# ---------------------------------------------------------------- command line


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `petq tune` on the CLI's subparsers."""
    from petq.console import add_common_options

    p = subparsers.add_parser(
        "tune", help="find the smallest (or fastest) variant whose drop against FP32 is "
                     "certified below --max-drop on held-out test images")
    p.add_argument("--max-drop", type=float, required=True,
                   help="the largest drop to ship, in (0, 1): 0.01 = one point of accuracy "
                        "(absolute), or 1%% of the reference with --relative")
    p.add_argument("--relative", action="store_true",
                   help="--max-drop is a fraction of the reference's metric")
    p.add_argument("--metric", choices=METRICS, default="accuracy",
                   help="what the drop is measured in (default: %(default)s)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="confidence of the certificate, in (0.5, 1) (default: %(default)s)")
    p.add_argument("--objective", choices=OBJECTIVES, default="size",
                   help="what to minimise among the variants that certify (default: "
                        "%(default)s)")
    p.add_argument("--guard-breeds", nargs="*", metavar="BREED",
                   help="also fail a candidate when a breed's sensitivity interval lies "
                        "entirely below -max drop: these breeds (names or indices), or "
                        "every breed when none is named")
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET,
                   help="most candidates to build (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the selection/certification split (default: %(default)s)")
    p.add_argument("--certify-top", type=int, default=DEFAULT_CERTIFY_TOP,
                   help="most candidates tested on the certification part, each at a "
                        "Bonferroni share of the error (default: %(default)s)")
    p.add_argument("--certification-fraction", type=float, default=0.5,
                   help="share of each breed's test images held out for certification "
                        "(default: %(default)s)")
    p.add_argument("--results-path", type=Path, default=Path("results"),
                   help="where tune.md, tune.json and the chosen .tflite go")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="build candidates on Ray: `local`, `auto` or host:port (as sweep)")
    p.add_argument("--serial", action="store_true",
                   help="build candidates one by one in this process (no pool)")
    p.add_argument("--workers", type=int,
                   help="pool processes (default: one per core); with --ray, tasks in flight")
    add_common_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """`petq tune`: exit status 0 when a variant is certified, 1 when none is (or on an
    error, with one `petq: error:` line)."""
    from petq.console import open_workspace
    from petq.sweep import SweepError, check_writable, task_threads

    if args.ray and args.serial:
        raise SweepError("--serial and --ray exclude each other")
    backend = "ray" if args.ray else "serial" if args.serial else "local"
    config = TuneConfig(max_drop=args.max_drop, relative=args.relative, metric=args.metric,
                        confidence=args.confidence, objective=args.objective,
                        guard_breeds=None, budget=args.budget, seed=args.seed,
                        certify_top=args.certify_top,
                        certification_fraction=args.certification_fraction)
    threads = task_threads(backend, args.workers, args.threads)
    args.threads = threads
    ws = open_workspace(args)
    check_writable(ws.cache.root)
    if args.guard_breeds is not None:
        config = replace(config, guard_breeds=tuple(ws.class_index(b)
                                                    for b in args.guard_breeds))
    if backend == "ray":
        from petq.raysweep import resolve_ray_address

        resolve_ray_address(args.ray)
    results_path = Path(args.results_path)
    engine = Engine(backend, None if args.ray in (None, "local") else args.ray, args.workers,
                    threads, results_path / "logs" if backend == "local" else None)

    def progress(outcome: TuneOutcome, candidate: Candidate | None, line: str) -> None:
        prefix = f"[{outcome.built}/{outcome.config.budget}] " if candidate else ""
        print(f"tune: {prefix}{line}", file=sys.stderr, flush=True)

    results_path.mkdir(parents=True, exist_ok=True)
    outcome = tune(ws, config, engine, progress)
    written = write_outputs(ws, outcome, results_path)
    print(outcome.decision())
    for line in outcome.advice():
        print(line)
    print(f"{outcome.built} candidate(s) built, {outcome.attempts} certification test(s), "
          f"{outcome.seconds:.1f} s; wrote {', '.join(p.name for p in written)} to "
          f"{results_path}", file=sys.stderr)
    return 0 if outcome.certified else 1

