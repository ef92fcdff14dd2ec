"""The ``fiqnn`` command line: ``main(argv) -> exit code``, one thin function per command.

User errors (bad flags, missing data, corrupt files) print one line,
``fiqnn: error: ...``, and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import FiqnnError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"fiqnn: error: {message} (see `{self.prog} --help`)\n")


def _explicit(args: argparse.Namespace, names: list[str]) -> dict:
    """The options among ``names`` that the user actually passed (defaults are None)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


_TEACHER_FIELDS = ["arch", "data", "data_dir", "epochs", "batch_size", "lr", "seed"]


def cmd_train_teacher(args: argparse.Namespace) -> int:
    from ._run import CONFIG, read_json
    from .config import TeacherConfig
    from .teacher import train_teacher

    given = _explicit(args, _TEACHER_FIELDS)
    saved = Path(args.out) / CONFIG
    if args.resume and saved.exists():  # settings come from the run; flags may only repeat them
        config = TeacherConfig.from_dict({**read_json(saved)["config"], **given})
    else:
        missing = [f"--{n}" for n in ("arch", "data") if n not in given]
        if missing:
            raise FiqnnError(f"train-teacher needs {' and '.join(missing)}")
        config = TeacherConfig(**given)
    metrics = train_teacher(config, args.out, resume=args.resume, progress=not args.no_progress)
    _report(args, metrics, f"teacher {config.arch} on {config.data}: test accuracy "
                           f"{metrics['test_acc']:.2f}% after {metrics['epochs']} epochs")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import TeacherConfig
    from .data import fashion_mnist_available
    from .teacher import train_teacher

    if fashion_mnist_available():
        config = TeacherConfig(arch="alexnet-s", data="fashion-mnist")
    else:
        print("fiqnn: Fashion-MNIST not found (apt-get install dataset-fashion-mnist); "
              "the demo uses scikit-learn's digits instead", file=sys.stderr)
        config = TeacherConfig(arch="alexnet-s", data="digits", epochs=30, batch_size=64, lr=0.05)
    out = Path(args.out) / f"teacher-{config.arch}-{config.data}"
    metrics = train_teacher(config, out, resume=True, progress=not args.no_progress)
    _report(args, metrics, f"teacher {config.arch} on {config.data}: test accuracy "
                           f"{metrics['test_acc']:.2f}% ({out})")
    return 0


def _report(args: argparse.Namespace, metrics: dict, line: str) -> None:
    print(json.dumps(metrics) if args.json else line)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fiqnn", description="BatchNorm-free, fully integer quantized CNNs by "
                                          "progressive tandem learning.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"fiqnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the final metrics as one JSON object")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")

    t = sub.add_parser("train-teacher", parents=[common], help="train a float BatchNorm teacher",
                       description="Train a float BatchNorm teacher into a run directory "
                                   "(config.json, metrics.json, checkpoint.pt, train.log, model.pt).")
    t.add_argument("--arch", help="alexnet-s | alexnet-bn | tiny")
    t.add_argument("--data", help="fashion-mnist | digits | cifar10 | imagefolder | synthetic")
    t.add_argument("--data-dir", help="folder of the data set (default for fashion-mnist: "
                                      "/usr/share/datasets/fashion-mnist)")
    t.add_argument("--out", required=True, help="run directory to create (or to resume)")
    t.add_argument("--epochs", type=int, help="number of epochs (default 8)")
    t.add_argument("--batch-size", type=int, help="batch size (default 128)")
    t.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule (default 0.1)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last finished epoch")
    t.set_defaults(func=cmd_train_teacher)

    d = sub.add_parser("demo", parents=[common], help="run the main job end to end on the default data")
    d.add_argument("--out", default="runs/demo", help="where the demo's runs go (default runs/demo)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already printed)
        return int(e.code or 0)
    try:
        return args.func(args)
    except FiqnnError as e:
        print(f"fiqnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fiqnn: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
