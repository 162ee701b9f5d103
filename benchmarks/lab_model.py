"""The lab's model at its real size, built in code: MobileNetV2 1.0 at 224 px with the
lab's head (GlobalAveragePooling, Dense 1024/512/128 relu with Dropout 0.3, Dense 37),
4,164,965 parameters, random weights.

Random weights are enough for timing and for byte-identity checks; its contract (input
size, normalisation, class names) is the MobileNetV2 demo's.

    python benchmarks/lab_model.py [--output benchmarks/out/lab-mobilenetv2.keras]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONTRACT = ROOT / "models" / "petq-mobilenetv2.json"
DEFAULT = ROOT / "benchmarks" / "out" / "lab-mobilenetv2.keras"
PARAMETERS = 4_164_965


def build(output: Path = DEFAULT, seed: int = 0) -> Path:
    """Save the lab-sized model and its contract beside it; returns the model's path."""
    from petq.train import build_model

    model = build_model(37, alpha=1.0, input_size=(224, 224), seed=seed)
    if model.count_params() != PARAMETERS:
        raise SystemExit(f"built {model.count_params():,} parameters, not {PARAMETERS:,}")
    output.parent.mkdir(parents=True, exist_ok=True)
    model.save(output)
    contract = json.loads(DEMO_CONTRACT.read_text())
    contract["info"] = {"architecture": "MobileNetV2 1.0 at 224 px + the lab's head",
                        "weights": f"random (seed {seed}): for timing and byte identity",
                        "parameters": PARAMETERS}
    output.with_suffix(".json").write_text(json.dumps(contract, indent=2))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.output, args.seed))


if __name__ == "__main__":
    main()
