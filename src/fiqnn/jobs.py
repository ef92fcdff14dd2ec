"""Run-directory jobs behind the CLI: distill a teacher run, evaluate a student run.

A distill run directory holds, besides config.json / metrics.json / train.log /
checkpoint.pt (see :mod:`fiqnn._run`):

    student.pt   the trained student (structure + weights, loads without the teacher)
    model.npz    its IntGraph, the integer model file (no pickle)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._progress import bar as progress_bar
from ._run import CONFIG, METRICS, RunDir, load_torch, read_json
from .config import DistillConfig
from .data import DataBundle, batches, load_data, num_batches
from .errors import CheckpointError, FiqnnError
from .integer.execute import run
from .integer.graph import IntGraph
from .integer.modelfile import load, save
from .nets.fximport import import_model
from .parallel import Runtime
from .train.convert import convert
from .train.distill import accuracy, calibration, distill, save_student, teacher_qnn_from_state
from .train.graphnet import GraphNet, upgrade_state
from .train.teacher import load_teacher

STUDENT, MODEL_FILE = "student.pt", "model.npz"


def teacher_data(teacher_dir: str | os.PathLike) -> tuple[dict[str, Any], DataBundle]:
    """The teacher run's config and its data set (the same splits it was trained on)."""
    cfg = read_json(Path(teacher_dir) / CONFIG)["config"] if (Path(teacher_dir) / CONFIG).exists() else None
    if cfg is None:
        raise CheckpointError(f"{teacher_dir} is not a teacher run directory (no {CONFIG})")
    return cfg, load_data(cfg["data"], cfg.get("data_dir"), val_fraction=cfg.get("val_fraction", 0.1),
                          image_size=cfg.get("image_size"))


def teacher_dir_of(run_dir: str | os.PathLike) -> Path:
    """The teacher run directory of distill run ``run_dir``: the absolute path stored in its
    config; if that is gone, the same relative to ``run_dir`` (the runs were moved together).
    Runs from before both were stored hold the path as given, relative to where distill ran."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / CONFIG)["config"]
    candidates = [Path(config["teacher"])]
    if "teacher_rel" in config:
        candidates.append(run_dir / config["teacher_rel"])
    return next((p for p in candidates if (p / CONFIG).exists()), candidates[0])


def distill_run(teacher_dir: str | os.PathLike, config: DistillConfig, out: str | os.PathLike, *,
                resume: bool = False, progress: bool = True, runtime: Runtime | None = None) -> dict[str, Any] | None:
    """``fiqnn distill``: distill the teacher of ``teacher_dir`` into run directory ``out``,
    convert it, and check the integer model against the torch student on the whole test split.

    Data-parallel (``runtime`` from :func:`fiqnn.parallel.setup` under torchrun): every rank
    trains; rank 0 alone converts, checks and writes, and gets the metrics (the others None).
    """
    rt = runtime or Runtime()
    rt.check_batch(config.batch_size)
    teacher = load_teacher(teacher_dir)
    import_model(teacher)  # refuse an unsupported teacher before the run directory exists
    tcfg, data = teacher_data(teacher_dir)
    teacher_path = Path(teacher_dir).resolve()  # stored absolute and relative to ``out``: see teacher_dir_of
    where = {"teacher": str(teacher_path), "teacher_rel": os.path.relpath(teacher_path, Path(out).resolve())}
    if resume and (Path(out) / CONFIG).exists() and teacher_dir_of(out).resolve() == teacher_path:
        where = {}  # the run's own teacher, however its config spells the path (older runs: relative)
    run_dir = RunDir(out, {**config.to_dict(), **where}, resume=resume, main=rt.main)
    state = run_dir.load_checkpoint() if run_dir.resumed else None  # every rank reads it
    rt.barrier()  # before rank 0 creates the directory, which would look like a run to resume
    run_dir.create("distill")
    last = {"state": state}

    def checkpoint(s: dict[str, Any]) -> None:
        run_dir.save_checkpoint(s)
        last["state"] = s

    t0 = time.perf_counter()
    student = distill(teacher, data, config, checkpoint=checkpoint, resume_state=state,
                      progress=progress, log=run_dir.log, runtime=rt)
    wall = time.perf_counter() - t0
    if not rt.main:
        return None
    student = student.cpu()
    qnn = teacher_qnn_from_state(teacher, config, last["state"], calibration(data, 64))  # steps: from the state
    save_student(student, run_dir.path / STUDENT, config)

    teacher_metrics = read_json(Path(teacher_dir) / METRICS) if (Path(teacher_dir) / METRICS).exists() else {}
    info = {"method": config.method, "w_bits": config.w_bits, "a_bits": config.a_bits, "scale": config.scale,
            "arch": tcfg["arch"], "data": tcfg["data"]}
    graph = convert(student, info=info)
    save(graph, run_dir.path / MODEL_FILE)
    check = compare_backends(student, graph, data.test, progress)
    qnn_acc = accuracy(qnn, data.test, progress=progress, desc="teacher QNN, test")
    metrics = {"status": "done", "method": config.method, "w_bits": config.w_bits, "a_bits": config.a_bits,
               "scale": config.scale, "seed": config.seed, "arch": tcfg["arch"], "data": tcfg["data"],
               "teacher_acc": teacher_metrics.get("test_acc"), "teacher_qnn_acc": qnn_acc,
               "test_acc": check["numpy_acc"],
               "torch_acc": check["torch_acc"], "bit_exact": check["bit_exact"],
               "max_abs_logit_diff": check["max_abs_diff"], "test_images": check["images"],
               "epochs": sum(h["epochs"] for h in student.history), "wall_s": wall, "history": student.history}
    run_dir.write_metrics(metrics)
    teacher_acc = "unknown" if metrics["teacher_acc"] is None else f"{metrics['teacher_acc']:.2f}"
    run_dir.log(f"student W{config.w_bits}A{config.a_bits} {config.method}: integer test accuracy "
                f"{metrics['test_acc']:.2f}% (teacher {teacher_acc}), bit-exact with torch on "
                f"{check['images']} images: {check['bit_exact']}")
    return metrics


@torch.no_grad()
def torch_logits(student: GraphNet, split, progress: bool = False) -> np.ndarray:
    """The eval-mode (exact) student's integer logits on ``split``, as int64."""
    student.eval()
    parts = progress_bar(batches(split, 500), progress=progress, desc="torch student", total=num_batches(split, 500))
    return torch.cat([student(x_q) for x_q, _ in parts]).to(torch.int64).numpy()


