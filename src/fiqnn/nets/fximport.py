"""Bring your own BN CNN: a user's ``nn.Module`` -> a plan of fiqnn units, via torch.fx.

:func:`import_model` traces the module symbolically and groups its graph into the
units fiqnn converts, in topological order:

=========  ===============================================================================
conv       Conv2d (any stride, padding, dilation, groups: depthwise included)
           [-> BatchNorm2d] [-> ReLU | ReLU6] [-> MaxPool2d, only after a ReLU]
fc         [Flatten ->] Linear [-> BatchNorm1d] [-> ReLU | ReLU6]
add        ``a + b`` (operator, torch.add, Tensor.add) [-> ReLU | ReLU6]: a residual add
avgpool    AvgPool2d, AdaptiveAvgPool2d to 1x1 (a global average), F.avg_pool2d,
           F.adaptive_avg_pool2d, ``x.mean((2, 3))``
=========  ===============================================================================

Identity vanishes; a Dropout right before a conv or fc is kept with that unit (it acts in
training only) and vanishes elsewhere; Flatten, ``torch.flatten`` and
``x.view(x.size(0), -1)`` / ``reshape`` mark where an fc unit flattens its input.
Anything else (a sigmoid gate, LayerNorm, a concatenation, an activation that is not
ReLU/ReLU6, a max-pool with no ReLU before it, ...) is refused before any training
starts, with one line naming the graph node and its op.

A conv or fc unit without an activation has int32 accumulators as its output (like the
classifier): besides the network output, those may only feed an add (a residual branch
whose ReLU comes after the sum), exactly as :class:`fiqnn.integer.graph.IntGraph` requires. An
add must be followed by a ReLU or ReLU6: activations are unsigned codes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function

from ..errors import FiqnnError


class UnsupportedModelError(FiqnnError):
    """The module uses an op fiqnn cannot turn into integer arithmetic."""


@dataclass
class Unit:
    """One fiqnn unit of an imported model."""

    name: str
    kind: str  # "conv" | "fc" | "add" | "avgpool"
    inputs: list[str]  # unit names, or "input"
    layer: nn.Module | None = None  # Conv2d or Linear
    bn: nn.Module | None = None
    act: str | None = None  # "relu" | "relu6" | None (int32 accumulators out)
    pool: tuple[int, int, int] | None = None  # max-pool (kernel, stride, padding) after the act
    window: tuple | None = None  # avgpool: (kernel, stride, padding), or "global"
    drop: nn.Module | None = None  # a Dropout right before the conv/fc (training only)
    fx_nodes: list[str] = field(default_factory=list)  # the traced nodes this unit covers

    @property
    def codes(self) -> bool:
        """Whether the unit outputs activation codes (else real values: int32 accumulators in the student)."""
        return self.kind in ("add", "avgpool") or self.act is not None


_RELU_FUNCS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_FLATTEN_FUNCS = {torch.flatten}
_AVG_FUNCS = {F.avg_pool2d, F.adaptive_avg_pool2d}
SUPPORTED = ("Conv2d, Linear, BatchNorm1d/2d, ReLU/ReLU6, MaxPool2d (after a ReLU), AvgPool2d, "
             "AdaptiveAvgPool2d(1), Flatten, Dropout, Identity, residual +")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _bind(node: fx.Node) -> dict:
    """A function or method call's arguments by parameter name, defaults filled in, bound by
    torch's own signature normalisation (positional, keyword or mixed: ``F.avg_pool2d(x, 3, 1,
    1)`` and ``F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)`` bind alike). The tensor
    argument is ``input``. Raises :class:`UnsupportedModelError` when torch knows no signature for it."""
    target, args = node.target, node.args
    if node.op == "call_method":
        if target in ("view", "reshape"):  # x.view(n, -1) and x.view((n, -1)) alike
            rest = args[1:]
            shape = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            return {"input": args[0], "shape": tuple(node.kwargs.get("shape", shape))}
        target = getattr(torch, target)
    types = tuple(torch.Tensor if isinstance(a, fx.Node) else type(a) for a in args)
    kwtypes = {k: torch.Tensor if isinstance(v, fx.Node) else type(v) for k, v in node.kwargs.items()}
    try:
        bound = normalize_function(target, args, node.kwargs, arg_types=types, kwarg_types=kwtypes,
                                   normalize_to_only_use_kwargs=True)
    except Exception:  # noqa: BLE001 - torch raises many types for calls it cannot match
        bound = None
    if bound is None:
        raise UnsupportedModelError(f"node {node.name!r}: torch has no signature to bind the arguments of "
                                    f"{getattr(node.target, '__name__', node.target)} to; fiqnn reads no call "
                                    "by position alone")
    return dict(bound.kwargs)


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} module {node.target!r}"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    return node.op


def import_model(model: nn.Module) -> list[Unit]:
    """The units of ``model`` (see module doc), or :class:`UnsupportedModelError` naming the
    first node that has no integer form."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types for untraceable Python
        raise UnsupportedModelError(f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}); fiqnn needs a traceable "
                                    "module") from None
    modules = dict(gm.named_modules())
    users = {node: list(node.users) for node in gm.graph.nodes}

    def refuse(node: fx.Node, why: str = "") -> UnsupportedModelError:
        return UnsupportedModelError(f"node {node.name!r} ({_describe(node, modules)}) {why or 'is not supported'}"
                                     f"; fiqnn converts {SUPPORTED}")

    units: list[Unit] = []
    alias: dict[fx.Node, str] = {}  # traced node -> the unit (or "input") whose output it is
    owner: dict[str, Unit] = {}
    flattened: set[str] = set()  # names whose consumer must be an fc (they passed a flatten)

    def source(node: fx.Node, arg) -> str:
        if not isinstance(arg, fx.Node) or arg not in alias:
            raise refuse(node, "takes an input fiqnn cannot follow")
        return alias[arg]

    taken = {node.name for node in gm.graph.nodes}
    original = dict(model.named_modules())  # (the traced module's own holders are plain Modules)

    def unit_name(node: fx.Node) -> str:
        """The traced node's name, or, for the conv/fc of a unit-form ``nn.Sequential`` (named
        children among drop, conv|fc, bn, act, pool: the models of :mod:`fiqnn.nets.models`), the
        name of that Sequential, so that ``conv1.conv`` becomes unit ``conv1``."""
        parent, _, child = node.target.rpartition(".")
        holder = original.get(parent) if parent else None
        if child in ("conv", "fc") and isinstance(holder, nn.Sequential) and \
                set(dict(holder.named_children())) <= {"drop", "conv", "fc", "bn", "act", "pool"}:
            name = parent.replace(".", "_")
            if name.isidentifier() and name not in taken:
                taken.add(name)
                return name
        return node.name

    def dropout_before(arg) -> nn.Module | None:
        """The Dropout module whose output only the layer reading ``arg`` reads, if any."""
        mod = modules.get(arg.target) if isinstance(arg, fx.Node) and arg.op == "call_module" else None
        return mod if isinstance(mod, nn.Dropout) and len(users[arg]) == 1 else None

    def fuse_target(node: fx.Node, arg) -> Unit | None:
        """The unit ``node`` may fuse into: the one whose output only ``node`` reads."""
        name = source(node, arg)
        unit = owner.get(name)
        if unit is None or len(users[arg]) != 1:
            return None
        return unit

    for node in gm.graph.nodes:
        mod = modules.get(node.target) if node.op == "call_module" else None
        first = node.args[0] if node.args else node.kwargs.get("input")  # the tensor a call reads
        if node.op == "placeholder":
            if alias:
                raise refuse(node, "is a second input; fiqnn models take one image tensor")
            alias[node] = "input"
        elif node.op == "output":
            out = first
            if not isinstance(out, fx.Node) or alias.get(out) not in owner:
                raise refuse(node, "must be one tensor made by a conv, fc, add or avgpool unit")
            last = owner[alias[out]]
            if last.kind not in ("conv", "fc") or last.act is not None:
                raise UnsupportedModelError(f"the output must be the logits of a conv or linear layer with no "
                                            f"activation after it; {last.name} ({last.kind}) is not")
        elif node.op == "get_attr":
            raise refuse(node, "reads a parameter outside a layer")
        elif isinstance(mod, (nn.Dropout, nn.Identity)) or node.target in (F.dropout,):
            alias[node] = source(node, first)
        elif isinstance(mod, nn.Flatten) or node.target in _FLATTEN_FUNCS or (
                node.op == "call_method" and node.target in ("view", "reshape", "flatten")):
            kw = _bind(node) if mod is None else {}
            if "shape" in kw:  # view / reshape: only x.view(x.size(0), -1)
                if len(kw["shape"]) != 2 or kw["shape"][1] != -1:
                    raise refuse(node, "reshapes other than flattening to (N, -1) are not supported")
            elif ((mod.start_dim, mod.end_dim) if mod is not None else (kw.get("start_dim"), kw.get("end_dim"))) \
                    != (1, -1):
                raise refuse(node, "flattens dimensions other than 1..-1 (the batch axis must stay)")
            alias[node] = source(node, first)
            flattened.add(alias[node])
        elif node.op == "call_method" and node.target == "size":
            continue  # only as part of x.view(x.size(0), -1)
        elif isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                raise refuse(node, "uses padding other than explicit zero padding")
            if any(p > d * (k - 1) for p, d, k in zip(mod.padding, mod.dilation, mod.kernel_size)):
                raise refuse(node, "pads past its (dilated) kernel, so some outputs see only padding")
            src = source(node, first)
            if src in flattened:
                raise refuse(node, "convolves a flattened tensor")
            unit = Unit(unit_name(node), "conv", [src], layer=mod, drop=dropout_before(first), fx_nodes=[node.name])
            units.append(unit)
            owner[unit.name], alias[node] = unit, unit.name
        elif isinstance(mod, nn.Linear):
            unit = Unit(unit_name(node), "fc", [source(node, first)], layer=mod, drop=dropout_before(first),
                        fx_nodes=[node.name])
            units.append(unit)
            owner[unit.name], alias[node] = unit, unit.name
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            unit = fuse_target(node, first)
            if unit is None or unit.kind not in ("conv", "fc") or unit.bn is not None or unit.act is not None:
                raise refuse(node, "is a BatchNorm that does not directly follow a conv or linear layer")
            unit.bn = mod
            unit.fx_nodes.append(node.name)
            alias[node] = unit.name
        elif isinstance(mod, (nn.ReLU, nn.ReLU6)) or node.target in _RELU_FUNCS or (
                node.op == "call_method" and node.target == "relu"):
            kind = "relu6" if isinstance(mod, nn.ReLU6) or node.target is F.relu6 else "relu"
            unit = fuse_target(node, first)
            if unit is None or unit.kind not in ("conv", "fc", "add") or unit.act is not None or unit.pool:
                raise refuse(node, "is an activation that does not directly follow a conv, linear or add")
            unit.act = kind
            unit.fx_nodes.append(node.name)
            alias[node] = unit.name
        elif isinstance(mod, nn.MaxPool2d) or node.target is F.max_pool2d:
            unit = fuse_target(node, first)
            if mod is not None:
                k, st, p, d, ceil, idx = (mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode,
                                          mod.return_indices)
            else:
                kw = _bind(node)
                k, st, p, d, ceil, idx = (kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"],
                                          kw["ceil_mode"], kw["return_indices"])
            if idx:
                raise refuse(node, "is a max-pool that returns indices")
            k, st, p, d = _pair(k), _pair(k if st in (None, (), []) else st), _pair(p), _pair(d)
            if k[0] != k[1] or st[0] != st[1] or p[0] != p[1] or d != (1, 1) or ceil:
                raise refuse(node, "is a max-pool with a non-square window, dilation or ceil_mode")
            if unit is None or unit.kind != "conv" or unit.act is None or unit.pool:
                raise refuse(node, "is a max-pool that does not directly follow a conv -> ReLU")
            unit.pool = (k[0], st[0], p[0])
            unit.fx_nodes.append(node.name)
            alias[node] = unit.name
        elif node.target in _ADD_FUNCS or (node.op == "call_method" and node.target in ("add", "add_")):
            kw = {} if node.target in (operator.add, operator.iadd) else _bind(node)
            args = [kw["input"], kw["other"]] if kw else list(node.args)
            if len(args) != 2 or not all(isinstance(a, fx.Node) for a in args) or kw.get("alpha", 1) != 1:
                raise refuse(node, "is an add of something other than two tensors (or with alpha != 1)")
            unit = Unit(node.name, "add", [source(node, a) for a in args], fx_nodes=[node.name])
            units.append(unit)
            owner[unit.name], alias[node] = unit, unit.name
        elif isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)) or node.target in _AVG_FUNCS or (
                node.op == "call_method" and node.target == "mean"):
            window = _avg_window(node, mod, refuse)
            src = source(node, first)
            unit = Unit(node.name, "avgpool", [src], window=window, fx_nodes=[node.name])
            units.append(unit)
            owner[unit.name], alias[node] = unit, unit.name
            if window == "global-flat":  # x.mean((2, 3)) also drops the spatial axes
                unit.window = "global"
                flattened.add(unit.name)
        else:
            raise refuse(node)

    for unit in units:  # accumulators (no activation) may only feed adds, as in IntGraph
        if unit.kind in ("conv", "fc") and unit.act is None and unit is not units[-1]:
            readers = [u for u in units if unit.name in u.inputs]
            if any(u.kind != "add" for u in readers):
                raise UnsupportedModelError(
                    f"{unit.name} ({unit.kind} without an activation) feeds {readers[0].name} ({readers[0].kind}); "
                    "outside the logits, a layer without ReLU may only feed a residual add")
        if unit.kind == "add" and len(set(unit.inputs)) != 2:
            raise UnsupportedModelError(f"{unit.name} adds a tensor to itself")
        if unit.kind == "add" and unit.act is None:
            raise UnsupportedModelError(
                f"{unit.name} (residual add) has no ReLU/ReLU6 after it; fiqnn's activations are unsigned codes, "
                "so a sum must pass a ReLU (a MobileNetV2 linear bottleneck needs a ReLU6 after its add)")
    return units


