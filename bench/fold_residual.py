"""What separates a fold student from its folded-grid teacher QNN, layer by layer.

    .venv/bin/python bench/fold_residual.py [--teacher runs/mnv2w05-teacher] [--bits 4] [--layers 10]

Teacher QNN with ``--teacher-weight-grid folded``, one scale per layer, calibrated on 256
training images (no QAT). For the first ``--layers`` requantized layers, phase 1 builds the
student layer on the QNN's own input codes (64 calibration images) and reports the fitted
alpha over the folded weight step and the fraction of output codes that differ from the QNN's.
Prints only; docs/method.md (phase 0) quotes its output.
"""

from __future__ import annotations

import argparse
import sys

import torch

from fiqnn.config import DistillConfig
from fiqnn.jobs import teacher_data
from fiqnn.nets.fximport import import_model
from fiqnn.train.distill import calibration
from fiqnn.train.fold import fold_bn, local_init
from fiqnn.train.qnn import build_teacher_qnn
from fiqnn.train.quantizers import weight_step
from fiqnn.train.teacher import load_teacher
from fiqnn.train.units import QnnUnit


@torch.no_grad()
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="runs/mnv2w05-teacher")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--layers", type=int, default=10)
    args = p.parse_args()
    _, data = teacher_data(args.teacher)
    config = DistillConfig(w_bits=args.bits, a_bits=args.bits, teacher_weight_grid="folded", calib_images=256)
    torch.manual_seed(config.seed)
    calib = calibration(data, config.calib_images)
    qnn = build_teacher_qnn(import_model(load_teacher(args.teacher)), config, calib).eval()
    env = qnn.outputs(calib[:64])
    done = 0
    for name, t in qnn.units.items():
        if done == args.layers:
            break
        if not isinstance(t, QnnUnit) or t.aq is None:
            continue
        src = qnn.inputs[name][0]
        x = env[src]
        s = local_init(t, x, 8 if src == "input" else args.bits, t.w_bits, False, in_signed=bool((x < 0).any()))
        step = float(weight_step(fold_bn(t)[0], s.q, False, t.grid_step()))
        differ = float((s.eval().core(x) != t.core(x)).double().mean())
        print(f"{name}: alpha / folded step {float(s.log_alpha.exp()) / step:.4f}, codes that differ {differ:.4f}")
        done += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