def compare_backends(student: GraphNet, graph: IntGraph, split, progress: bool = False) -> dict[str, Any]:
    """Run the torch student and the numpy executor on every image of ``split``."""
    y = split.y
    t = torch_logits(student, split, progress)
    n = run(graph, split.x_q, progress=progress).astype(np.int64)
    return {"images": len(y), "torch_acc": float((t.argmax(1) == y).mean() * 100),
            "numpy_acc": float((n.argmax(1) == y).mean() * 100), "bit_exact": bool(np.array_equal(t, n)),
            "max_abs_diff": int(np.abs(t - n).max())}


BACKENDS = ("numpy", "torch", "onnx", "openvino", "c", "litert", "tflm", "qonnx")


def run_backend(graph: IntGraph, x_q: np.ndarray, backend: str, progress: bool = False) -> np.ndarray:
    """int32 logits of ``graph`` from the numpy executor, ONNX Runtime, OpenVINO, compiled C, LiteRT
    (the .tflite export, XNNPACK; refused unless every layer is proven exact there) or qonnx's
    executor (the QONNX export); tflm: TFLite Micro's reference kernels (the tflm-target .tflite,
    exact for models converted with double rounding)."""
    if backend == "numpy":
        return run(graph, x_q, progress=progress)
    if backend == "onnx":
        from ._optional import optional_import

        for module in ("onnx", "onnxruntime"):
            optional_import(module, "the onnx backend")
        from .export.onnx import run_onnx

        return run_onnx(graph, x_q, progress=progress)
    if backend == "openvino":
        from ._optional import optional_import

        for module in ("onnx", "openvino"):
            optional_import(module, "the openvino backend")
        from .export.onnx import run_openvino

        return run_openvino(graph, x_q, progress=progress)
    if backend == "c":
        from .export.c99 import run_c

        return run_c(graph, x_q, progress=progress)
    if backend == "litert":
        from ._optional import optional_import

        for module in ("tflite", "ai_edge_litert"):
            optional_import(module, "the litert backend")
        from .export.tflite import run_litert

        return run_litert(graph, x_q)
    if backend == "tflm":
        from ._optional import optional_import

        for module in ("tflite", "tflite_micro"):
            optional_import(module, "the tflm backend")
        from .export.tflite import run_tflm

        return run_tflm(graph, x_q, progress=progress)
    if backend == "qonnx":
        from ._optional import optional_import

        optional_import("qonnx", "the qonnx backend")
        from .export.qonnx import run_qonnx

        return run_qonnx(graph, x_q)
    raise FiqnnError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


