"""Measurements behind docs/scaling.md: what an ImageNet alexnet-bn run costs per image.

    OMP_NUM_THREADS=2 .venv/bin/python bench/scale_estimates.py

On this machine (CPU only), for alexnet-bn at 224x224x3, 1000 classes, random weights and
images (shapes are all that matter here), each training step of the pipeline built as
fiqnn.train.distill builds it:

- parameters and multiply-accumulates per image (forward);
- activation memory per image: the bytes autograd saves for the backward pass (counted with
  torch.autograd.graph.saved_tensors_hooks, parameters excluded, as the difference between
  batches of 8 and 4 divided by 4), for the float teacher, the teacher QNN's QAT, every PTL
  stage (converted prefix without gradients, S_k and the compensated downstream teacher units
  training, frozen teacher for targets and KD) and the fine-tune (student + frozen teacher);
- time per training step at batch 8 on the 2 CPU cores (forward, backward, optimizer step),
  median of 3 after a warm-up step;
- JPEG decoding + random-resized crop + flip of FolderSplit, per image on one core, on 64
  synthetic 500x375 JPEGs (about ImageNet's mean size).

Writes bench/results/scale.json and .md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "scale"


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import torch
    import torch.nn.functional as F

    from fiqnn import _io
    from fiqnn.config import DistillConfig
    from fiqnn.data import ArraySplit, DataBundle, FolderSplit, to_float
    from fiqnn.nets.fximport import import_model
    from fiqnn.nets.models import build_model
    from fiqnn.train.distill import distill
    from fiqnn.train.loop import kd_loss
    from fiqnn.train.ptl import stage_loss, stages
    from fiqnn.train.qnn import build_teacher_qnn

    torch.manual_seed(0)
    shape, classes = (3, 224, 224), 1000
    teacher = build_model("alexnet-bn", classes, shape)
    params = sum(p.numel() for p in teacher.parameters())
    macs = 0

    def count(module, inputs, output):
        nonlocal macs
        w = module.weight
        macs += output[0].numel() * (w[0].numel() if isinstance(module, torch.nn.Conv2d) else w.shape[1])

    hooks = [m.register_forward_hook(count) for m in teacher.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                         torch.nn.Linear))]
    teacher.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()

    rng = np.random.default_rng(0)

    def split(n):
        return ArraySplit(rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, classes, n))

    config = DistillConfig(w_bits=4, a_bits=4, method="fold", teacher_epochs=0, calib_images=8, batch_size=8)
    data = DataBundle("synthetic", split(8), split(4), split(4), classes, shape)
    student = distill(teacher, data, config, progress=False, log=lambda m: None)  # fold: the student's layout
    calib = torch.from_numpy(split(8).x_q).float()
    qnn = build_teacher_qnn(import_model(teacher), config, calib)
    frozen = build_teacher_qnn(import_model(teacher), config, calib).eval()
    groups = stages(qnn)

    def teacher_step(x_q, y):
        teacher.train()
        return F.cross_entropy(teacher(to_float(x_q)), y), list(teacher.parameters())

    def qat_step(x_q, y):
        qnn.train()
        return F.cross_entropy(qnn(x_q.float()), y), list(qnn.parameters())

    def stage_step(k):
        def step(x_q, y):
            net, loss_fn = stage_loss(student, qnn, frozen, groups, k, config)
            stage = [student.units[n] for n in groups[k]]
            rest = [qnn.units[n] for g in groups[k + 1:] for n in g]
            net.eval()
            for m in stage + rest:
                m.train()
            loss = loss_fn(x_q, y)  # the stage's own loss
            return loss, [p for m in stage + rest for p in m.parameters()]
        return step

    def finetune_step(x_q, y):
        student.train()
        with torch.no_grad():
            t = frozen(x_q.float())
        logits = student(x_q.float())
        return F.cross_entropy(logits, y) + kd_loss(logits, t, 4.0), list(student.parameters())

    steps = [("teacher (float, BN)", teacher_step), ("teacher QNN QAT", qat_step)]
    steps += [(f"PTL stage {k + 1} ({'..'.join(dict.fromkeys((g[0], g[-1])))})", stage_step(k))
              for k, g in enumerate(groups)]
    steps += [("fine-tune", finetune_step)]

    def saved_bytes(step, n):
        x_q, y = torch.from_numpy(split(n).x_q), torch.randint(0, classes, (n,))
        seen: dict[int, int] = {}
        param_ptrs = {p.data_ptr() for m in (teacher, qnn, student) for p in m.parameters()}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in param_ptrs:
                seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = step(x_q, y)
        del loss
        return sum(seen.values())

    def step_time(step, n=8):
        x_q, y = torch.from_numpy(split(n).x_q), torch.randint(0, classes, (n,))
        times = []
        for i in range(4):
            t0 = time.perf_counter()
            loss, trained = step(x_q, y)
            opt = torch.optim.Adam([p for p in trained if p.requires_grad], lr=1e-9)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    rows = []
    for name, step in steps:
        per_image = (saved_bytes(step, 8) - saved_bytes(step, 4)) / 4
        _, trained = step(torch.from_numpy(split(2).x_q), torch.zeros(2, dtype=torch.long))
        rows.append({"phase": name, "trained_params": sum(p.numel() for p in trained),
                     "saved_bytes_per_image": per_image, "cpu_step_s_batch8": step_time(step)})
        print(f"{name}: {per_image / 2**20:.1f} MiB/image saved, {rows[-1]['cpu_step_s_batch8']:.2f} s/step",
              flush=True)

    # JPEG decoding as the image-folder loader does it (one core).
    from PIL import Image

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        samples = []
        for i in range(64):
            img = (rng.random((375, 500, 3)) * 64 + np.linspace(0, 191, 500)[None, :, None]).astype(np.uint8)
            path = Path(tmp) / f"{i}.jpg"
            Image.fromarray(img).save(path, quality=90)
            samples.append((path, 0))
        ds = FolderSplit(samples, 224, train=True)
        ds[0]
        t0 = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        decode_s = (time.perf_counter() - t0) / len(ds)
    print(f"decode + crop: {decode_s * 1e3:.1f} ms/image/core", flush=True)

    result = {"arch": "alexnet-bn", "in_shape": list(shape), "classes": classes, "params": params,
              "macs_per_image": macs, "threads": 2, "decode_s_per_image_per_core": decode_s, "phases": rows}
    _io.write_json(OUT.with_suffix(".json"), result)
    lines = ["# alexnet-bn at 224x224x3: measured cost per image (`bench/scale_estimates.py`)", "",
             f"{params:,} parameters; {macs / 1e9:.3f} GMAC per image (forward). Activation memory: bytes "
             "autograd saves for the backward pass, per image. CPU step: forward + backward + optimizer "
             "step at batch 8 on this machine's 2 cores.", "",
             "| phase | trained parameters | saved activations per image | CPU step, batch 8 |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['trained_params']:,} | {r['saved_bytes_per_image'] / 2**20:.1f} MiB | "
                     f"{r['cpu_step_s_batch8']:.2f} s |")
    lines += ["", f"JPEG decode + random-resized crop + flip (FolderSplit, 500x375 JPEGs): "
                  f"{decode_s * 1e3:.1f} ms per image on one core."]
    _io.write_text(OUT.with_suffix(".md"), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
