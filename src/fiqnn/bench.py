"""``fiqnn bench``: PTL against the simpler routes to a BN-free integer network.

Every row is one distill run from the same teacher, data, bit widths and budget,
evaluated on the integer executor over the whole test split:

=================  ==========================================================
teacher-float      the float BN teacher itself (its test accuracy)
teacher-qnn        the BN teacher with W/A-bit fake quantizers after QAT
                   (the paper's teacher; measured in the ``ptl`` run)
fold               BN folded and post-training quantized: local init only,
                   from the float teacher (no QAT: ``teacher_epochs=0``)
qat-fold           QAT with BN kept for ptl's whole epoch budget, then BN
                   folded (the route most toolkits take)
scratch            the BN-free student trained from a random init, same
                   epochs and loss as oneshot (``method="scratch"``)
oneshot            every layer converted at once from the local init, then
                   all trained with CE + KD
ptl                progressive tandem learning
ptl-no-target      ablation: ``lambda_target=0``
ptl-no-comp        ablation: downstream teacher layers frozen
=================  ==========================================================

Rows run in the order given and the results file is rewritten after each one;
a row already in it is skipped and an interrupted row resumes from its last
finished phase, so ``fiqnn bench`` can be stopped and restarted at will.
Several ``fiqnn bench`` processes may share one ``--out`` (one per GPU, or per
core): each row is claimed by one process at a time (a lock on
``runs/<row>.lock``, released by the kernel if that process dies) and the results
file is merged under a lock, so the workers split the grid between them.
``fiqnn bench --status`` (:func:`status`) says where every row stands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _io
from ._run import METRICS, read_json
from .config import DISTILL_FLAGS, DistillConfig
from .errors import FiqnnError

if TYPE_CHECKING:
    from .parallel import Runtime

logger = logging.getLogger(__name__)  # "fiqnn.bench"

METHODS = ("fold", "qat-fold", "scratch", "oneshot", "ptl", "ptl-no-target", "ptl-no-comp")


@dataclasses.dataclass(frozen=True)
class Budget:
    """The training budget every method gets (scheduler epochs of ``steps_per_epoch`` batches)."""

    steps_per_epoch: int | None = 100
    teacher_epochs: int = 1
    max_epochs_per_stage: int = 1
    patience: int = 1
    finetune_epochs: int = 1
    calib_images: int = 1024
    val_images: int | None = None  # the schedulers' decisions on the first N validation images (None: all)
    teacher_weight_grid: str = "channel"  # the teacher QNN's weight grid (DistillConfig), for every row

    def ptl_epochs(self, layers: int) -> int:
        """The most epochs a ptl run can train: teacher QAT + every stage + fine-tune."""
        return self.teacher_epochs + layers * self.max_epochs_per_stage + self.finetune_epochs


def recipe(method: str, bits: int, scale: str, seed: int, budget: Budget, layers: int,
           lr: float | None = None) -> DistillConfig:
    """The DistillConfig of one bench row."""
    if method not in METHODS:
        raise FiqnnError(f"unknown bench method {method!r}; choose from {', '.join(METHODS)}")
    base = {**dataclasses.asdict(budget), "w_bits": bits, "a_bits": bits, "scale": scale, "seed": seed}
    if lr is not None:
        base["lr"] = lr
    change = {"fold": {"method": "fold", "teacher_epochs": 0},
              "qat-fold": {"method": "fold", "teacher_epochs": budget.ptl_epochs(layers)},
              "scratch": {"method": "scratch"}, "oneshot": {"method": "oneshot"}, "ptl": {"method": "ptl"},
              "ptl-no-target": {"method": "ptl", "lambda_target": 0.0},
              "ptl-no-comp": {"method": "ptl", "compensation": False}}[method]
    return DistillConfig(**{**base, **change})


def command_line(teacher: str, config: DistillConfig, out: str) -> str:
    """The ``fiqnn distill`` command that reproduces a row."""
    default = DistillConfig()
    parts = ["fiqnn distill", f"--teacher {teacher}", f"--out {out}"]
    for flag, field in DISTILL_FLAGS.items():
        v = getattr(config, field)
        if field in ("w_bits", "a_bits") or v != getattr(default, field):
            parts.append(f"--{flag.replace('_', '-')} {v}")
    if not config.compensation:
        parts.append("--no-compensation")
    return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Row:
    method: str
    bits: int
    scale: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}-w{self.bits}a{self.bits}-{self.scale}-s{self.seed}"


def grid(methods: Iterable[str], bits: Iterable[int], scales: Iterable[str], seeds: Iterable[int],
         seed_methods: Iterable[str]) -> list[Row]:
    """Rows in priority order: per scale, per bit width, every method at the first seed;
    then the extra seeds for ``seed_methods``."""
    methods, seeds, seed_methods = list(methods), list(seeds), set(seed_methods)
    rows = [Row(m, b, s, seeds[0]) for s in scales for b in bits for m in methods]
    rows += [Row(m, b, s, seed) for seed in seeds[1:] for s in scales for b in bits for m in methods
             if m in seed_methods]
    return rows


def run_bench(teacher_dir: str | os.PathLike, out: str | os.PathLike, rows: list[Row], budget: Budget, *,
              lr_by_bits: Callable[[int], float | None] = lambda bits: None, progress: bool = True,
              log: Callable[[str], None] | None = None, runtime: Runtime | None = None) -> dict[str, Any]:
    """Run ``rows`` (skipping those already in ``out/results.json``) and write the results,
    the table (``results.md``) and the plots (``plots/``) after every row. Progress lines go
    to ``log`` (default: info records of the ``fiqnn.bench`` logger). ``runtime``: the device,
    precision and memory layout every row trains with (one process: a bench row is not
    data-parallel; run several bench processes on one ``out`` instead)."""
    log = log or logger.info
    from .jobs import distill_run, teacher_data
    from .train.ptl import stage_count
    from .train.teacher import load_teacher

    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    layers = stage_count(load_teacher(teacher_dir))
    tcfg, _ = teacher_data(teacher_dir)
    tmetrics = read_json(Path(teacher_dir) / METRICS)
    path = out / "results.json"

    def merged(row: dict[str, Any] | None = None) -> dict[str, Any]:
        """results.json as other workers left it, plus this teacher, budget and ``row``, rewritten."""
        with _flock(out / ".results.lock"):
            results = read_json(path) if path.exists() else {}
            results.update(teacher={"dir": str(teacher_dir), "arch": tcfg["arch"], "data": tcfg["data"],
                                    "test_acc": tmetrics["test_acc"], "epochs": tmetrics.get("epochs"),
                                    "wall_s": tmetrics.get("train_wall_s")},
                           budget=dataclasses.asdict(budget))
            results.setdefault("rows", [])
            if row is not None and row["key"] not in {r["key"] for r in results["rows"]}:
                results["rows"].append(row)
            write_results(out, results)
            return results

    results = merged()
    for i, row in enumerate(rows):
        if row.key in {r["key"] for r in results["rows"]}:
            continue
        with _flock(out / "runs" / f"{row.key}.lock", wait=False) as mine:
            if not mine:
                log(f"[{i + 1}/{len(rows)}] {row.key}: running in another bench process; skipped")
                continue
            if row.key in {r["key"] for r in merged()["rows"]}:  # finished by another one meanwhile
                continue
            config = recipe(row.method, row.bits, row.scale, row.seed, budget, layers, lr_by_bits(row.bits))
            run_dir = out / "runs" / row.key
            log(f"[{i + 1}/{len(rows)}] {row.key}")
            m = distill_run(teacher_dir, config, run_dir, resume=True, progress=progress, runtime=runtime)
            results = merged({
                "key": row.key, "method": row.method, "bits": row.bits, "scale": row.scale, "seed": row.seed,
                "test_acc": m["test_acc"], "teacher_qnn_acc": m["teacher_qnn_acc"], "bit_exact": m["bit_exact"],
                "test_images": m["test_images"], "epochs": m["epochs"],
                "wall_s": round(sum(h["wall_s"] for h in m["history"]), 1),  # all phases, across resumes
                "run": str(run_dir), "command": command_line(str(teacher_dir), config, str(run_dir))})
            log(f"{row.key}: integer test accuracy {m['test_acc']:.2f}%")
    return merged()


def status(out: str | os.PathLike, rows: list[Row]) -> list[dict[str, Any]]:
    """Where each row of a grid stands in bench directory ``out``: ``done`` (with its test
    accuracy), ``running`` (a bench process holds its claim), ``started`` (a run directory
    that ``fiqnn bench`` resumes) or ``pending``; unfinished rows carry their log's last line.
    It creates no file, and ``out`` must be a directory. Testing a claim takes a free one for an
    instant: a bench process that reaches that row in the same instant skips it, and its next
    run picks it up."""
    out = Path(out)
    if not out.is_dir():
        why = "not a directory" if out.exists() else "no such directory"
        raise FiqnnError(f"{out} holds no bench results ({why}); start one with "
                         f"`fiqnn bench --teacher DIR --out {out}`")
    done = {r["key"]: r for r in (read_json(out / "results.json") if (out / "results.json").exists()
                                  else {}).get("rows", [])}
    lines = []
    for row in rows:
        run_dir, lock = out / "runs" / row.key, out / "runs" / f"{row.key}.lock"
        line: dict[str, Any] = {"key": row.key}
        if row.key in done:
            line.update(state="done", test_acc=done[row.key]["test_acc"])
        else:
            running = False
            if lock.exists():
                with _flock(lock, wait=False) as free:
                    running = not free
            line["state"] = "running" if running else "started" if run_dir.is_dir() else "pending"
            log = run_dir / "train.log"
            if log.exists():
                last = log.read_text(errors="replace").strip().splitlines()
                line["last_log"] = last[-1] if last else ""
        lines.append(line)
    return lines


@contextlib.contextmanager
def _flock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (POSIX flock; the kernel drops it when the process
    dies). Yields False, without waiting, if ``wait`` is False and another process holds it."""
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per (method, bits, scale): mean, spread (max - min) and count over seeds;
    teacher-qnn comes from the ptl rows' teacher QNN."""
    groups: dict[tuple, list[dict]] = {}
    for r in results.get("rows", []):
        groups.setdefault((r["method"], r["bits"], r["scale"]), []).append(r)
        if r["method"] == "ptl":
            groups.setdefault(("teacher-qnn", r["bits"], r["scale"]), []).append(
                {**r, "test_acc": r["teacher_qnn_acc"], "epochs": None, "wall_s": None})
    lines = []
    for (method, bits, scale), rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        lines.append({"method": method, "bits": bits, "scale": scale, "mean": sum(accs) / len(accs),
                      "spread": max(accs) - min(accs), "seeds": sorted(r["seed"] for r in rs),
                      "bit_exact": all(r["bit_exact"] for r in rs), "epochs": rs[0]["epochs"],
                      "wall_s": rs[0]["wall_s"]})
    return lines


