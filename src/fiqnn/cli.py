"""The ``fiqnn`` command line: ``main(argv) -> exit code``, one thin function per command.

User errors (bad flags, missing data, corrupt files, an output that cannot be written)
print one line, ``fiqnn: error: ...``, and exit with code 2. Commands import torch only
when they run, so ``--help`` and usage errors are instant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from ._archs import ARCHS
from .errors import FiqnnError, OutputError


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
    from .train.teacher import train_teacher

    given = _explicit(args, _TEACHER_FIELDS)
    saved = Path(args.out) / CONFIG
    if args.resume and saved.exists():  # settings come from the run; flags may only repeat them
        config = TeacherConfig.from_dict({**read_json(saved)["config"], **given})
    else:
        missing = [f"--{n}" for n in ("arch", "data") if n not in given]
        if missing:
            raise FiqnnError(f"train-teacher needs {' and '.join(missing)}")
        config = TeacherConfig(**given)
    with _runtime(args) as rt:
        metrics = train_teacher(config, args.out, resume=args.resume, progress=not args.no_progress, runtime=rt)
    if not rt.main:
        return 0
    _report(args, metrics, f"teacher {config.arch} on {config.data}: test accuracy "
                           f"{metrics['test_acc']:.2f}% after {metrics['epochs']} epochs")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from ._run import CONFIG, read_json
    from .config import DISTILL_FLAGS, DistillConfig
    from .jobs import distill_run, teacher_dir_of

    given = {field: getattr(args, flag) for flag, field in DISTILL_FLAGS.items() if getattr(args, flag) is not None}
    if args.no_compensation:
        given["compensation"] = False
    saved = Path(args.out) / CONFIG
    teacher = args.teacher
    if args.resume and saved.exists():
        old = {k: v for k, v in read_json(saved)["config"].items() if k not in ("teacher", "teacher_rel")}
        teacher = teacher or teacher_dir_of(args.out)
        config = DistillConfig.from_dict({**old, **given})
    else:
        missing = [f"--{n}" for n, f in (("teacher", "teacher"), ("wbits", "w_bits"), ("abits", "a_bits"))
                   if (teacher if f == "teacher" else given.get(f)) is None]
        if missing:
            raise FiqnnError(f"distill needs {', '.join(missing)}")
        config = DistillConfig(**given)
    with _runtime(args) as rt:
        metrics = distill_run(teacher, config, args.out, resume=args.resume, progress=not args.no_progress,
                              runtime=rt)
    if metrics is None:  # a data-parallel rank other than 0: rank 0 reports
        return 0
    _report(args, metrics, f"W{config.w_bits}A{config.a_bits} {config.method} student: integer test accuracy "
                           f"{metrics['test_acc']:.2f}% (teacher {metrics['teacher_acc']:.2f}%), bit-exact with "
                           f"the torch student on {metrics['test_images']} images: {metrics['bit_exact']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .jobs import evaluate_run

    m = evaluate_run(args.run, args.backend, progress=not args.no_progress)
    _report(args, m, f"{args.backend}: test accuracy {m['test_acc']:.2f}% on {m['images']} images "
                     f"({m['wall_s']:.1f} s)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .jobs import export_run

    out = export_run(args.model, args.format, args.out, args.fallback, args.target)
    _report(args, {"format": args.format, "out": str(out)}, f"wrote {args.format} model to {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .integer.modelfile import layer_summary, load
    from .jobs import MODEL_FILE

    path = Path(args.model)
    graph = load(path / MODEL_FILE if path.is_dir() else path)
    rows = [layer_summary(layer) for layer in graph.layers]
    if args.json:
        print(json.dumps({"in_shape": list(graph.in_shape), "num_classes": graph.num_classes,
                          "arith_version": graph.arith_version, "info": graph.info, "layers": rows}))
        return 0
    print(f"IntGraph: uint8 input {tuple(graph.in_shape)} -> int32 logits ({graph.num_classes}); "
          f"ARITH_VERSION {graph.arith_version}; {graph.info}")
    dtypes = sorted({f"{k} {v}" for r in rows for k, v in r["dtypes"].items()})
    print("no BatchNorm, no float: arrays " + ", ".join(dtypes))
    head = f"{'layer':8} {'kind':4} {'weights':>18} {'in':>3} {'W':>2} {'A':>2} {'mult':>23} {'shift':>7} " \
           f"{'acc bound':>25} {'headroom':>8}"
    print(head)
    for r in rows:
        print(f"{r['name']:8} {r['kind']:4} {'x'.join(map(str, r['shape'])):>18} {r['in_bits']:>3} {r['w_bits']:>2} "
              f"{r['a_bits'] or '-':>2} {r['mult']:>23} {r['shift']:>7} {r['acc_bound']:>25} "
              + (f"{r['headroom_bits']:>6.1f} b" if r["kind"] in ("conv", "fc") else f"{'-':>8}"))
    return 0


# The demo's short distillation schedule: one scheduler epoch = 100 batches; one epoch of
# teacher QAT, one per PTL stage, one of fine-tuning (the full recipe is in bench/).
DEMO_DISTILL = {"w_bits": 4, "a_bits": 4, "steps_per_epoch": 100, "teacher_epochs": 1, "max_epochs_per_stage": 1,
                "finetune_epochs": 1}


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end: teacher (trained, or reused) -> PTL W4A4 -> integer eval."""
    from ._run import check_writable
    from .config import DistillConfig, TeacherConfig
    from .data import fashion_mnist_available
    from .jobs import distill_run
    from .train.teacher import train_teacher

    check_writable(Path(args.out))
    if fashion_mnist_available():
        config = TeacherConfig(arch="alexnet-s", data="fashion-mnist")
    else:
        print("fiqnn: Fashion-MNIST not found (apt-get install dataset-fashion-mnist); "
              "the demo uses scikit-learn's digits instead", file=sys.stderr)
        config = TeacherConfig(arch="alexnet-s", data="digits", epochs=30, batch_size=64, lr=0.05)
    root = Path(args.out)
    teacher_dir = root / f"teacher-{config.arch}-{config.data}"
    t = train_teacher(config, teacher_dir, resume=True, progress=not args.no_progress)
    student_dir = root / f"ptl-w4a4-{config.arch}-{config.data}"
    s = distill_run(teacher_dir, DistillConfig(**DEMO_DISTILL), student_dir, resume=True,
                    progress=not args.no_progress)
    _report(args, {"teacher": t, "student": s},
            f"teacher {config.arch} (float, BatchNorm) on {config.data}: test accuracy {t['test_acc']:.2f}%\n"
            f"BN-free integer student W4A4 (ptl): test accuracy {s['test_acc']:.2f}% on the integer executor, "
            f"bit-exact with the torch student on all {s['test_images']} test images: {s['bit_exact']}\n"
            f"runs: {teacher_dir}, {student_dir}  (try: fiqnn info {student_dir})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench
    from ._run import check_writable

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    if args.quick or not args.status:  # --status only reads
        check_writable(Path(args.out))

    if args.quick:
        results = bench.quick(args.out, progress=not args.no_progress, log=log)
    else:
        if args.teacher is None and not args.status:
            raise FiqnnError("bench needs --teacher (or --quick, or --status)")
        try:
            bits = [int(b) for b in args.bits.split(",")]
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise FiqnnError(f"--bits and --seeds take comma-separated integers, got {args.bits!r} and "
                             f"{args.seeds!r}") from None
        methods = args.methods.split(",") if args.methods else list(bench.METHODS)
        scales = args.scales.split(",")
        seed_methods = args.seed_methods.split(",")
        for m in methods + seed_methods:
            if m not in bench.METHODS:
                raise FiqnnError(f"unknown bench method {m!r}; choose from {', '.join(bench.METHODS)}")
        from .config import DistillConfig

        for b in bits:  # validates bits and scales before any work
            for sc in scales:
                DistillConfig(w_bits=b, a_bits=b, scale=sc, calib_images=args.calib_images,
                              val_images=args.val_images, teacher_weight_grid=args.teacher_weight_grid)
        budget = bench.Budget(steps_per_epoch=args.steps_per_epoch, teacher_epochs=args.teacher_epochs,
                              max_epochs_per_stage=args.max_epochs_per_stage, patience=args.patience,
                              finetune_epochs=args.finetune_epochs, calib_images=args.calib_images,
                              val_images=args.val_images, teacher_weight_grid=args.teacher_weight_grid)
        rows = bench.grid(methods, bits, scales, seeds, seed_methods)
        if args.status:
            return _bench_status(args, bench.status(args.out, rows))
        low = args.low_bits_lr

        with _runtime(args) as rt:
            if rt.distributed:
                raise FiqnnError("bench rows run in one process each; start several `fiqnn bench` processes "
                                 "on one --out instead of torchrun")
            results = bench.run_bench(args.teacher, args.out, rows, budget, progress=not args.no_progress,
                                      lr_by_bits=lambda b: low if b <= 3 else None, log=log, runtime=rt)
    _report(args, results, bench.table(results) + f"\n(results in {args.out}/results.md)")
    return 0


def _bench_status(args: argparse.Namespace, lines: list[dict]) -> int:
    counts = {s: sum(line["state"] == s for line in lines) for s in ("done", "running", "started", "pending")}
    text = []
    for line in lines:
        detail = f"{line['test_acc']:.2f}%" if line["state"] == "done" else line.get("last_log", "")
        text.append(f"{line['key']:36s} {line['state']:8s} {detail}".rstrip())
    text.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f" (of {len(lines)} rows)")
    _report(args, {"rows": lines, "counts": counts}, "\n".join(text))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    paths = report(args.run, args.out)
    _report(args, paths, f"wrote {paths['markdown']} and {paths['html']}")
    return 0


