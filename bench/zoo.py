"""Model-zoo survey: which third-party CNNs fiqnn's importer accepts, out of the box.

For each pytorchcv model in ZOO (built with ``pretrained=False``: random weights, nothing is
downloaded -- pytorchcv's downloader is disabled while the survey runs), in eval mode:
``fiqnn.import_model(model)``, and when it accepts, ``verify_import(model, units, x)`` on a
batch of 2 random float images of the model's input size (``model.in_size``). Per model it
records the family, input size, parameters, accepted / refused, the first line of the reason
(``UnsupportedModelError``'s message, or the type and message of any other exception), the
number of units and the seconds taken. The importer names only the first node it cannot
convert, so the survey also lists, per model, every op kind in its torch.fx graph outside the
importer's documented table (the op census): what it would trip on after the first fix.

    .venv/bin/python bench/zoo.py --out bench/results/zoo.md --json bench/results/zoo.json
    .venv/bin/python bench/zoo.py --models resnet18,mobilenetv2_w1 --out /tmp/zoo.md

Needs ``pytorchcv==0.0.67`` (the last release that does not require torchvision; 0.0.68 and
later declare torchvision and import it from model_provider). One model at a time, one
thread by default; the full ZOO takes a few minutes on a laptop-class CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import platform
import re
import shlex
import signal
import sys
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import torch
from torch import fx, nn

ROOT = Path(__file__).resolve().parent.parent

# The CNN families embedded users deploy, as pytorchcv (0.0.67) names them, grouped by family;
# chosen for what people ship, not for what fiqnn accepts today. <= ~60M parameters, except
# bn_vgg11 (133M, almost all in its 4096-wide classifier), kept as the VGG-BN representative.
ZOO: dict[str, list[str]] = {
    "ResNet": ["resnet10", "resnet18", "resnet34", "resnet50", "resnet20_cifar10", "resnet56_cifar10"],
    "PreResNet": ["preresnet18", "preresnet50", "preresnet20_cifar10"],
    "ResNeXt": ["resnext14_32x4d", "resnext50_32x4d", "resnext20_32x4d_cifar10"],
    "SE-ResNet": ["seresnet18", "seresnet50", "seresnet20_cifar10"],
    "WRN": ["wrn16_10_cifar10", "wrn28_10_cifar10"],
    "DenseNet": ["densenet121", "densenet40_k12_cifar10", "densenet40_k12_bc_cifar10"],
    "MobileNet": ["mobilenet_w1", "mobilenet_w3d4", "mobilenet_wd2", "mobilenet_wd4"],
    "FD-MobileNet": ["fdmobilenet_w1", "fdmobilenet_wd2"],
    "MobileNetV2": ["mobilenetv2_w1", "mobilenetv2_w3d4", "mobilenetv2_wd2", "mobilenetv2_wd4"],
    "MobileNetV3": ["mobilenetv3_small_w1", "mobilenetv3_small_wd2", "mobilenetv3_large_w1",
                    "mobilenetv3_large_w3d4"],
    "MnasNet": ["mnasnet_b1", "mnasnet_a1", "mnasnet_small"],
    "ProxylessNAS": ["proxylessnas_mobile", "proxylessnas_cpu", "proxylessnas_gpu"],
    "FBNet": ["fbnet_cb"],
    "SPNASNet": ["spnasnet"],
    "EfficientNet": ["efficientnet_b0", "efficientnet_b1", "efficientnet_edge_small_b", "efficientnet_edge_medium_b"],
    "MixNet": ["mixnet_s"],
    "GhostNet": ["ghostnet"],
    "ShuffleNet": ["shufflenet_g1_w1", "shufflenet_g3_w1", "shufflenet_g3_wd2"],
    "ShuffleNetV2": ["shufflenetv2_w1", "shufflenetv2_wd2", "shufflenetv2_w3d2", "shufflenetv2b_w1"],
    "SqueezeNet": ["squeezenet_v1_0", "squeezenet_v1_1", "squeezeresnet_v1_1"],
    "SqueezeNext": ["sqnxt23_w1", "sqnxt23v5_w1"],
    "DarkNet": ["darknet_tiny", "darknet_ref", "darknet19", "darknet53"],
    "VGG-BN": ["bn_vgg11"],
    "RegNet": ["regnetx002", "regnetx004", "regnetx006", "regnety002", "regnety004", "regnety006"],
    "IGCV3": ["igcv3_w1", "igcv3_wd2"],
    "MENet": ["menet108_8x1_g3", "menet128_8x1_g4"],
    "DLA": ["dla34", "dla46c"],
    "HarDNet": ["hardnet39ds", "hardnet68ds"],
    "PeleeNet": ["peleenet"],
    "VoVNet": ["vovnet27s"],
    "SelecSLS": ["selecsls42b"],
    "Inception": ["bninception", "inceptionv3"],
}
FAMILY = {name: fam for fam, names in ZOO.items() for name in names}

# The op kinds of the importer's documented table (fximport's module doc), as the census names
# them: modules by class, functions by __name__, methods as ".name()". Everything else in a
# traced graph is reported by the census. (Structure -- BN right after a conv, a max-pool only
# after a ReLU, an add followed by a ReLU -- is the importer's to judge, not the census's.)
DOCUMENTED = {
    "Conv2d", "Linear", "BatchNorm1d", "BatchNorm2d", "ReLU", "ReLU6", "MaxPool2d", "AvgPool2d",
    "AdaptiveAvgPool2d", "Flatten", "Dropout", "Identity",
    "add", "iadd", "relu", "relu6", "flatten", "avg_pool2d", "adaptive_avg_pool2d", "dropout",
    ".view()", ".reshape()", ".flatten()", ".size()", ".add()", ".add_()", ".relu()", ".mean()",
}


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout("model took longer than --timeout seconds")


def _no_download(*args, **kwargs):
    raise RuntimeError("bench/zoo.py builds models with pretrained=False; pytorchcv tried to download")


@contextlib.contextmanager
def _numpy_int_alias():
    """``np.int`` as ``int`` while a model is built: pytorchcv 0.0.67's regnet.py computes its
    widths with ``.astype(np.int)``, which numpy 1.24 removed (nothing else in the ZOO needs it)."""
    import numpy as np

    added = "int" not in np.__dict__
    if added:
        np.int = int
    try:
        yield
    finally:
        if added:
            del np.int


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


_ACTS = {"ReLU", "ReLU6", "relu", "relu6", ".relu()"}


def _op_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The census's name for a node's op: a module's class, a function's name, ".method()";
    with a qualifier where the importer's table does not cover every form (an add or multiply
    with a constant, a pool with ceil_mode or an uncounted pad, an adaptive pool to more than 1x1)."""
    if node.op == "call_module":
        mod = modules[node.target]
        kind = type(mod).__name__
        if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)) and mod.ceil_mode:
            kind += "(ceil_mode)"
        if isinstance(mod, nn.AvgPool2d) and not mod.count_include_pad:
            kind += "(count_include_pad=False)"
        if isinstance(mod, nn.AdaptiveAvgPool2d) and mod.output_size not in (1, (1, 1)):
            kind += f"(output_size={mod.output_size})"
        return kind
    if node.op in ("call_function", "call_method"):
        kind = getattr(node.target, "__name__", str(node.target)) if node.op == "call_function" else f".{node.target}()"
        if kind.strip(".()_") in ("add", "iadd", "mul", "imul", "sub", "truediv") and \
                not all(isinstance(a, fx.Node) for a in node.args):
            kind += " (constant)"
        return kind
    if node.op == "get_attr":
        return "get_attr"
    return None


