"""PNG plots for bench results and distill reports (matplotlib, Agg backend, imported lazily).

Each function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import _io


def _figure(*args, **kwargs):
    from ._optional import optional_import

    matplotlib = optional_import("matplotlib", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(*args, **kwargs)


def _save(plt, fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _io.write_bytes(path, buf.getvalue())
    return path


def accuracy_vs_bits(summary: list[dict[str, Any]], teacher_acc: float, path: str | os.PathLike,
                     title: str = "", zoom: float = 20.0) -> Path:
    """Test accuracy against bit width, one line per method, one column per scale; error bars
    are half the spread over seeds; the float teacher is the dashed line. The second row
    repeats the first, zoomed to the results within ``zoom`` points of the teacher (a
    collapsed baseline would otherwise squash the differences that matter)."""
    scales = [s for s in ("per-layer", "per-channel") if any(x["scale"] == s for x in summary)]
    plt, fig, axes = _figure(2, len(scales), figsize=(6.5 * len(scales), 8.0), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1.3]})
    close = [x["mean"] for x in summary if x["mean"] >= teacher_acc - zoom]
    color = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(x["method"] for x in summary))}  # same in every panel
    for col, scale in enumerate(scales):
        methods = list(dict.fromkeys(x["method"] for x in summary if x["scale"] == scale))
        for row, ax in enumerate(axes[:, col]):
            for m in methods:
                pts = sorted((x["bits"], x["mean"], x["spread"] / 2) for x in summary
                             if x["scale"] == scale and x["method"] == m)
                b, acc, err = zip(*pts)
                ax.errorbar(b, acc, yerr=err, marker="o", capsize=3, label=m, color=color[m],
                            linewidth=2.5 if m == "ptl" else 1.2)
            ax.axhline(teacher_acc, color="k", linestyle="--", linewidth=1, label="teacher-float")
            ax.set_xlabel("bits (W = A)")
            ax.set_xticks(sorted({x["bits"] for x in summary}))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_ylabel("integer test accuracy (%)")
                ax.set_title(f"{title} ({scale})".strip())
                ax.legend(fontsize=8)
            else:
                ax.set_ylabel(f"zoom: within {zoom:g} points of the teacher")
                ax.set_ylim(min(close) - 1.0, teacher_acc + 1.0)
    return _save(plt, fig, path)


def training_curve(history: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Validation accuracy after every epoch of every phase of a distill run (epoch 0 of a
    phase is its starting point); phases are shaded alternately and labelled."""
    plt, fig, ax = _figure(figsize=(max(6.0, 0.35 * sum(len(h["rows"]) for h in history) + 2), 4.2))
    x = 0
    for i, h in enumerate(history):
        rows = h["rows"] or [{"epoch": 0, "val_acc": h["val_acc"]}]
        xs = np.arange(x, x + len(rows))
        ax.plot(xs, [r["val_acc"] for r in rows], marker="o", markersize=3, color="C0")
        if i % 2:
            ax.axvspan(x - 0.5, x + len(rows) - 0.5, color="0.92")
        ax.text(x + (len(rows) - 1) / 2, 0.02, h["phase"].split(" (")[0], rotation=90, fontsize=7,
                ha="center", va="bottom", transform=ax.get_xaxis_transform())
        x += len(rows)
    ax.set_xlabel("epoch (all phases in order)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def code_histograms(graph, x_q: np.ndarray, path: str | os.PathLike) -> Path:
    """Per layer: the histogram of its weight codes and of the activation codes it outputs
    on ``x_q`` (the integer executor's own arrays)."""
    from .integer.execute import run

    acts: dict[str, list[np.ndarray]] = {}
    run(graph, x_q, trace=lambda name, a: acts.setdefault(name, []).append(a))
    layers = graph.int_layers()
    n = len(layers)
    plt, fig, axes = _figure(2, n, figsize=(2.2 * n, 4.4), squeeze=False)
    for j, layer in enumerate(layers):
        w = layer.w_q.reshape(-1).astype(int)
        axes[0][j].hist(w, bins=np.arange(w.min(), w.max() + 2) - 0.5, color="C1")
        axes[0][j].set_title(f"{layer.name} W{layer.w_bits}", fontsize=8)
        if layer.a_bits is not None:
            a = np.concatenate([b.reshape(-1) for b in acts[layer.name]]).astype(int)
            axes[1][j].hist(a, bins=np.arange(2 ** layer.a_bits + 1) - 0.5, color="C2")
            axes[1][j].set_yscale("log")
            axes[1][j].set_title(f"out A{layer.a_bits}", fontsize=8)
        else:
            axes[1][j].axis("off")
        for ax in (axes[0][j], axes[1][j]):
            ax.tick_params(which="both", labelsize=6)
    fig.subplots_adjust(hspace=0.45)
    axes[0][0].set_ylabel("weight codes")
    axes[1][0].set_ylabel("activation codes")
    return _save(plt, fig, path)
