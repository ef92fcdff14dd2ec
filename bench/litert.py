"""The LiteRT export on the whole test set: what prove() holds, and LiteRT + XNNPACK against fiqnn.run.

    .venv/bin/python bench/litert.py --model 'alexnet-s W4A4=runs/cm/fold-w4a4' ... [--data fashion-mnist]

For each model: the layers (and channels) ``fiqnn.export.tflite.prove`` cannot prove exact for
XNNPACK; then the .tflite run in LiteRT (default resolver: the XNNPACK delegate, builtin kernels
for what it declines; one thread) on every test image, its int32 logits compared with the numpy
executor's image by image, and its test accuracy. A model with unproven layers is run with each
fallback: "nearest" (the nearest float32 scale, written anyway: not exact) and "integer" (those
layers in exact integer ops, off XNNPACK). Writes bench/results/litert.json and .md.
"""

from __future__ import annotations

import sys
import time

from _exports import agreement, measured, models, write


def measure(graph, ref, x_q, y) -> dict:
    from fiqnn.export import tflite as T

    proofs = T.prove(graph)
    missing = T.unproven(proofs)
    row = {"nodes": len(graph.layers), "adds": sum(n.kind == "add" for n in graph.layers),
           "unproven_channels": len(missing),
           "unproven_nodes": sorted(name for name, p in proofs.items() if not p.holds),
           "acc_numpy": float((ref.argmax(1) == y).mean() * 100), "runs": {}}
    for fallback in ([None] if not missing else ["nearest", "integer"]):
        t0 = time.perf_counter()
        data, _ = T.to_tflite(graph, fallback=fallback)
        got = T.run_litert(data, x_q)
        row["runs"][str(fallback)] = {**agreement(got, ref, y), "wall_s": round(time.perf_counter() - t0, 1)}
    return row


def main() -> int:
    from importlib.metadata import version

    rows = measured(__doc__, measure)
    test, args = models.test, models.args
    lines = [f"The LiteRT export (ai-edge-litert {version('ai-edge-litert')}, XNNPACK delegate, one thread) on all "
             f"{len(test.y):,} {args.data} test images: logits equal to the numpy executor's, image by image. "
             "Unproven: the layers `prove()` cannot prove exact for XNNPACK (float32 has 24 significant bits: a "
             "W8A8 layer whose accumulators reach far beyond 2^24 / 255 can leave no float32 scale that places "
             "all 255 thresholds right); those models are run with each fallback. Wall time: export and run.", "",
             "| model | unproven layers (channels) | fallback | logits == numpy | argmax differs | accuracy "
             "(numpy) | wall |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        unproven = f"{', '.join(r['unproven_nodes'])} ({r['unproven_channels']})" if r["unproven_nodes"] else "none"
        for fallback, run_ in r["runs"].items():
            lines.append(f"| {r['label']} | {unproven} | {'-' if fallback == 'None' else fallback} | "
                         f"{run_['images_equal']:,} / {len(test.y):,} | {run_['argmax_differs']} | "
                         f"{run_['acc']:.2f}% ({r['acc_numpy']:.2f}%) | {run_['wall_s']} s |")
    write("litert", "litert.py", rows, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