def _holder(node: fx.Node, depth: int = 1) -> str:
    """The innermost pytorchcv class(es) whose forward made ``node``: "common.SEBlock", or with
    ``depth=2`` "seresnet.SEResUnit > common.SEBlock"; "" outside any."""
    chain = []
    for _path, cls in reversed(list((node.meta.get("nn_module_stack") or {}).values())):
        if isinstance(cls, type) and cls.__module__.startswith("pytorchcv.") and len(chain) < depth:
            chain.insert(0, f"{cls.__module__.removeprefix('pytorchcv.models.')}.{cls.__qualname__}")
    return " > ".join(chain)


_NO_ACT = "[structure] conv/linear with no activation at all, read by something other than an add"
# Readers that make a conv's output go through some activation other than ReLU (LeakyReLU, the
# sigmoid of Swish / SiLU, the x + 3 of HSwish / HSigmoid, a clamp): the op census names those.
_OTHER_ACTS = {"LeakyReLU", "PReLU", "ELU", "SiLU", "Hardswish", "Hardsigmoid", "Sigmoid", "Tanh", "GELU",
               "sigmoid", "silu", "hardswish", "hardsigmoid", "leaky_relu", "tanh", "clamp", ".sigmoid()",
               ".clamp()", "add (constant)", "hardtanh", "Hardtanh"}