ORDER = ("teacher-qnn", *METHODS)


def table(results: dict[str, Any]) -> str:
    """The markdown table: one column per bit width, one row per (method, scale)."""
    t = results["teacher"]
    lines_ = summary(results)
    bits = sorted({s["bits"] for s in lines_}, reverse=True)
    scales = [s for s in ("per-layer", "per-channel") if any(x["scale"] == s for x in lines_)]
    cell = {(s["method"], s["bits"], s["scale"]): s for s in lines_}
    head = "| method | scale | " + " | ".join(f"W{b}A{b}" for b in bits) + " |"
    out = [head, "|---|---|" + "---|" * len(bits),
           "| teacher-float | - | " + " | ".join(f"{t['test_acc']:.2f}" for _ in bits) + " |"]
    for scale in scales:
        for method in ORDER:
            cells = []
            for b in bits:
                s = cell.get((method, b, scale))
                if s is None:
                    cells.append("not run")
                    continue
                txt = f"{s['mean']:.2f}"
                if len(s["seeds"]) > 1:
                    txt += f" ± {s['spread'] / 2:.2f} ({len(s['seeds'])} seeds)"
                if not s["bit_exact"]:
                    txt += " NOT bit-exact"
                cells.append(txt)
            if any(c != "not run" for c in cells):
                out.append(f"| {method} | {scale} | " + " | ".join(cells) + " |")
    return "\n".join(out)