@contextlib.contextmanager
def _runtime(args: argparse.Namespace) -> Iterator:
    """This process's device / precision / data-parallel rank (under torchrun: joins the group)."""
    from .parallel import setup, teardown

    rt = setup(args.device, args.amp, args.channels_last)
    ok = False
    try:
        yield rt
        ok = True
    finally:
        teardown(ok)


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
    train = _Parser(add_help=False)  # how a training command runs (not part of the run's config)
    train.add_argument("--device", default="cpu",
                       help="cpu (default) | cuda (under torchrun: the process's LOCAL_RANK GPU)")
    train.add_argument("--amp", action="store_true",
                       help="mixed precision: bfloat16 autocast for the training forward pass")
    train.add_argument("--channels-last", action="store_true",
                       help="NHWC memory layout for training (about 1.8x faster for depthwise nets on CPU; "
                            "float sums in another order, so not bit-identical to the default)")

    t = sub.add_parser("train-teacher", parents=[common, train], help="train a float BatchNorm teacher",
                       description="Train a float BatchNorm teacher into a run directory "
                                   "(config.json, metrics.json, checkpoint.pt, train.log, model.pt).")
    t.add_argument("--arch", help=" | ".join(ARCHS))
    t.add_argument("--data", help="fashion-mnist | digits | cifar10 | imagefolder | synthetic")
    t.add_argument("--data-dir", help="folder of the data set (default for fashion-mnist: "
                                      "/usr/share/datasets/fashion-mnist)")
    t.add_argument("--out", required=True, help="run directory to create (or to resume)")
    t.add_argument("--epochs", type=int, help="number of epochs (default 8)")
    t.add_argument("--batch-size", type=int, help="global batch size, over all torchrun processes (default 128)")
    t.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule (default 0.1)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last finished epoch")
    t.set_defaults(func=cmd_train_teacher)

    s = sub.add_parser("distill", parents=[common, train], help="distill a teacher into a BN-free integer student",
                       description="Progressive tandem learning from a teacher run into a BN-free, integer-only "
                                   "student (student.pt, model.npz, metrics.json, ...).")
    s.add_argument("--teacher", help="teacher run directory (from train-teacher)")
    s.add_argument("--out", required=True, help="run directory to create (or to resume)")
    s.add_argument("--wbits", type=int, help="weight bits, 2..8")
    s.add_argument("--abits", type=int, help="activation bits, 2..8")
    s.add_argument("--method", help="ptl (default) | fold | oneshot | scratch")
    s.add_argument("--scale", help="per-layer (default: one (mult, shift) per layer) | per-channel (one per output "
                   "channel; the logits layer keeps one)")
    s.add_argument("--rounding", help="single (default: (E4), round half up once) | double (gemmlowp's (E4d), what "
                   "TFLite Micro, CMSIS-NN and Ethos-U compute; 24-bit multipliers)")
    s.add_argument("--first-last-bits", type=int, help="weight bits of the first and last layers (default 8)")
    s.add_argument("--teacher-quantizer", help="lsq (default) | dorefa: the BN teacher QNN's weight quantizer")
    s.add_argument("--teacher-weight-grid", choices=("channel", "folded"),
                   help="the teacher QNN's weight steps: channel (default: one per output channel of the conv "
                   "weights) | folded (on the BN-folded weights, one per layer where the student has one scale)")
    s.add_argument("--teacher-epochs", type=int, help="QAT epochs of the BN teacher QNN, step 0 (default 1)")
    s.add_argument("--lambda-target", type=float, help="weight of the layer-wise target MSE (default 1)")
    s.add_argument("--kd", type=float, help="weight of the KD loss from the teacher's logits (default 1)")
    s.add_argument("--patience", type=int, help="PTL patience in epochs (default 2)")
    s.add_argument("--max-epochs-per-stage", type=int, help="cap on epochs per PTL stage (default 4)")
    s.add_argument("--finetune-epochs", type=int, help="epochs of the final fine-tune (default 2)")
    s.add_argument("--no-compensation", action="store_true", help="freeze the downstream teacher layers")
    s.add_argument("--lr", type=float, help="Adam learning rate of the PTL stages (default 1e-4; the last stage "
                                            "and the fine-tune use a tenth)")
    s.add_argument("--teacher-kd", type=float, help="weight of KD from the float teacher's logits in the teacher "
                   "QAT, step 0 (default 0: cross-entropy only)")
    s.add_argument("--teacher-lr", type=float, help="Adam learning rate of the teacher QAT, step 0 (default 1e-4)")
    s.add_argument("--teacher-lr-schedule", choices=("constant", "cosine"),
                   help="the teacher QAT's learning rate: constant (default) or cosine from --teacher-lr to 0 "
                   "over its --teacher-epochs, per step")
    s.add_argument("--scratch-lr", type=float, help="Adam learning rate of --method scratch (default 1e-2)")
    s.add_argument("--batch-size", type=int, help="global batch size, over all torchrun processes (default 128)")
    s.add_argument("--steps-per-epoch", type=int, help="batches per scheduler epoch (default: a full pass)")
    s.add_argument("--calib-images", type=int, help="training images that calibrate activation steps and the "
                                                    "local initialisation (default 1024)")
    s.add_argument("--val-images", type=int, help="validation images behind PTL's decisions (best epoch, "
                                                  "patience): the first N of the split (default: all)")
    s.add_argument("--seed", type=int, help="random seed (default 0)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished phase")
    s.set_defaults(func=cmd_distill)

    e = sub.add_parser("eval", parents=[common], help="test accuracy of a distilled student")
    e.add_argument("run", help="distill run directory (or its model.npz)")
    e.add_argument("--backend", default="numpy",
                   help="numpy (reference executor, default) | onnx (ONNX Runtime) | openvino (OpenVINO, the "
                        "ONNX export) | c (compiled C99) | litert (LiteRT with XNNPACK, the tflite export) | tflm "
                        "(TFLite Micro; exact for --rounding double students) | qonnx (qonnx's executor) | torch")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", parents=[common], help="write the integer model as npz, ONNX, C99 source, "
                                                        "LiteRT (.tflite) or QONNX")
    x.add_argument("model", help="a distill run directory or a model.npz")
    x.add_argument("--format", required=True, help="npz | onnx | c | tflite (refused unless every layer is proven "
                                                   "exact in LiteRT's XNNPACK) | qonnx")
    x.add_argument("--out", required=True, help="output file (npz, onnx, tflite, qonnx) or directory (c)")
    x.add_argument("--fallback", choices=("integer", "nearest"),
                   help="tflite: a layer not proven exact in XNNPACK in exact integer ops (off XNNPACK, slower), or "
                        "with the nearest float32 scale (not exact); default: refuse it")
    x.add_argument("--target", choices=("xnnpack", "builtin", "tflm"),
                   help="tflite: the runtime the proof is for: xnnpack (default: LiteRT's delegate, float32 "
                        "requantization) | builtin (LiteRT's own kernels) | tflm (TFLite Micro, CMSIS-NN); the last "
                        "two round twice, so prove students converted with --rounding double")
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("info", parents=[common], help="per-layer bits, mult, shift, accumulator bounds")
    i.add_argument("model", help="a model.npz file or a distill run directory")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", parents=[common, train], help="ptl against the baselines and ablations, on one teacher",
                       description="Run fold, qat-fold, scratch, oneshot, ptl, ptl-no-target and ptl-no-comp on "
                                   "the same teacher, bits and budget; write results.json, results.md and plots "
                                   "into --out. Rows already done are skipped, so it can be stopped and rerun.")
    b.add_argument("--teacher", help="teacher run directory")
    b.add_argument("--out", required=True, help="bench directory (results and one run directory per row)")
    b.add_argument("--quick", action="store_true", help="a tiny budget on digits with the tiny model (CI)")
    b.add_argument("--status", action="store_true",
                   help="print where each row of the grid stands (done, running, started, pending) and exit")
    b.add_argument("--methods", help="comma-separated (default: all, in the order fold,qat-fold,scratch,"
                                      "oneshot,ptl,ptl-no-target,ptl-no-comp)")
    b.add_argument("--bits", default="4,2,8,3", help="comma-separated W = A bit widths, in run order "
                                                     "(default 4,2,8,3)")
    b.add_argument("--scales", default="per-layer,per-channel", help="comma-separated (default both)")
    b.add_argument("--seeds", default="0,1", help="comma-separated; the first for every row (default 0,1)")
    b.add_argument("--seed-methods", default="ptl,oneshot,qat-fold,fold",
                   help="methods that also run the other seeds (default ptl,oneshot,qat-fold,fold)")
    b.add_argument("--steps-per-epoch", type=int, default=100, help="batches per scheduler epoch (default 100)")
    b.add_argument("--teacher-epochs", type=int, default=1, help="teacher QAT epochs (default 1)")
    b.add_argument("--max-epochs-per-stage", type=int, default=1, help="default 1")
    b.add_argument("--patience", type=int, default=1, help="default 1")
    b.add_argument("--finetune-epochs", type=int, default=1, help="default 1")
    b.add_argument("--calib-images", type=int, default=1024, help="local-initialisation images (default 1024)")
    b.add_argument("--val-images", type=int, default=None,
                   help="the schedulers' decisions on the first N validation images (default: all)")
    b.add_argument("--teacher-weight-grid", default="channel", choices=("channel", "folded"),
                   help="the teacher QNN's weight grid for every row (see distill; default channel)")
    b.add_argument("--low-bits-lr", type=float, default=1e-3,
                   help="stage learning rate at 2 and 3 bits (default 1e-3; 4+ bits use the distill default)")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("report", parents=[common], help="markdown + HTML report of one distill run")
    r.add_argument("run", help="a finished distill run directory")
    r.add_argument("--out", help="where to write report.md / report.html (default: the run directory)")
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", parents=[common], help="run the main job end to end on the default data")
    d.add_argument("--out", default="runs/demo", help="where the demo's runs go (default runs/demo)")
    d.set_defaults(func=cmd_demo)
    return p