def _avg_window(node: fx.Node, mod: nn.Module | None, refuse) -> tuple | str:
    """(kernel, stride, padding) pairs; "global" for a mean over the whole map, "global-flat" when
    the call also drops the spatial axes."""
    kw = _bind(node) if mod is None else {}
    if isinstance(mod, nn.AdaptiveAvgPool2d) or node.target is F.adaptive_avg_pool2d:
        size = mod.output_size if mod is not None else kw["output_size"]
        if _pair(size) != (1, 1):
            raise refuse(node, "is an adaptive average pool to a size other than 1x1")
        return "global"
    if node.op == "call_method":  # mean
        dims = kw.get("dim")
        if dims is None or tuple(dims) not in ((2, 3), (-2, -1), (3, 2), (-1, -2)) or kw.get("dtype") is not None:
            raise refuse(node, "is a mean over axes other than (2, 3)")
        return "global" if kw.get("keepdim") else "global-flat"
    if mod is not None:
        k, s, p, ceil, cip, div = (mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad,
                                   mod.divisor_override)
    else:
        k, s, p, ceil, cip, div = (kw["kernel_size"], kw["stride"], kw["padding"], kw["ceil_mode"],
                                   kw["count_include_pad"], kw["divisor_override"])
    if ceil or not cip or div:
        raise refuse(node, "is an average pool with ceil_mode, count_include_pad=False or a divisor override")
    return (_pair(k), _pair(k if s in (None, (), []) else s), _pair(p))


