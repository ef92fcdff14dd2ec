"""``fiqnn report RUN_DIR``: one distill run as markdown and as self-contained HTML.

The report holds the run's config, its final numbers and bit-exactness check (from
metrics.json), the per-phase metrics, the validation curve over every stage and
epoch, the weight and activation code histograms, and the IntGraph summary. It
writes ``report.md`` (PNG files beside it) and ``report.html`` (the same content,
images embedded), atomically, into the run directory or ``out``.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from . import _io
from ._run import CONFIG, METRICS, check_writable, read_json
from .errors import FiqnnError

Block = tuple  # ("h", level, text) | ("p", text) | ("table", head, rows) | ("img", file, alt)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}%"


def load_run(run_dir: Path) -> dict[str, Any]:
    """What the report shows of a finished distill run: its metrics, config, integer graph and
    the teacher's test images; read before anything is written, so a bad run creates nothing."""
    from .integer.modelfile import load
    from .jobs import MODEL_FILE, teacher_data, teacher_dir_of

    if not (run_dir / METRICS).exists() or not (run_dir / MODEL_FILE).exists():
        raise FiqnnError(f"{run_dir} is not a finished distill run (needs {METRICS} and {MODEL_FILE})")
    return {"metrics": read_json(run_dir / METRICS), "config": read_json(run_dir / CONFIG)["config"],
            "graph": load(run_dir / MODEL_FILE), "test": teacher_data(teacher_dir_of(run_dir))[1].test}


def blocks(run_dir: Path, run: dict[str, Any], out: Path, images: int = 256) -> list[Block]:
    """The report's content for ``run`` (from :func:`load_run`); plots are written into ``out`` on the way."""
    from .integer.modelfile import layer_summary
    from .plots import code_histograms, training_curve

    m, config, graph, test = run["metrics"], run["config"], run["graph"], run["test"]
    title = f"{m['method']} W{m['w_bits']}A{m['a_bits']} {m['scale']}, {m['arch']} on {m['data']}"
    b: list[Block] = [("h", 1, f"fiqnn distill report: {title}"), ("p", f"Run directory: `{run_dir}`.")]
    b.append(("table", ["quantity", "value"], [
        ["integer test accuracy (numpy executor)", _pct(m["test_acc"])],
        ["float BN teacher, test", _pct(m.get("teacher_acc"))],
        ["teacher QNN (BN + fake quant), test", _pct(m.get("teacher_qnn_acc"))],
        ["test images", f"{m['test_images']:,}"],
        ["bit-exact: torch student == integer executor", f"{'yes' if m['bit_exact'] else 'NO'} "
                                                         f"(max abs logit difference {m['max_abs_logit_diff']})"],
        ["epochs trained (all phases)", str(m["epochs"])],
        ["wall time", f"{m['wall_s'] / 60:.1f} min"]]))
    b.append(("h", 2, "Phases"))
    b.append(("table", ["phase", "epochs", "val acc", "wall"],
              [[h["phase"], str(h["epochs"]), _pct(h["val_acc"]), f"{h['wall_s']:.1f} s"] for h in m["history"]]))
    training_curve(m["history"], out / "report_training.png", title=title)
    b.append(("img", "report_training.png", "validation accuracy over every phase and epoch"))
    b.append(("h", 2, "Weight and activation codes"))
    code_histograms(graph, test.x_q[:images], out / "report_codes.png")
    b.append(("p", f"Weight codes per layer (top) and the activation codes each layer outputs on the first "
                   f"{min(images, len(test.y))} test images (bottom, log scale)."))
    b.append(("img", "report_codes.png", "code histograms"))
    b.append(("h", 2, "Integer graph"))
    b.append(("p", f"uint8 input {tuple(graph.in_shape)} -> int32 logits ({graph.num_classes}); "
                   f"ARITH_VERSION {graph.arith_version}; no BatchNorm, no float."))
    rows = [layer_summary(layer) for layer in graph.layers]
    b.append(("table", ["layer", "kind", "weights", "in", "W", "A", "mult", "shift", "acc bound", "headroom"],
              [[r["name"], r["kind"], "x".join(map(str, r["shape"])), str(r["in_bits"]), str(r["w_bits"]),
                str(r["a_bits"] or "-"), r["mult"], r["shift"], r["acc_bound"],
                f"{r['headroom_bits']:.1f} bits" if r["kind"] in ("conv", "fc") else "-"]
               for r in rows]))
    b.append(("h", 2, "Config"))
    b.append(("table", ["setting", "value"], [[k, str(v)] for k, v in config.items()]))
    return b


def to_markdown(b: list[Block]) -> str:
    lines: list[str] = []
    for block in b:
        if block[0] == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif block[0] == "p":
            lines += [block[1], ""]
        elif block[0] == "table":
            lines += ["| " + " | ".join(block[1]) + " |", "|" + "---|" * len(block[1])]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in block[2]] + [""]
        elif block[0] == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
    return "\n".join(lines)


def to_html(b: list[Block], image_dir: Path) -> str:
    body: list[str] = []
    for block in b:
        if block[0] == "h":
            body.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif block[0] == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif block[0] == "table":
            head = "".join(f"<th>{html.escape(c)}</th>" for c in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif block[0] == "img":
            data = base64.b64encode((image_dir / block[1]).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}"></p>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>fiqnn report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write report.md and report.html for a finished distill run; return their paths. The run is
    read and ``out`` checked before anything is created."""
    from ._optional import optional_import

    optional_import("matplotlib", "fiqnn report (its plots)")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    run = load_run(run_dir)
    check_writable(out)
    with _io.writing(out):
        out.mkdir(parents=True, exist_ok=True)
    b = blocks(run_dir, run, out)
    _io.write_text(out / "report.md", to_markdown(b))
    _io.write_text(out / "report.html", to_html(b, out))
    return {"markdown": str(out / "report.md"), "html": str(out / "report.html")}