EXPORT_FORMATS = ("npz", "onnx", "c", "tflite", "qonnx")


def export_run(target: str | os.PathLike, fmt: str, out: str | os.PathLike, fallback: str | None = None,
               runtime: str | None = None) -> Path:
    """``fiqnn export``: write a distill run's (or a model file's) IntGraph as npz, onnx, C, tflite
    (LiteRT, every layer proven exact for XNNPACK or refused) or qonnx.

    ``out`` is a file (npz, onnx, tflite, qonnx) or a directory (c); for every format, missing parent
    directories are created, after checking that they can be. ``fallback`` (tflite only): what to
    do with a layer not proven exact in XNNPACK, "integer" (exact integer ops, off XNNPACK) or
    "nearest" (the nearest float32 scale: LiteRT may round a few accumulators differently);
    refused by default. ``runtime`` (tflite only): the LiteRT target whose rule the proof uses,
    "xnnpack" (default), "builtin" or "tflm" (TFLite Micro: also no int32 BATCH_MATMUL)."""
    from . import _io
    from ._run import check_writable

    if fmt not in EXPORT_FORMATS:
        raise FiqnnError(f"unknown format {fmt!r}; choose {', '.join(EXPORT_FORMATS[:-1])} or {EXPORT_FORMATS[-1]}")
    if fallback is not None and (fmt != "tflite" or fallback not in ("integer", "nearest")):
        raise FiqnnError(f"--fallback {fallback} is for --format tflite: integer or nearest")
    if runtime is not None and fmt != "tflite":
        raise FiqnnError(f"--target {runtime} is for --format tflite")
    target, out = Path(target), Path(out)
    graph = load(target / MODEL_FILE if target.is_dir() else target)
    what = f"the {fmt} model {out}"
    from ._optional import optional_import

    for module in {"onnx": ("onnx",), "tflite": ("tflite",), "qonnx": ("onnx", "qonnx")}.get(fmt, ()):
        optional_import(module, f"the {fmt} export")
    directory = out if fmt == "c" else out.parent
    check_writable(directory, what)
    if fmt != "c" and out.is_dir():
        raise FiqnnError(f"cannot write {what}: it is a directory")
    with _io.writing(what):
        directory.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "npz":
            save(graph, out)
        elif fmt == "onnx":
            from .export.onnx import export_onnx

            export_onnx(graph, out)
        elif fmt == "tflite":
            from .export.tflite import export_tflite

            export_tflite(graph, out, target=runtime or "xnnpack", fallback=fallback)
        elif fmt == "qonnx":
            from .export.qonnx import export_qonnx

            export_qonnx(graph, out)
        else:
            from .export.c99 import export_c

            export_c(graph, out)
    except OSError as e:
        raise FiqnnError(f"cannot write {what}: {e.strerror or e}") from None
    return out


def load_student(run_dir: str | os.PathLike) -> GraphNet:
    blob = load_torch(Path(run_dir) / STUDENT)
    try:
        student = GraphNet.from_spec(blob["spec"])  # (older chain students too)
        student.load_state_dict(upgrade_state(blob["state_dict"], list(student.units)))
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(run_dir) / STUDENT} is not a fiqnn student ({e})") from None
    return student.eval()


def evaluate_run(target: str | os.PathLike, backend: str = "numpy", data_dir: str | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """``fiqnn eval``: test accuracy of a distill run (or a model file inside one)."""
    target = Path(target)
    run_dir = target.parent if target.suffix == ".npz" else target
    if not (run_dir / CONFIG).exists():
        raise FiqnnError(f"{run_dir} is not a distill run directory (no {CONFIG})")
    _, data = teacher_data(teacher_dir_of(run_dir))
    if backend not in BACKENDS:
        raise FiqnnError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    t0 = time.perf_counter()
    if backend == "torch":
        logits = torch_logits(load_student(run_dir), data.test, progress)
    else:
        graph = load(target if target.suffix == ".npz" else run_dir / MODEL_FILE)
        if tuple(graph.in_shape) != tuple(data.in_shape) or graph.num_classes != data.num_classes:
            raise FiqnnError(f"the model takes {graph.in_shape} images into {graph.num_classes} classes, but the "
                             f"run's data set has {tuple(data.in_shape)} images and {data.num_classes} classes")
        logits = run_backend(graph, data.test.x_q, backend, progress)
    acc = float((logits.argmax(1) == data.test.y).mean() * 100)
    return {"backend": backend, "test_acc": acc, "images": len(data.test.y), "wall_s": time.perf_counter() - t0}
