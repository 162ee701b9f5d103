"""The lab's CLI, end to end on the fixtures, and its error paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from petq.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def cli_args(tiny_model, pet_root, shared_cache, tmp_path):
    return ["--model-path", str(tiny_model), "--dataset-root", str(pet_root),
            "--cache-dir", str(shared_cache), "--threads", "1",
            "--results-path", str(tmp_path / "results")]


@pytest.mark.slow  # a cold pipeline: converts and evaluates for real
def test_every_variant_kind_through_the_cli(cli_args, tmp_path, capsys):
    tasks = ["native", "tflite-fp32", "tflite-int8-0.3", "tflite-int8-0.8", "tflite-imbint8"]
    code = main(["experiments", *cli_args, "--tasks", *tasks,
                 "--calibration-classes", "Bengal", "american_bulldog"])
    assert code == 0
    out = capsys.readouterr().out
    results = tmp_path / "results"
    names = ["native", "tflite-fp32", "tflite-int8-0.3", "tflite-int8-0.8", "tflite-imbint8-c1+2"]
    for name in names:
        assert name in out
        assert (results / f"{name}-metrics.md").read_text().startswith(f"Model type: {name}")
        assert (results / f"{name}-confusion-matrix.png").read_bytes()[:4] == b"\x89PNG"
    summary = (results / "summary.md").read_text()
    assert "**4. How does the model calibrated on chosen classes" in summary
    assert "Not answered" not in summary
    assert (results / "config.json").exists()
    # speed sentences quote medians (a mean moves with a few slow runs on a busy machine)
    from petq.workspace import Workspace

    i = cli_args.index
    ws = Workspace(cli_args[i("--model-path") + 1], cli_args[i("--dataset-root") + 1],
                   cli_args[i("--cache-dir") + 1], threads=1)  # fmt: skip
    rows = {r.variant: r for r in ws.results(test_fraction=1.0)}
    fp32, native = rows["tflite-fp32"], rows["native"]
    timing = ws.latency_comparison(fp32.spec, native.spec)  # cached by the report
    assert (f"median {timing.median_a_ms:.2f} ms against {timing.median_b_ms:.2f} ms"
            in summary)
    # every comparison is paired: b and c of the csv are the discordant counts
    import csv

    with open(results / "comparisons.csv") as handle:
        table = {row["variant"]: row for row in csv.DictReader(handle)}
    assert set(table) == set(names)  # native against FP32, FP32 against native
    assert table["tflite-fp32"]["reference"] == "native"
    fp32_top1 = ws.details(fp32.result_key).top1
    int8_details = ws.details(rows["tflite-int8-0.3"].result_key)
    labels = int8_details.labels
    b = int(((fp32_top1 == labels) & (int8_details.top1 != labels)).sum())
    assert int(table["tflite-int8-0.3"]["b"]) == b
    assert float(table["tflite-int8-0.3"]["accuracy_difference_low"]) <= float(
        table["tflite-int8-0.3"]["accuracy_difference"])
    # a rerun reuses the cache, the drawn confusion matrix included
    png = (results / "tflite-fp32-confusion-matrix.png").read_bytes()
    (results / "tflite-fp32-confusion-matrix.png").unlink()
    figures = Path(cli_args[cli_args.index("--cache-dir") + 1]) / "figures"
    drawn = {p: p.stat().st_mtime_ns for p in figures.rglob("confusion.png")}
    assert len(drawn) >= len(names)
    assert main(["experiments", *cli_args, "--tasks", "tflite-fp32"]) == 0
    assert "(cached)" in capsys.readouterr().out
    assert (results / "tflite-fp32-confusion-matrix.png").read_bytes() == png
    assert {p: p.stat().st_mtime_ns for p in figures.rglob("confusion.png")} == drawn


def test_list_shows_cached_results(cli_args, capsys):
    assert main(["experiments", *cli_args, "--tasks", "tflite-fp32"]) == 0
    capsys.readouterr()
    args = [a for a in cli_args]
    i = args.index("--results-path")
    del args[i:i + 2]
    assert main(["list", *args]) == 0
    assert "tflite-fp32" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "tflite-int8-1.5"], "fraction must be in (0, 1]"),
        (["--tasks", "tflite-imbint8", "--calibration-classes", "sphynx"], "unknown class name"),
        (["--tasks", "tflite-imbint8"], "class index 5 out of range"),
        (["--tasks", "tflite-int4"], "unknown variant"),
    ],
)
def test_bad_input_gives_one_clear_error(cli_args, extra, message, capsys):
    assert main(["experiments", *cli_args, *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("petq: error:") and message in err
    assert "Traceback" not in err


def test_missing_dataset_and_bad_fraction(tmp_path, tiny_model, capsys):
    assert main(["experiments", "--model-path", str(tiny_model), "--dataset-root",
                 str(tmp_path / "nowhere"), "--results-path", str(tmp_path / "r")]) == 1
    assert "dataset folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiments", "--test-dataset-fraction", "0"])
    assert "must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.slow  # a cold pipeline: converts and evaluates for real
def test_python_dash_m_as_a_new_user_would(cli_args):
    """Piped, as in CI: plain progress lines, none of TensorFlow's or the converter's chatter."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-m", "petq", "experiments", *cli_args, "--tasks", "tflite-fp32",
         "tflite-int8-0.6"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "tflite-fp32" in result.stdout and "tflite-int8-0.6" in result.stdout
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    # calibrated here, or by the converter process while this one waits (petq.engine)
    assert ("tflite-int8-0.6: calibrating (24 images)" in lines
            or "tflite-int8-0.6: converting" in lines), lines
    assert len(lines) < 20, result.stderr
    for chatter in ("oneDNN", "cuda", "fully_quantize", "XNNPACK", "absl"):
        assert chatter not in result.stderr, result.stderr


