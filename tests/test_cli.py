"""The lab's CLI, end to end on the fixtures, and its error paths."""

from __future__ import annotations

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
    rows = {r["variant"]: r for r in ws.results(test_fraction=1.0)}
    fp32, native = rows["tflite-fp32"], rows["native"]
    assert (f"(median {fp32['latency_p50_ms']:.2f} ms against "
            f"{native['latency_p50_ms']:.2f} ms per image)") in summary  # fmt: skip
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


def test_python_dash_m_as_a_new_user_would(cli_args):
    result = subprocess.run(
        [sys.executable, "-m", "petq", "experiments", *cli_args, "--tasks", "tflite-fp32"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "tflite-fp32" in result.stdout
