"""Double rounding on the runtimes that round twice: LiteRT's builtin kernels and TFLite Micro.

    .venv/bin/python bench/tflm.py --model 'alexnet-s W4A4 double=runs/cm/fold-w4a4-double' ... [--data fashion-mnist]

For each model: the channels ``fiqnn.export.tflite.prove`` cannot prove exact for the builtin
kernels and for TFLite Micro (both compute gemmlowp's double rounding from the file's float32
scales), then the tflm-target .tflite run in LiteRT without a delegate (its builtin kernels) and
in TFLite Micro's Python interpreter (package tflite-micro: its reference kernels, one image at a
time) on every test image, the int32 logits compared with the numpy executor's image by image.
A model converted with single rounding is refused by the proof wherever double rounding moves a
threshold, and is listed with its count of unproven channels only. Writes bench/results/tflm.json
and .md.
"""

from __future__ import annotations

import time

from _exports import agreement, measured, models, write


def measure(graph, ref, x_q, y) -> dict:
    from fiqnn.export import tflite as T

    rounding = sorted({n.rounding for n in graph.int_layers() if n.a_bits is not None})
    row = {"rounding": "/".join(rounding), "unproven": {}, "runs": {}}
    for target in ("builtin", "tflm"):
        row["unproven"][target] = len(T.unproven(T.prove(graph, target)))
    if any(row["unproven"].values()):
        return row
    row["acc_numpy"] = float((ref.argmax(1) == y).mean() * 100)
    data, _ = T.to_tflite(graph, "tflm")
    for name, fn in (("LiteRT builtin", lambda: T.run_litert(data, x_q, target="builtin")),
                     ("TFLite Micro", lambda: T.run_tflm(data, x_q))):
        t0 = time.perf_counter()
        row["runs"][name] = {**agreement(fn(), ref, y), "wall_s": round(time.perf_counter() - t0, 1)}
    return row


def main() -> int:
    from importlib.metadata import version

    rows = measured(__doc__, measure)
    test, args = models.test, models.args
    lines = [f"The tflm-target LiteRT export on all {len(test.y):,} {args.data} test images, in LiteRT's builtin "
             f"kernels (ai-edge-litert {version('ai-edge-litert')}, no delegate) and in TFLite Micro "
             f"(tflite-micro {version('tflite-micro')}, its Python interpreter: the reference kernels built for "
             "the host), int32 logits compared with the numpy executor's image by image. Both runtimes requantize "
             "with gemmlowp's double rounding; `unproven`: channels `prove()` cannot prove exact for them. Wall: "
             "the run alone (TFLite Micro one image at a time).", "",
             "| model | (E4) rounding | unproven (builtin / tflm) | runtime | logits == numpy | accuracy (numpy) | "
             "wall |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        unproven = f"{r['unproven']['builtin']} / {r['unproven']['tflm']}"
        if not r["runs"]:
            lines.append(f"| {r['label']} | {r['rounding']} | {unproven} | (not exported) | - | - | - |")
        for name, run_ in r["runs"].items():
            lines.append(f"| {r['label']} | {r['rounding']} | {unproven} | {name} | {run_['images_equal']:,} / "
                         f"{len(test.y):,} | {run_['acc']:.2f}% ({r['acc_numpy']:.2f}%) | {run_['wall_s']} s |")
    write("tflm", "tflm.py", rows, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