_ADD_NO_RELU = "[structure] residual add (two tensors) with no ReLU after it"
_ADDS = ("add", "iadd", ".add()", ".add_()")
_PASS = {"Flatten", "flatten", ".flatten()", ".view()", ".reshape()", "Dropout", "dropout", "Identity"}


def census(model: nn.Module, blocker: str = "") -> dict:
    """What the importer will meet in ``model`` beyond the first blocker: the op kinds in its
    traced graph outside DOCUMENTED (count, and the pytorchcv classes whose forward makes them),
    and three structural blockers: a conv / linear (after its BatchNorm) with no activation at all
    read by anything but an add (signed values where the integer graph wants codes), and a residual add
    with no ReLU after it -- for these two, "where" lists what reads them -- and an output that is
    not a conv / linear's logits (a conv -> ReLU -> global pool head, say). ``blocker`` (a traced
    node's name from the refusal) gives "blocker_in": the pytorchcv class whose forward made it."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "/pytorchcv/" in f.filename]
        site = f"{frames[-1].filename.split('/pytorchcv/')[-1]}:{frames[-1].lineno} {frames[-1].name}" if frames else ""
        return {"traceable": False, "error": f"{type(e).__name__}: {_first_line(e)}", "site": site, "ops": {},
                "where": {}}
    modules = dict(gm.named_modules())
    kind = {n: _op_kind(n, modules) for n in gm.graph.nodes}
    ops: Counter = Counter()
    where: dict[str, Counter] = defaultdict(Counter)
    for node in gm.graph.nodes:
        k = kind[node]
        if k is not None and k not in DOCUMENTED:
            ops[k] += 1
            where[k][_holder(node) or "(top level)"] += 1
        if k in ("Conv2d", "Linear"):
            end = node
            while len(end.users) == 1 and kind[next(iter(end.users))] in ("BatchNorm2d", "BatchNorm1d"):
                end = next(iter(end.users))
            readers = {kind[u] or u.op for u in end.users}
            bad = sorted(r for r in readers if r not in (*_ADDS, *_PASS, ".size()", "output"))  # not the logits
            if not readers & (_ACTS | _OTHER_ACTS) and bad:
                ops[_NO_ACT] += 1
                where[_NO_ACT].update(bad)
        elif k in _ADDS and sum(isinstance(a, fx.Node) for a in node.args) == 2:
            readers = {kind[u] or u.op for u in node.users}
            if not readers & _ACTS:
                ops[_ADD_NO_RELU] += 1
                where[_ADD_NO_RELU].update(readers)
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    while isinstance(out, fx.Node) and kind[out] in _PASS:
        out = out.args[0]
    last = kind[out] if isinstance(out, fx.Node) else type(out).__name__
    if last not in ("Conv2d", "Linear", "BatchNorm2d", "BatchNorm1d"):
        label = f"[structure] the output is made by {last}, not by a conv/linear (raw logits)"
        ops[label] += 1
        where[label][(_holder(out) if isinstance(out, fx.Node) else "") or "(top level)"] += 1
    held = next((_holder(n, 2) for n in gm.graph.nodes if blocker and n.name == blocker), "")
    return {"traceable": True, "error": "", "ops": dict(ops), "where": {k: dict(v) for k, v in where.items()},
            "blocker_in": held}


def survey_one(name: str, timeout: int, seed: int) -> dict:
    from pytorchcv.model_provider import get_model

    import fiqnn
    from fiqnn.nets.fximport import verify_import

    rec = {"family": FAMILY.get(name, "?"), "name": name, "input": None, "params": None, "accepted": False,
           "stage": "", "reason": "", "error_type": "", "units": None, "seconds": None, "census": None}
    t0 = time.perf_counter()
    model = units = x = None
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout)
    try:
        rec["stage"] = "build"
        torch.manual_seed(seed)
        with _numpy_int_alias():
            model = get_model(name, pretrained=False).eval()
        size = tuple(getattr(model, "in_size", (224, 224)))
        chans = int(getattr(model, "in_channels", 3) or 3)
        rec["input"] = [chans, *size]
        rec["params"] = sum(p.numel() for p in model.parameters())
        rec["stage"] = "import"
        units = fiqnn.import_model(model)
        rec["units"] = len(units)
        rec["stage"] = "verify"
        x = torch.randn(2, chans, *size, generator=torch.Generator().manual_seed(seed))
        verify_import(model, units, x)
        rec["accepted"] = True
        rec["stage"] = "done"
    except _Timeout as e:
        rec["error_type"], rec["reason"] = "Timeout", str(e)
    except Exception as e:  # noqa: BLE001 - a crash in one model must not stop the survey
        rec["error_type"] = type(e).__name__
        rec["reason"] = _first_line(e) or repr(e)
    finally:
        signal.alarm(0)
    try:
        if model is not None:
            signal.alarm(timeout)
            m = re.match(r"^(?:node '(\w+)'|(\w+) \()", rec["reason"]) if not rec["accepted"] else None
            rec["census"] = census(model, (m.group(1) or m.group(2)) if m else "")
    except Exception as e:  # noqa: BLE001
        rec["census"] = {"traceable": False, "error": f"{type(e).__name__}: {_first_line(e)}", "ops": {},
                         "where": {}}
    finally:
        signal.alarm(0)
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    del model, units, x
    gc.collect()
    return rec


# Refusal reason -> pattern: the first matching rule names the pattern (the message with the
# node and layer names taken out); a message no rule knows is kept with its quoted names,
# numbers and the importer's list of supported ops removed.
_PATTERNS: list[tuple[str, str]] = [
    (r"^torch\.fx cannot trace \w+ \((\w+): (.*?)(\. .*)?\); fiqnn needs", r"fx cannot trace: \1: \2"),
    (r"\((conv|fc) without an activation\) feeds \S+ \((\w+)\)", r"\1 without an activation feeds a(n) \2 "
     r"(signed values where codes are needed)"),
    (r"\(residual add\) has no ReLU/ReLU6 after it", "residual add with no ReLU/ReLU6 after it"),
    (r"adds a tensor to itself", "add of a tensor to itself"),
    (r"^the output must be the logits.*?; \S+ \((\w+)\) is not", r"output is not raw logits (last unit: \1)"),
    (r"^import check failed: unit \S+ \((\w+), .*?\) (has no output in the traced module|has \d+ values"
     r"|differs from the module)", r"verify_import: \1 unit \2"),
    (r"^node '[^']*' \((\w+) module '[^']*'\) (.*)$", r"\1 module: \2"),
    (r"^node '[^']*' \((function \S+|method \S+)\) (.*)$", r"\1: \2"),
    (r"^node '[^']*' \((\w+)\) (.*)$", r"\1 node: \2"),
]


def reason_pattern(rec: dict) -> str:
    if rec["accepted"]:
        return ""
    msg = rec["reason"]
    if rec["error_type"] not in ("UnsupportedModelError",):
        return f"crash in {rec['stage']}: {rec['error_type']}: {re.sub(r'[0-9]+', 'N', msg)[:120]}"
    msg = _strip_supported(msg)
    for pat, repl in _PATTERNS:
        m = re.search(pat, msg)
        if m:
            out = m.expand(repl)
            return re.sub(r"\s+", " ", out).strip()
    return re.sub(r"'[^'\s]*'", "'…'", re.sub(r"\b\d+\b", "N", msg))  # names and numbers, not "fiqnn's"


def _strip_supported(msg: str) -> str:
    """The message without the importer's boilerplate tail listing what it converts."""
    return re.sub(r"; fiqnn converts .*$", "", msg)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt_params(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.2f}M"