# Float outputs of a unit and of the module it came from are the same operations on the same
# numbers, so they agree to float32 rounding; anything beyond this is a different network.
IMPORT_RTOL = 1e-4


def _unit_forward(unit: Unit, xs: list[torch.Tensor]) -> torch.Tensor:
    """What ``unit`` computes in float, from this module's own reading of it (not the fx graph)."""
    if unit.kind == "add":
        y = xs[0] + xs[1]
    elif unit.kind == "avgpool":
        if unit.window == "global":
            return F.adaptive_avg_pool2d(xs[0], 1)
        k, s, p = unit.window
        return F.avg_pool2d(xs[0], k, s, p, count_include_pad=True)
    else:
        y = unit.layer(xs[0] if unit.kind == "conv" else xs[0].flatten(1))
        if unit.bn is not None:
            y = unit.bn(y)
    if unit.act is not None:
        y = F.hardtanh(y, 0.0, 6.0) if unit.act == "relu6" else F.relu(y)
    if unit.pool:
        y = F.max_pool2d(y, *unit.pool)
    return y


@torch.no_grad()
def verify_import(model: nn.Module, units: list[Unit], x: torch.Tensor) -> None:
    """Check that ``units`` (from :func:`import_model`) compute what ``model`` computes, unit by
    unit, on the float images ``x`` in eval mode: every unit's output must equal the output of the
    traced node it ends with within ``IMPORT_RTOL`` of that tensor's largest magnitude. Raises
    :class:`UnsupportedModelError` naming the first unit that differs: a mis-import is refused
    before any training instead of training another network."""
    was_training = model.training
    model.eval()
    try:
        gm = fx.symbolic_trace(model)
        seen: dict[str, torch.Tensor] = {}

        class _Record(fx.Interpreter):
            def run_node(self, n: fx.Node):
                out = super().run_node(n)
                if isinstance(out, torch.Tensor):
                    seen[n.name] = out
                return out

        _Record(gm).run(x)
        env = {"input": x}
        for unit in units:
            got = _unit_forward(unit, [env[s] for s in unit.inputs])
            env[unit.name] = got
            want = seen.get(unit.fx_nodes[-1])
            ok = want is not None and got.numel() == want.numel()
            if ok:
                got_flat, want_flat = got.reshape(len(x), -1), want.reshape(len(x), -1)
                err = float((got_flat - want_flat).abs().max()) if got.numel() else 0.0
                ok = err <= IMPORT_RTOL * max(1.0, float(want_flat.abs().max()))
            if not ok:
                what = ("has no output in the traced module" if want is None else
                        f"has {got.numel()} values where the module's node has {want.numel()}"
                        if got.numel() != want.numel() else f"differs from the module by up to {err:.3g} "
                        f"(tolerance {IMPORT_RTOL:g} x its largest value)")
                raise UnsupportedModelError(
                    f"import check failed: unit {unit.name} ({unit.kind}, traced nodes {', '.join(unit.fx_nodes)}) "
                    f"{what}; fiqnn would train another network, "
                    "so it stops here (please report this model)")
    finally:
        model.train(was_training)
