"""Where the teacher QNN's weight steps sit, and what a per-layer student loses re-quantizing.

    .venv/bin/python bench/folded_grid.py [--teacher runs/mnv2w05-teacher] [--bits 4] [--images 1000]

For each teacher weight grid (``channel``: steps on the conv weights; ``folded``: steps on
the BN-folded weights, see docs/method.md, phase 0) and each student scale, builds the
teacher QNN (calibrated, no QAT), folds it into the BN-free student (phase 1 for every layer
at once, the ``fold`` start) and reports: both networks' accuracy on the first ``--images``
validation images, and per requantized layer (not the first and last, which keep 8-bit
weights) the student's relative error against its teacher unit on the teacher's own
calibration inputs, ``rms(student codes - teacher codes) / std(teacher codes)``.
Writes bench/results/folded-grid.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from fiqnn.config import DistillConfig
from fiqnn.data import first_images
from fiqnn.jobs import teacher_data
from fiqnn.nets.fximport import import_model
from fiqnn.train.distill import accuracy, calibration
from fiqnn.train.fold import fold
from fiqnn.train.qnn import build_teacher_qnn
from fiqnn.train.teacher import load_teacher
from fiqnn.train.units import IntUnit

OUT = Path(__file__).resolve().parent / "results" / "folded-grid.md"


@torch.no_grad()
def measure(teacher, data, bits: int, scale: str, grid: str, images: int) -> dict:
    config = DistillConfig(w_bits=bits, a_bits=bits, scale=scale, teacher_weight_grid=grid, calib_images=256)
    torch.manual_seed(config.seed)
    calib = calibration(data, config.calib_images)
    qnn = build_teacher_qnn(import_model(teacher), config, calib)
    student = fold(qnn, config, calib)
    val = first_images(data.val, images)
    env = qnn.eval().outputs(calib)
    errs = []
    for name, s in student.units.items():
        t = qnn.units[name]
        if not isinstance(s, IntUnit) or s.a_bits is None or s.w_bits != bits:
            continue
        x = env[qnn.inputs[name][0]]
        y_s, y_t = s.eval().core(x).double(), t.eval().core(x).double()
        errs.append(float((y_s - y_t).square().mean().sqrt() / y_t.std().clamp_min(1e-12)))
    return {"grid": grid, "scale": scale, "qnn": accuracy(qnn, val), "fold": accuracy(student, val),
            "median": statistics.median(errs), "min": min(errs), "max": max(errs), "layers": len(errs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="runs/mnv2w05-teacher")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--images", type=int, default=1000)
    args = p.parse_args()
    teacher, (tcfg, data) = load_teacher(args.teacher), teacher_data(args.teacher)
    rows = [measure(teacher, data, args.bits, scale, grid, args.images)
            for scale in ("per-layer", "per-channel") for grid in ("channel", "folded")]
    md = [f"{tcfg['arch']} on {tcfg['data']}, W{args.bits}A{args.bits}, teacher `{args.teacher}` "
          f"(`fiqnn train-teacher --arch {tcfg['arch']} --data {tcfg['data']} --epochs {tcfg['epochs']} "
          "--channels-last`). Teacher QNN calibrated on 256 training images, no QAT; student: phase 1 for every "
          f"layer at once (the `fold` start). Accuracy on the first {args.images} validation images. Layer error: "
          "rms(student codes - teacher codes) / std(teacher codes) per requantized W-bit layer, on the "
          "calibration images.", "",
          "| student scale | teacher weight grid | teacher QNN | fold student | layer error median (min-max) | layers |",
          "|---|---|---|---|---|---|"]
    md += [f"| {r['scale']} | {r['grid']} | {r['qnn']:.1f}% | {r['fold']:.1f}% | {r['median']:.3f} "
           f"({r['min']:.3f}-{r['max']:.3f}) | {r['layers']} |" for r in rows]
    md += ["", f"    .venv/bin/python bench/folded_grid.py --teacher {args.teacher} --bits {args.bits} "
               f"--images {args.images}"]
    OUT.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
