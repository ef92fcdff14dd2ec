"""What the whole-test-set export benches (litert.py, tflm.py, qonnx_executor.py) share: their
``--model LABEL=PATH`` arguments, the test split, each model's graph and numpy logits, and the
results files (NAME.json, NAME.md ending with the command)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def models(doc: str):
    """Parse the command line; yield (label, path, graph, reference logits) per ``--model``, after
    setting ``models.args`` and ``models.test`` (the test split)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=PATH",
                   help="a model file (model.npz or its run directory), repeatable")
    p.add_argument("--data", default="fashion-mnist")
    models.args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from fiqnn.data import load_data
    from fiqnn.integer.execute import run
    from fiqnn.integer.modelfile import load

    models.test = load_data(models.args.data).test
    for spec in models.args.model:
        label, _, path = spec.partition("=")
        graph = load(Path(path) / "model.npz" if Path(path).is_dir() else path)
        yield label, path, graph, run(graph, models.test.x_q)


def measured(doc: str, measure) -> list[dict]:
    """One row per ``--model``: its label and path, then ``measure(graph, ref, x_q, y)``'s fields."""
    rows = []
    for label, path, graph, ref in models(doc):
        rows.append({"label": label, "model": path, **measure(graph, ref, models.test.x_q, models.test.y)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def agreement(got: np.ndarray, ref: np.ndarray, y: np.ndarray) -> dict:
    """Images whose logits equal numpy's, images whose argmax differs, and the test accuracy."""
    return {"images_equal": int((got == ref).all(axis=1).sum()),
            "argmax_differs": int((got.argmax(1) != ref.argmax(1)).sum()),
            "acc": float((got.argmax(1) == y).mean() * 100)}


def write(name: str, script: str, rows: list[dict], lines: list[str]) -> None:
    """bench/results/NAME.json (the rows) and NAME.md (``lines``, then the command), and print it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    command = " ".join([f"--model {shlex.quote(s)}" for s in models.args.model] + [f"--data {models.args.data}"])
    lines = [*lines, "", f"Command: `.venv/bin/python bench/{script} {command}`"]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