def test_python_dash_m_exits_with_the_command_s_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "petq", "experiments", "--dataset-root", str(tmp_path / "no"),
         "--results-path", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert "dataset folder not found" in result.stderr


@pytest.mark.slow  # a cold pipeline: converts and evaluates for real
def test_a_recipe_the_model_cannot_take_fails_alone(pet_root, tmp_path, capsys):
    """LOG_SOFTMAX has no 16x8 kernel: tflite-int16x8 fails with one line naming recipe and
    op, no traceback, nothing half-written in the cache, and tflite-fp32 is still done."""
    import keras

    from petq.types import ModelContract, save_contract

    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(4, 3),
        keras.layers.Activation("log_softmax"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, name="out_layer"),
    ])
    path = tmp_path / "logsoftmax.keras"
    model.save(path)
    save_contract(path, ModelContract(input_size=(32, 32)))
    cache = tmp_path / "cache"
    code = main(["experiments", "--model-path", str(path), "--dataset-root", str(pet_root),
                 "--cache-dir", str(cache), "--threads", "1", "--results-path",
                 str(tmp_path / "results"), "--tasks", "tflite-fp32", "tflite-int16x8-0.5"])
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("petq: error:")]
    assert len(errors) == 1, captured.err[-3000:]
    assert "tflite-int16x8" in errors[0] and "LOG_SOFTMAX" in errors[0], errors
    assert "Traceback" not in captured.err
    assert "tflite-fp32" in captured.out
    assert (tmp_path / "results" / "tflite-fp32-metrics.md").exists()
    assert not list(cache.rglob(".tmp-*"))


@pytest.mark.slow
def test_layers_and_seeds_from_the_command_line(cli_args, tmp_path, capsys):
    import csv

    code = main(["experiments", *cli_args, "--tasks", "tflite-int8-0.3", "tflite-int8-0.5",
                 "--seeds", "1234", "7", "--layers"])
    assert code == 0, capsys.readouterr().err
    results = tmp_path / "results"
    for name in ("tflite-int8-0.5", "tflite-int8-0.5-s7"):
        with open(results / f"{name}-layers.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert rows and [int(r["index"]) for r in rows] == sorted(int(r["index"]) for r in rows)
        assert any(r["error"] for r in rows)
    summary = (results / "summary.md").read_text()
    assert "0.3: " in summary and "0.5: " in summary and "mean over 2 seeds" in summary
    from petq.workspace import Workspace

    i = cli_args.index
    ws = Workspace(cli_args[i("--model-path") + 1], cli_args[i("--dataset-root") + 1],
                   cli_args[i("--cache-dir") + 1], threads=1)  # fmt: skip
    runs = [r for r in ws.results() if r.spec.lab_int8 and not r.spec.keep_float
            and r.spec.fraction in (0.3, 0.5)
            and r.spec.seed in (1234, 7) and r.test_fraction == 1.0]  # the cache is shared
    assert len(runs) == 4
    if len({r.accuracy for r in runs}) == 1:
        assert "Every run has the same accuracy: no trend." in summary
    else:  # 4 runs: the trend is tested, not eyeballed
        assert "Spearman" in summary


def test_a_seed_in_a_task_name_is_kept(tiny_model, pet_root, shared_cache):
    from argparse import Namespace

    from petq.cli import resolve_specs
    from petq.workspace import Workspace

    ws = Workspace(tiny_model, pet_root, shared_cache, threads=1)
    args = Namespace(tasks=["tflite-int8-0.5-s1", "tflite-int8-0.3"], calibration_classes=None,
                     seed=1234, seeds=None, seed_count=None)
    assert [s.name for s in resolve_specs(ws, args)[0]] == ["tflite-int8-0.5-s1", "tflite-int8-0.3"]
    args.seeds = [7, 8]
    assert [s.name for s in resolve_specs(ws, args)[0]] == [
        "tflite-int8-0.5-s7", "tflite-int8-0.5-s8", "tflite-int8-0.3-s7", "tflite-int8-0.3-s8"]


def test_recipes_lists_every_recipe_with_names_that_parse(capsys):
    from petq.types import RECIPES, VariantSpec

    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split()[1] for line in lines[1:] if line and line[0] != "<"}
    assert set(listed) == set(RECIPES)
    for key, pattern in listed.items():  # every listed pattern is a name petq takes
        name = pattern.replace("<cal>", "0.08")
        assert VariantSpec.from_name(name).recipe.key == key