def write_markdown(path: Path, recs: list[dict], meta: dict) -> None:
    n_ok = sum(r["accepted"] for r in recs)
    fam_rows: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        fam_rows[r["family"]].append(r)
    lines = [
        "# Model-zoo survey: which pytorchcv CNNs fiqnn's importer accepts",
        "",
        f"Command: `{meta['command']}`  ",
        f"pytorchcv {meta['pytorchcv']}, torch {meta['torch']}, Python {meta['python']}, "
        f"{meta['threads']} torch thread(s); fximport.py sha1 {meta['fximport_sha1'][:12]}  ",
        f"Wall time: {meta['wall_s']:.0f} s for {len(recs)} models ({meta['platform']})",
        "",
        "Every model is built by `pytorchcv.model_provider.get_model(name, pretrained=False)` (random "
        "weights, no download), in eval mode, imported with `fiqnn.import_model` and, when accepted, "
        "checked with `verify_import` on 2 random images of its input size. The importer stops at the "
        "first node it cannot convert, so *Reason* is the first blocker only; the op census below lists "
        "every op kind outside the importer's documented table.",
        "",
        f"**Accepted: {n_ok} of {len(recs)}** models, from {len(fam_rows)} families.",
        "",
        "| family | models | accepted | refused |",
        "| --- | ---: | ---: | ---: |",
    ]
    for fam, rows in fam_rows.items():
        ok = sum(r["accepted"] for r in rows)
        lines.append(f"| {fam} | {len(rows)} | {ok} | {len(rows) - ok} |")
    lines.append(f"| **all** | **{len(recs)}** | **{n_ok}** | **{len(recs) - n_ok}** |")

    groups: dict[str, list[str]] = defaultdict(list)
    blocked_in: dict[str, Counter] = defaultdict(Counter)
    for r in recs:
        if not r["accepted"]:
            pat = reason_pattern(r)
            groups[pat].append(r["name"])
            held = (r.get("census") or {}).get("blocker_in")
            if held:
                blocked_in[pat][held] += 1
    lines += ["", "## Refusals by reason (first blocker)", "",
              "*Blocked in*: the pytorchcv classes whose forward made the refused node (models).", "",
              "| reason pattern | models | blocked in | which |", "| --- | ---: | --- | --- |"]
    for pat, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        held = ", ".join(f"{h} ({n})" for h, n in blocked_in[pat].most_common())
        lines.append(f"| {_md(pat)} | {len(names)} | {_md(held)} | {', '.join(names)} |")

    ops_models: dict[str, list[str]] = defaultdict(list)
    where: dict[str, Counter] = defaultdict(Counter)
    untraceable = []
    for r in recs:
        c = r.get("census") or {}
        if not c.get("traceable", False):
            untraceable.append(r["name"])
            continue
        for op in c["ops"]:
            ops_models[op].append(r["name"])
        for op, w in c.get("where", {}).items():
            where[op].update(w)
    lines += ["", "## Op census: what the importer meets beyond the first blocker", "",
              "Op kinds in each model's traced graph outside the importer's documented table, and three "
              "structural blockers ([structure] rows); *models* counts each model once. *Where*: the "
              "pytorchcv classes whose forward makes the op (node counts over all models, commonest "
              "first); for the [structure] rows, the op kinds that read the offending output (for the "
              "output row, the class that makes it).", "",
              "| op | models | where | which |", "| --- | ---: | --- | --- |"]
    for op, names in sorted(ops_models.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        w = ", ".join(f"{h} ({n})" for h, n in where[op].most_common(6))
        lines.append(f"| {_md(op)} | {len(names)} | {_md(w)} | {', '.join(names)} |")
    if untraceable:
        lines += ["", "Not traceable by torch.fx (no census): " + "; ".join(
            f"{r['name']} ({(r.get('census') or {}).get('site') or '?'}: "
            f"{_md(((r.get('census') or {}).get('error') or r['reason'])[:100])})"
            for r in recs if r["name"] in untraceable) + "."]

    lines += ["", "## Per model", "",
              "Reason: the first line of the refusal, without the importer's closing list of what it converts.",
              "*Blocked in*: the pytorchcv class whose forward made the node the refusal names.", "",
              "| family | model | input | params | result | units | s | blocked in | reason |",
              "| --- | --- | --- | ---: | --- | ---: | ---: | --- | --- |"]
    for r in recs:
        inp = "x".join(map(str, r["input"])) if r["input"] else "?"
        res = "accepted" if r["accepted"] else f"refused ({r['stage']})"
        units = "" if r["units"] is None else r["units"]
        reason = "" if r["accepted"] else (r["error_type"] + ": " if r["error_type"] != "UnsupportedModelError"
                                           else "") + _strip_supported(r["reason"])
        lines.append(f"| {r['family']} | {r['name']} | {inp} | {_fmt_params(r['params'])} | {res} | {units} | "
                     f"{r['seconds']} | {(r.get('census') or {}).get('blocker_in', '')} | {_md(reason)} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/zoo.md", help="Markdown report (default: %(default)s)")
    ap.add_argument("--json", default=None, help="also write the raw per-model results here")
    ap.add_argument("--models", default=None, help="comma-separated subset of ZOO (or any pytorchcv names)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per model before it is recorded as a "
                    "Timeout (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    try:
        import pytorchcv
        import pytorchcv.models.model_store as store
        from pytorchcv.model_provider import _models
    except ImportError as e:
        print(f"zoo.py needs pytorchcv (pip install pytorchcv==0.0.67): {e}", file=sys.stderr)
        return 2
    store.download_model = store.load_model = store.get_model_file = store._download = _no_download

    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else list(FAMILY)
    unknown = [n for n in names if n.lower() not in _models]
    if unknown:
        print(f"not pytorchcv models: {', '.join(unknown)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "src"))  # this checkout's fiqnn, installed or not
    fximport = ROOT / "src" / "fiqnn" / "nets" / "fximport.py"
    meta = {
        "command": shlex.join([".venv/bin/python", "bench/zoo.py", *(sys.argv[1:] if argv is None else argv)]),
        "pytorchcv": getattr(pytorchcv, "__version__", None) or _dist_version("pytorchcv"),
        "torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
        "platform": f"{platform.machine()}, {platform.processor() or platform.system()}",
        "fximport_sha1": hashlib.sha1(fximport.read_bytes()).hexdigest() if fximport.exists() else "?",
    }
    recs = []
    t0 = time.perf_counter()
    for i, name in enumerate(names, 1):
        rec = survey_one(name, args.timeout, args.seed)
        recs.append(rec)
        verdict = "accepted" if rec["accepted"] else f"refused: {reason_pattern(rec)}"
        print(f"[{i}/{len(names)}] {rec['family']:<13} {name:<28} {rec['seconds']:6.1f}s  {verdict}", flush=True)
    meta["wall_s"] = time.perf_counter() - t0
    write_markdown(Path(args.out), recs, meta)
    if args.json:
        for r in recs:
            r["pattern"] = reason_pattern(r)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "models": recs}, indent=1) + "\n")
    n_ok = sum(r["accepted"] for r in recs)
    print(f"accepted {n_ok} of {len(recs)} in {meta['wall_s']:.0f} s -> {args.out}")
    return 0


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