RIVALS = ("fold", "qat-fold", "scratch", "oneshot", "ptl-no-target", "ptl-no-comp")


def versus(results: dict[str, Any]) -> str:
    """The markdown table of ptl against each baseline and ablation at every bit width and scale:
    the difference of the means (points) and a verdict that counts it only where it is larger than
    the seed noise: the largest seed-to-seed spread (max - min) of any compared method (ptl and the
    rivals; not teacher-qnn, an intermediate of the ptl runs) with 2+ seeds at that width and scale.
    Without such a method there is no noise estimate and no verdict."""
    cell = {(s["method"], s["bits"], s["scale"]): s for s in summary(results)}
    keys = sorted({(b, s) for m, b, s in cell if m == "ptl"}, key=lambda k: (k[1] != "per-layer", -k[0]))
    out = ["| bits | scale | noise | " + " | ".join(f"vs {m}" for m in RIVALS) + " |",
           "|---|---|---|" + "---|" * len(RIVALS)]
    for bits, scale in keys:
        ptl = cell[("ptl", bits, scale)]
        spreads = [s["spread"] for (m, b, sc), s in cell.items()
                   if (b, sc) == (bits, scale) and len(s["seeds"]) > 1 and m != "teacher-qnn"]
        noise = max(spreads) if spreads else None
        cells = []
        for m in RIVALS:
            r = cell.get((m, bits, scale))
            if r is None:
                cells.append("not run")
                continue
            diff = ptl["mean"] - r["mean"]
            if noise is None:
                verdict = "one seed"
            else:
                verdict = "**ahead**" if diff > noise else "**behind**" if diff < -noise else "within noise"
            cells.append(f"{diff:+.2f} {verdict}")
        label = "-" if noise is None else f"{noise:.2f}"
        out.append(f"| W{bits}A{bits} | {scale} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _qnn_grid(budget: dict[str, Any]) -> str:
    if budget.get("teacher_weight_grid", "channel") == "folded":
        return ("its weight steps sit on the BN-folded weights with the student's granularity, so its per-layer "
                "and per-channel rows differ")
    return "its weight steps are per output channel under either `--scale`, so its two rows agree"


def _val_images(budget: dict[str, Any]) -> str:
    return "all" if budget.get("val_images") is None else f"the first {budget['val_images']}"


def write_results(out: Path, results: dict[str, Any]) -> None:
    """results.json, results.md (table + every row's command, epochs, wall time) and plots."""
    _io.write_json(out / "results.json", results)
    t, b = results["teacher"], results["budget"]
    md = [f"# PTL vs baselines: {t['arch']} on {t['data']}", "",
          "Integer test accuracy (%) on the whole test split, measured by the numpy integer executor; "
          "`a ± b (n seeds)` is the mean and half the spread (max - min) over seeds. teacher-qnn: the BN teacher "
          f"with fake quantizers after QAT, measured in the ptl run ({_qnn_grid(b)}). Every student was checked "
          "bit-exact against the eval-mode torch student on every test image unless marked.", "",
          table(results), "",
          f"Budget (every method): {b['steps_per_epoch']} batches per scheduler epoch, teacher QAT "
          f"{b['teacher_epochs']} epoch(s), at most {b['max_epochs_per_stage']} per PTL stage (patience "
          f"{b['patience']}), fine-tune {b['finetune_epochs']}; local initialisation on {b['calib_images']} "
          f"training images; the schedulers decide on {_val_images(b)} validation images; teacher QNN weight grid "
          f"{b.get('teacher_weight_grid', 'channel')}; "
          "oneshot and scratch train for the stages' epochs "
          f"plus the fine-tune; qat-fold trains the BN QNN for ptl's whole budget; fold trains nothing. Wall: "
          "the training phases' wall time (summed across resumes; evaluation excluded) on this machine's 2 cores, "
          "often shared with other work.", "",
          "![accuracy vs bits](plots/accuracy_vs_bits.png)", "",
          "ptl minus each baseline and ablation (points, difference of the means). *noise*: the largest "
          "seed-to-seed spread (max - min) of any compared method (not teacher-qnn) with 2+ seeds at that width "
          "and scale; a difference "
          "counts (**ahead**, **behind**) only where it is larger than that, otherwise it is *within noise*; "
          "*one seed*: no method has two seeds there yet, so no verdict.", "",
          versus(results), "",
          "Optimizer steps: the row's trained epochs times the batches per epoch (every phase; qat-fold trains "
          "as many as ptl, oneshot and scratch the stages' and fine-tune's, fold none).", "",
          "| row | test acc | epochs | optimizer steps | wall | command |", "|---|---|---|---|---|---|"]
    md += [f"| {r['key']} | {r['test_acc']:.2f} | {r['epochs']} | {r['epochs'] * b['steps_per_epoch']:,} | "
           f"{r['wall_s'] / 60:.1f} min | `{r['command']}` |" for r in results["rows"]]
    _io.write_text(out / "results.md", "\n".join(md) + "\n")
    if results["rows"]:
        from .plots import accuracy_vs_bits

        accuracy_vs_bits(summary(results), t["test_acc"], out / "plots" / "accuracy_vs_bits.png",
                         title=f"{t['arch']} on {t['data']}")


def quick(out: str | os.PathLike, *, progress: bool = False,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``fiqnn bench --quick``: the same machinery at a tiny budget (digits, tiny model), for CI."""
    from .config import TeacherConfig
    from .train.teacher import train_teacher

    out = Path(out)
    teacher_dir = out / "teacher"
    train_teacher(TeacherConfig(arch="tiny", data="digits", epochs=15, batch_size=64, lr=0.05), teacher_dir,
                  resume=True, progress=progress)
    rows = grid(METHODS, (4, 2), ("per-layer",), (0,), ())
    return run_bench(teacher_dir, out, rows, Budget(steps_per_epoch=6, calib_images=256), lr_by_bits=lambda b: 1e-3,
                     progress=progress, log=log)