def _import_torch() -> None:
    """Import torch (every command uses it) with Ctrl-C exiting at once, 130 and one line. A
    KeyboardInterrupt raised there is not safe: torch's C initialisation swallows one raised
    while it imports numpy and goes on with numpy half-imported, so the command would run on,
    or fail later with a traceback. Nothing has been written yet, so stopping short is safe."""

    def stop(signum, frame) -> None:
        os.write(2, b"fiqnn: interrupted\n")
        os._exit(130)

    ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not if ignored (`fiqnn &`) or taken
    if ours:
        signal.signal(signal.SIGINT, stop)
    try:
        import torch  # noqa: F401
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


# How to go on after an interrupt or a failed write, for the commands that can.
_CONTINUE = {"train-teacher": "rerun with --resume to continue", "distill": "rerun with --resume to continue",
             "bench": "rerun it to continue", "demo": "rerun it to continue"}


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code. A user error (2), Ctrl-C at any moment, even
    while torch loads (130), and a reader closing stdout early (141, as for a tool killed by
    SIGPIPE) each end in at most one line on stderr, never a traceback."""
    command = None
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, --version, or a usage error (already printed)
            return int(e.code or 0)
        command = args.command
        _import_torch()
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
        return code
    except FiqnnError as e:
        hint = f"; {_CONTINUE[command]}" if isinstance(e, OutputError) and command in _CONTINUE else ""
        print(f"fiqnn: error: {e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fiqnn: interrupted" + (f"; {_CONTINUE[command]}" if command in _CONTINUE else ""), file=sys.stderr)
        # A Ctrl-C that lands inside exec() of a string (dataclasses and namedtuple do that as
        # modules load) sets CPython's "unhandled KeyboardInterrupt" flag although it is handled
        # here, and `python -m fiqnn` would then die by SIGINT instead of exiting 130; evaluating
        # a string clears the flag.
        exec("")
        return 130
    except BrokenPipeError:  # e.g. `fiqnn info --json | head -c 300`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush then has nowhere to fail
        return 141
