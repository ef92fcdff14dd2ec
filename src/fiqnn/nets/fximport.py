"""Bring your own BN CNN: a user's ``nn.Module`` -> a plan of fiqnn units, via torch.fx.

:func:`import_model` traces the module symbolically and groups its graph into the
units fiqnn converts, in topological order:

=========  ===============================================================================
conv       Conv2d (any stride, padding, dilation, groups: depthwise included)
           [-> BatchNorm2d] [-> ReLU | ReLU6] [-> MaxPool2d, square and floor mode, after a ReLU]
fc         [Flatten ->] Linear [-> BatchNorm1d] [-> ReLU | ReLU6]
add        ``a + b`` of two tensors (operator, torch.add, Tensor.add) [-> ReLU | ReLU6]
avgpool    AvgPool2d (ceil mode, count_include_pad=False too), AdaptiveAvgPool2d to 1x1,
           F.avg_pool2d, F.adaptive_avg_pool2d, ``x.mean((2, 3)[, keepdim=True])``
maxpool    a MaxPool2d the conv unit cannot take (after an add, a concat, ceil mode, ...)
lut        any elementwise function of one tensor: hard-swish, SiLU, sigmoid, hard-sigmoid,
           LeakyReLU, tanh, GELU, ``x * F.relu6(x + 3) / 6``, ``x * torch.sigmoid(x)``, ...
mul        ``x * g`` of two tensors: a squeeze-excite gate (g is (C, 1, 1)) or same-shaped
concat     ``torch.cat(..., dim=1)``
channels   a channel split (``chunk``, ``split``, ``x[:, a:b]``) or any view / transpose /
           reshape chain that only moves channels (ShuffleNet's channel shuffle)
affine     a BatchNorm that follows no conv/fc of its own (pre-activation: BN -> ReLU -> conv)
           [-> ReLU | ReLU6]
=========  ===============================================================================

Identity vanishes; a Dropout right before a conv or fc is kept with that unit (it acts in
training only) and vanishes elsewhere; Flatten, ``torch.flatten`` and
``x.view(x.size(0), -1)`` / ``reshape`` mark where an fc unit flattens its input. A
BatchNorm subclass (a fused BN + activation module, such as timm's BatchNormAct2d) is read
by what it computes: BN, BN -> ReLU or BN -> ReLU6.

Elementwise and channel-moving ops are collected into *islands*: the nodes computed from
one tensor by ops that act on each value alone (``relu6``, ``x + 3``, ``/ 6``, ``x *
sigmoid(x)``) or that only move whole channels (``view``, ``transpose``, ``contiguous``,
with the shape arithmetic of ``x.size()``). An island becomes one unit where something
else reads it: a lut unit (its function, replayed from the traced graph) or a channels
unit (its channel index, found by running the chain on a tensor that holds each channel's
number). A ReLU right after a conv, fc, add or affine stays part of that unit.

Every unit outputs codes, except a conv or fc unit without an activation whose readers are
all adds (a residual branch: int32 accumulators, as in :class:`fiqnn.integer.graph.IntGraph`)
and the logits. Codes are unsigned after a ReLU (or any function that is never negative)
and signed otherwise: a linear bottleneck's projection, an add with no ReLU after it.

Anything else is refused before any training starts, with one line naming the module
class that holds the op (from the trace's module stack), the op, and what would make it
importable.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
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
    kind: str  # conv | fc | add | avgpool | maxpool | lut | mul | concat | channels | affine
    inputs: list[str]  # unit names, or "input"
    layer: nn.Module | None = None  # Conv2d or Linear
    bn: nn.Module | None = None  # conv/fc: the BN after it; affine: the BN itself
    act: str | None = None  # "relu" | "relu6" | None
    pool: tuple[int, int, int] | None = None  # conv: fused max-pool (kernel, stride, padding) after the act
    window: tuple | None = None  # avgpool/maxpool: (kernel, stride, padding) pairs, or "global"
    ceil_mode: bool = False  # avgpool/maxpool
    count_include_pad: bool = True  # avgpool
    func: Callable | None = None  # lut: the elementwise function; channels: the channel-moving chain
    drop: nn.Module | None = None  # a Dropout right before the conv/fc (training only)
    fx_nodes: list[str] = field(default_factory=list)  # the traced nodes this unit covers
    acc: bool = False  # outputs real values (int32 accumulators in the student), not codes
    signed: bool = False  # its codes are signed

    @property
    def codes(self) -> bool:
        """Whether the unit outputs activation codes (else real values: int32 accumulators in the student)."""
        return not self.acc


_RELU_FUNCS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_MUL_FUNCS = {operator.mul, operator.imul, torch.mul}
_CAT_FUNCS = {torch.cat, torch.concat}
_FLATTEN_FUNCS = {torch.flatten}
_AVG_FUNCS = {F.avg_pool2d, F.adaptive_avg_pool2d}
# Ops that act on every value alone (the tensor arguments of one call being the same island's).
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Sigmoid, nn.Hardsigmoid, nn.Hardswish, nn.SiLU, nn.Tanh,
                        nn.LeakyReLU, nn.GELU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Softsign,
                        nn.Tanhshrink)
_ELEMENTWISE_FUNCS = {F.relu, torch.relu, F.relu6, F.hardtanh, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
                      F.hardsigmoid, F.hardswish, F.silu, F.leaky_relu, F.gelu, F.elu, F.selu, F.celu, F.mish,
                      F.softplus, torch.clamp, torch.clip, torch.abs, torch.exp, torch.neg, torch.square,
                      operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                      operator.truediv, operator.itruediv, operator.neg, operator.pow, torch.add, torch.sub,
                      torch.mul, torch.div, torch.minimum, torch.maximum}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
                        "clamp_max", "clip", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg",
                        "abs", "exp", "square", "pow", "minimum", "maximum", "hardtanh_"}
_MOVE_METHODS = {"view", "reshape", "transpose", "permute", "contiguous"}
_MOVE_FUNCS = {torch.transpose, torch.permute, torch.reshape}
_SIZE_FUNCS = {operator.getitem, operator.floordiv, operator.mul, operator.add, operator.sub}  # on sizes
SUPPORTED = ("Conv2d, Linear, BatchNorm1d/2d, elementwise functions of one tensor (ReLU, ReLU6, hard-swish, SiLU, "
             "sigmoid, ...), MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), mean over (2, 3), residual +, "
             "channel-wise *, torch.cat on channels, channel split and shuffle, Flatten, Dropout, Identity")

# What would make an op importable, by the name of its module class or function.
_HINTS = {
    "LayerNorm": "replace it by a BatchNorm2d (fiqnn folds BN statistics; a LayerNorm's depend on the input)",
    "GroupNorm": "replace it by a BatchNorm2d (a GroupNorm's statistics depend on the input)",
    "InstanceNorm2d": "replace it by a BatchNorm2d (an InstanceNorm's statistics depend on the input)",
    "Upsample": "fiqnn has no integer upsampling yet; a stride-2 ConvTranspose2d is not supported either",
    "interpolate": "fiqnn has no integer upsampling yet",
    "softmax": "drop it: fiqnn's logits are compared by argmax, which a softmax does not change",
    "PReLU": "use one shared slope (num_parameters=1), which is elementwise, or a LeakyReLU",
}


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


def _op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    return str(getattr(node.target, "__name__", node.target))


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The op, and the module class that holds it (the innermost one of the trace's module stack)."""
    if node.op == "call_module":
        what = f"{type(modules[node.target]).__name__} module {node.target!r}"
    elif node.op == "call_function":
        what = f"function {getattr(node.target, '__name__', node.target)}"
    elif node.op == "call_method":
        what = f"method .{node.target}()"
    else:
        what = node.op
    stack = node.meta.get("nn_module_stack") or {}
    if stack and node.op != "call_module":
        path, cls = list(stack.values())[-1]
        what += f" in {getattr(cls, '__name__', cls)} {path!r}"
    return what


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping BatchNorm subclasses (fused BN + activation modules) whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.modules.batchnorm._BatchNorm) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` traced by :class:`_Tracer`, or :class:`UnsupportedModelError` naming the module
    whose forward could not be traced."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as e:  # fx raises many types for untraceable Python
        # fx pops a module off its stack only when its forward returns: the last one left failed
        inner = list(tracer.module_stack.values())[-1] if getattr(tracer, "module_stack", None) else None
        where = f" in {getattr(inner[1], '__name__', inner[1])} {inner[0]!r}" if inner and inner[0] else ""
        raise UnsupportedModelError(
            f"torch.fx cannot trace {type(model).__name__}{where} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''}); make that forward traceable: no Python "
            "control flow or arithmetic on tensor values or sizes (float(x.size(2)), a loop over the parts of "
            "torch.split), or compute such numbers once in __init__") from None


@torch.no_grad()
def _bn_act(mod: nn.Module) -> str | None | bool:
    """What a BatchNorm(-subclass) module computes in eval mode: plain BN (None), BN -> ReLU
    ("relu"), BN -> ReLU6 ("relu6"), or something else (False)."""
    if type(mod) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return None
    was = mod.training
    mod.eval()
    try:
        x = torch.randn(4, mod.num_features, 3, 3, generator=torch.Generator().manual_seed(0)) * 4
        if isinstance(mod, nn.BatchNorm1d):
            x = x[:, :, 0, 0]
        y = mod(x)
        ref = F.batch_norm(x, mod.running_mean, mod.running_var, mod.weight, mod.bias, False, 0.0, mod.eps)
    except Exception:  # noqa: BLE001 - a module that cannot run on a plain tensor is not a BN we can read
        return False
    finally:
        mod.train(was)
    for act, f in ((None, lambda t: t), ("relu", F.relu), ("relu6", lambda t: F.hardtanh(t, 0.0, 6.0))):
        if y.shape == ref.shape and torch.allclose(y, f(ref), rtol=1e-5, atol=1e-5):
            return act
    return False


def _subgraph(gm: fx.GraphModule, target: fx.Node, members: set[fx.Node]) -> fx.GraphModule:
    """A module computing ``target`` from one input: the island ``members`` that ``target``
    needs, every other node they read standing for that input (the island's root)."""
    g = fx.Graph()
    x = g.placeholder("x")
    env: dict[fx.Node, fx.Node] = {}

    def copy(n: fx.Node) -> fx.Node:
        if n not in env:
            if n not in members:
                env[n] = x
            else:
                for a in n.all_input_nodes:
                    copy(a)
                env[n] = g.node_copy(n, lambda a: env[a])
        return env[n]

    g.output(copy(target))
    return fx.GraphModule(gm, g, "island")


@torch.no_grad()
def nonnegative(func: Callable) -> bool:
    """Whether an elementwise function is never negative (its codes can be unsigned), judged on
    a dense grid over [-256, 256]."""
    x = torch.linspace(-256.0, 256.0, 65_537, dtype=torch.float64).reshape(1, 1, 1, -1)
    return bool(func(x.float()).min() >= 0)


@torch.no_grad()
def channel_index(func: Callable, shape: tuple[int, ...]) -> list[int]:
    """The channel each output channel of ``func`` copies, for inputs of ``shape`` (N, C, H, W),
    found by running it on a tensor whose every cell holds its own (channel, row, column)
    number; raises ValueError when ``func`` does anything but move whole channels."""
    n, c, h, w = shape
    cells = torch.arange(c * h * w, dtype=torch.float64).reshape(1, c, h, w).expand(n, c, h, w).contiguous()
    y = func(cells)
    if y.ndim != 4 or y.shape[0] != n or y.shape[2:] != (h, w):
        raise ValueError(f"it makes a tensor of shape {tuple(y.shape)} from {tuple(shape)}")
    index = torch.div(y[0, :, 0, 0], h * w, rounding_mode="floor").long()
    want = cells[:, index]
    if not torch.equal(y, want):
        raise ValueError("it moves values within channels or across images, not whole channels")
    return index.tolist()


def import_model(model: nn.Module) -> list[Unit]:
    """The units of ``model`` (see module doc), or :class:`UnsupportedModelError` naming the
    first node that has no integer form."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    users = {node: list(node.users) for node in gm.graph.nodes}

    def refuse(node: fx.Node, why: str = "") -> UnsupportedModelError:
        hint = _HINTS.get(_op_name(node, modules))
        tail = f"; {hint}" if hint else f"; fiqnn converts {SUPPORTED}"
        return UnsupportedModelError(f"node {node.name!r} ({_describe(node, modules)}) {why or 'is not supported'}"
                                     + tail)

    units: list[Unit] = []
    alias: dict[fx.Node, str] = {}  # traced node -> the unit (or "input") whose output it is
    owner: dict[str, Unit] = {}
    flattened: set[str] = set()  # names whose consumer must be an fc (they passed a flatten)
    island: dict[fx.Node, str] = {}  # traced node -> the unit it is computed from by elementwise/moving ops
    moves: set[fx.Node] = set()  # island nodes that move channels (the others act on values, or on sizes)
    splits: dict[fx.Node, tuple[str, list]] = {}  # a chunk/split call -> (its source, its parts' slices)
    taken = {node.name for node in gm.graph.nodes}
    original = dict(model.named_modules())  # (the traced module's own holders are plain Modules)

    def add_unit(unit: Unit, node: fx.Node) -> str:
        units.append(unit)
        owner[unit.name], alias[node] = unit, unit.name
        return unit.name

    def source(node: fx.Node, arg) -> str:
        """The unit whose output ``arg`` is; an island is made a unit here, where it is read."""
        if isinstance(arg, fx.Node) and arg not in alias and arg in island:
            _materialise(arg)
        if not isinstance(arg, fx.Node) or arg not in alias:
            raise refuse(node, "takes an input fiqnn cannot follow")
        return alias[arg]

    sizes: set[fx.Node] = set()  # island nodes holding sizes (x.size(), its items, arithmetic on them)

    def _materialise(arg: fx.Node) -> None:
        """The island value ``arg`` as a unit: a lut (elementwise ops only) or channels (moves only)."""
        members = {n for n, root in island.items() if root == island[arg]}
        needed, stack = set(), [arg]
        while stack:
            n = stack.pop()
            if n in members and n not in needed:
                needed.add(n)
                stack.extend(n.all_input_nodes)
        values = needed - sizes
        if values & moves and values - moves:
            raise refuse(arg, "mixes elementwise arithmetic and moving channels in one expression; apply the "
                         "function before or after the reshape, not between")
        kind = "channels" if values & moves else "lut"
        add_unit(Unit(arg.name, kind, [island[arg]], func=_subgraph(gm, arg, members),
                      fx_nodes=[n.name for n in gm.graph.nodes if n in needed]), arg)

    def roots(node: fx.Node) -> set[str]:
        """The units the tensor arguments of ``node`` come from (through islands)."""
        out = set()
        for a in node.all_input_nodes:
            if a in island:
                out.add(island[a])
            elif a in alias:
                out.add(alias[a])
            else:
                raise refuse(node, "takes an input fiqnn cannot follow")
        return out

    def join_island(node: fx.Node, *, move: bool = False, size: bool = False) -> bool:
        """Make ``node`` part of the island its inputs come from, if they all come from one."""
        rs = roots(node)
        if len(rs) != 1:
            return False
        island[node] = rs.pop()
        if move:
            moves.add(node)
        if size:
            sizes.add(node)
        return True

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
        if not isinstance(arg, fx.Node) or arg not in alias:
            return None
        unit = owner.get(alias[arg])
        if unit is None or len(users[arg]) != 1:
            return None
        return unit

    def relu_kind(node: fx.Node, mod: nn.Module | None) -> str | None:
        """"relu" / "relu6" when ``node`` is a ReLU or ReLU6 (hardtanh(0, 6) too), else None."""
        if isinstance(mod, nn.ReLU) or node.target in (F.relu, torch.relu) or (
                node.op == "call_method" and node.target in ("relu", "relu_")):
            return "relu"
        if isinstance(mod, nn.ReLU6) or node.target is F.relu6:
            return "relu6"
        if isinstance(mod, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0):
            return "relu6"
        return None

    def elementwise(node: fx.Node, mod: nn.Module | None) -> bool:
        if mod is not None:
            return isinstance(mod, _ELEMENTWISE_MODULES) or (isinstance(mod, nn.PReLU) and mod.num_parameters == 1)
        if node.op == "call_method":
            return node.target in _ELEMENTWISE_METHODS
        return node.op == "call_function" and node.target in _ELEMENTWISE_FUNCS

    def tensors(node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a not in sizes]

    for node in gm.graph.nodes:
        mod = modules.get(node.target) if node.op == "call_module" else None
        first = node.args[0] if node.args else node.kwargs.get("input")  # the tensor a call reads
        if node.op == "placeholder":
            if alias:
                raise refuse(node, "is a second input; fiqnn models take one image tensor")
            alias[node] = "input"
        elif node.op == "output":
            out = first
            if isinstance(out, fx.Node) and out in island:
                source(node, out)
            if not isinstance(out, fx.Node) or alias.get(out) not in owner:
                raise refuse(node, "must be one tensor made by a conv or linear layer")
            last = owner[alias[out]]
            if last.kind not in ("conv", "fc") or last.act is not None:
                made_by = next((n for n in gm.graph.nodes if n.name == last.fx_nodes[-1]), None)
                what = _describe(made_by, modules) if made_by is not None else last.kind
                raise UnsupportedModelError(
                    f"the output is made by unit {last.name} ({what}), not by a conv or linear layer without an "
                    "activation; fiqnn's logits are such a layer's int32 accumulators: end the model with one "
                    "(a head of conv -> ReLU -> average pool, as in SqueezeNet or DarkNet, becomes average pool -> "
                    "1x1 conv)")
        elif node.op == "get_attr":
            raise refuse(node, "reads a parameter outside a layer")
        elif isinstance(mod, (nn.Dropout, nn.Identity)) or node.target in (F.dropout,) or (
                node.op == "call_method" and node.target == "contiguous" and first in alias):
            alias[node] = source(node, first)
        elif node.op == "call_method" and node.target == "size" or (
                node.op == "call_function" and node.target in _SIZE_FUNCS and all(
                    a in sizes for a in node.all_input_nodes) and node.all_input_nodes):
            if not join_island(node, size=True):
                raise refuse(node, "computes sizes of two tensors")
        elif (isinstance(mod, nn.Flatten) or node.target in _FLATTEN_FUNCS or (
                node.op == "call_method" and node.target == "flatten")) or (
                node.op == "call_method" and node.target in ("view", "reshape") and _is_flatten(node)):
            kw = _bind(node) if mod is None else {}
            if "shape" not in kw and ((mod.start_dim, mod.end_dim) if mod is not None else
                                      (kw.get("start_dim"), kw.get("end_dim"))) != (1, -1):
                raise refuse(node, "flattens dimensions other than 1..-1 (the batch axis must stay)")
            alias[node] = source(node, first)
            flattened.add(alias[node])
        elif node.op == "call_method" and node.target in _MOVE_METHODS or node.target in _MOVE_FUNCS:
            if not join_island(node, move=True):
                raise refuse(node, "reshapes a tensor made from two others")
        elif isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                raise refuse(node, "uses padding other than explicit zero padding; give Conv2d numbers for padding")
            if any(p > d * (k - 1) for p, d, k in zip(mod.padding, mod.dilation, mod.kernel_size)):
                raise refuse(node, "pads past its (dilated) kernel, so some outputs see only padding")
            src = source(node, first)
            if src in flattened:
                raise refuse(node, "convolves a flattened tensor")
            add_unit(Unit(unit_name(node), "conv", [src], layer=mod, drop=dropout_before(first),
                          fx_nodes=[node.name]), node)
        elif isinstance(mod, nn.Linear):
            add_unit(Unit(unit_name(node), "fc", [source(node, first)], layer=mod, drop=dropout_before(first),
                          fx_nodes=[node.name]), node)
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            act = _bn_act(mod)
            if act is False or not isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                raise refuse(node, "computes neither BN, BN -> ReLU nor BN -> ReLU6 (checked on random inputs); "
                             "split it into a BatchNorm2d and an activation module")
            unit = fuse_target(node, first)
            if unit is not None and unit.kind in ("conv", "fc") and unit.bn is None and unit.act is None:
                unit.bn, unit.act = mod, act
                unit.fx_nodes.append(node.name)
                alias[node] = unit.name
            else:  # a BN no layer of its own precedes: pre-activation
                add_unit(Unit(node.name, "affine", [source(node, first)], bn=mod, act=act, fx_nodes=[node.name]),
                         node)
        elif relu_kind(node, mod) and (unit := fuse_target(node, first)) is not None and \
                unit.kind in ("conv", "fc", "add", "affine") and unit.act is None and not unit.pool:
            unit.act = relu_kind(node, mod)
            unit.fx_nodes.append(node.name)
            alias[node] = unit.name
        elif isinstance(mod, nn.MaxPool2d) or node.target is F.max_pool2d:
            if mod is not None:
                k, st, p, d, ceil, idx = (mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode,
                                          mod.return_indices)
            else:
                kw = _bind(node)
                k, st, p, d, ceil, idx = (kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"],
                                          kw["ceil_mode"], kw["return_indices"])
            if idx or _pair(d) != (1, 1):
                raise refuse(node, "is a max-pool with dilation or returned indices")
            k, st, p = _pair(k), _pair(k if st in (None, (), []) else st), _pair(p)
            unit = fuse_target(node, first)
            if unit is not None and unit.kind == "conv" and unit.act is not None and not unit.pool and \
                    k[0] == k[1] and st[0] == st[1] and p[0] == p[1] and not ceil:
                unit.pool = (k[0], st[0], p[0])
                unit.fx_nodes.append(node.name)
                alias[node] = unit.name
            else:
                add_unit(Unit(node.name, "maxpool", [source(node, first)], window=(k, st, p), ceil_mode=bool(ceil),
                              fx_nodes=[node.name]), node)
        elif elementwise(node, mod) and tensors(node) and join_island(node):
            pass  # an elementwise function of one tensor: part of that tensor's island
        elif (node.target in _ADD_FUNCS or node.op == "call_method" and node.target in ("add", "add_")) and \
                len(tensors(node)) == 2:
            kw = {} if node.target in (operator.add, operator.iadd) else _bind(node)
            if kw.get("alpha", 1) != 1:
                raise refuse(node, "is an add with alpha != 1")
            add_unit(Unit(node.name, "add", [source(node, a) for a in tensors(node)], fx_nodes=[node.name]), node)
        elif (node.target in _MUL_FUNCS or node.op == "call_method" and node.target in ("mul", "mul_")) and \
                len(tensors(node)) == 2:
            add_unit(Unit(node.name, "mul", [source(node, a) for a in tensors(node)], fx_nodes=[node.name]), node)
        elif node.target in _CAT_FUNCS:
            kw = _bind(node)
            if kw.get("dim", 0) not in (1, -3):
                raise refuse(node, "concatenates along an axis other than channels (dim=1)")
            parts = [source(node, a) for a in kw["tensors"]]
            if len(parts) == 1:
                alias[node] = parts[0]
            else:
                add_unit(Unit(node.name, "concat", parts, fx_nodes=[node.name]), node)
        elif node.op in ("call_method", "call_function") and getattr(node.target, "__name__", node.target) in (
                "chunk", "split"):
            splits[node] = (source(node, first), _split_parts(node, refuse))
        elif node.target is operator.getitem and first in splits:
            src, parts = splits[first]
            part = parts[node.args[1]] if isinstance(node.args[1], int) else None
            if part is None:
                raise refuse(node, "takes something other than one part of a channel split")
            add_unit(Unit(node.name, "channels", [src], func=part, fx_nodes=[first.name, node.name]), node)
        elif node.target is operator.getitem and _channel_slice(node.args[1]) is not None:
            sl = _channel_slice(node.args[1])
            add_unit(Unit(node.name, "channels", [source(node, first)], func=lambda x, s=sl: x[:, s],
                          fx_nodes=[node.name]), node)
        elif isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)) or node.target in _AVG_FUNCS or (
                node.op == "call_method" and node.target == "mean"):
            window, ceil, include = _avg_window(node, mod, refuse)
            src = source(node, first)
            unit = Unit(node.name, "avgpool", [src], window=window, ceil_mode=ceil, count_include_pad=include,
                        fx_nodes=[node.name])
            add_unit(unit, node)
            if window == "global-flat":  # x.mean((2, 3)) also drops the spatial axes
                unit.window = "global"
                flattened.add(unit.name)
        elif elementwise(node, mod) or node.target in _ADD_FUNCS | _MUL_FUNCS:
            raise refuse(node, "combines two tensors in a way other than a residual + or a channel-wise *")
        else:
            raise refuse(node)

    _outputs(units)
    return units


def _is_flatten(node: fx.Node) -> bool:
    """``x.view(x.size(0), -1)`` / ``x.reshape(n, -1)``: a flatten for an fc layer."""
    shape = _bind(node)["shape"]
    return len(shape) == 2 and shape[1] == -1


def _channel_slice(index) -> slice | None:
    """``x[:, a:b]``: the channel slice of a getitem index, or None."""
    if isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None) and isinstance(index[1], slice) \
            and all(v is None or isinstance(v, int) for v in (index[1].start, index[1].stop, index[1].step)):
        return index[1]
    return None


def _split_parts(node: fx.Node, refuse) -> list[Callable]:
    """The parts of ``x.chunk(n, 1)`` / ``x.split(size, 1)`` / ``torch.split(x, sizes, 1)``, as
    functions of the whole tensor (the sizes are known once the channel count is)."""
    name = getattr(node.target, "__name__", node.target)
    args = list(node.args[1:])
    kw = dict(node.kwargs)
    dim = kw.get("dim", args[1] if len(args) > 1 else 0)
    if dim not in (1, -3):
        raise refuse(node, "splits along an axis other than channels (dim=1)")
    how = kw.get("chunks", kw.get("split_size_or_sections", kw.get("split_size", args[0] if args else None)))
    if name == "chunk":
        if not isinstance(how, int):
            raise refuse(node, "chunks into a number of parts that is not a constant")
        return [lambda x, i=i, n=how: x.chunk(n, 1)[i] for i in range(how)]
    if isinstance(how, int) or (isinstance(how, (list, tuple)) and all(isinstance(v, int) for v in how)):
        count = len(how) if isinstance(how, (list, tuple)) else 64  # parts beyond the channels are never read
        return [lambda x, i=i, h=how: torch.split(x, h, 1)[i] for i in range(count)]
    raise refuse(node, "splits into sizes that are not constants")


def _avg_window(node: fx.Node, mod: nn.Module | None, refuse) -> tuple[tuple | str, bool, bool]:
    """((kernel, stride, padding) pairs, ceil_mode, count_include_pad); the window is "global" for a
    mean over the whole map, "global-flat" when the call also drops the spatial axes."""
    if isinstance(mod, nn.AdaptiveAvgPool2d) or node.target is F.adaptive_avg_pool2d:
        size = mod.output_size if mod is not None else _bind(node)["output_size"]
        if _pair(size) != (1, 1):
            raise refuse(node, "is an adaptive average pool to a size other than 1x1; use AdaptiveAvgPool2d(1) or "
                         "an AvgPool2d with a fixed window")
        return "global", False, True
    if node.op == "call_method":  # mean: read by hand, as x.mean((2, 3), keepdim=True) binds to no schema
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if dims is None or not isinstance(dims, (tuple, list)) or \
                sorted(d % 4 for d in dims) != [2, 3] or node.kwargs.get("dtype") is not None:
            raise refuse(node, "is a mean over axes other than (2, 3)")
        return ("global" if keep else "global-flat"), False, True
    if mod is not None:
        k, s, p, ceil, cip, div = (mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad,
                                   mod.divisor_override)
    else:
        kw = _bind(node)
        k, s, p, ceil, cip, div = (kw["kernel_size"], kw["stride"], kw["padding"], kw["ceil_mode"],
                                   kw["count_include_pad"], kw["divisor_override"])
    if div:
        raise refuse(node, "is an average pool with a divisor override")
    return (_pair(k), _pair(k if s in (None, (), []) else s), _pair(p)), bool(ceil), bool(cip)


def _outputs(units: list[Unit]) -> None:
    """Decide what each unit outputs: int32 accumulators (a conv/fc without an activation read
    only by adds, and the logits) or codes, signed where a value can be negative; and check
    what IntGraph requires of the edges."""
    by_name = {u.name: u for u in units}
    readers: dict[str, list[Unit]] = {u.name: [] for u in units}
    for u in units:
        for src in u.inputs:
            if src != "input":
                readers[src].append(u)

    def signed(name: str) -> bool:
        return name != "input" and by_name[name].signed

    for u in units:
        if u.kind in ("conv", "fc"):
            u.acc = u.act is None and (u is units[-1] or all(r.kind == "add" for r in readers[u.name]))
            u.signed = u.act is None and not u.acc
        elif u.kind in ("add", "affine"):
            u.signed = u.act is None
        elif u.kind == "lut":
            u.signed = not nonnegative(u.func)
        elif u.kind in ("mul", "concat"):
            u.signed = any(signed(s) for s in u.inputs)
        else:  # avgpool, maxpool, channels: the input's codes
            u.signed = signed(u.inputs[0])
    for u in units:
        if u.kind == "add" and len(set(u.inputs)) != 2:
            raise UnsupportedModelError(f"{u.name} adds a tensor to itself")


# Float outputs of a unit and of the module it came from are the same operations on the same
# numbers, so they agree to float32 rounding; anything beyond this is a different network.
IMPORT_RTOL = 1e-4


def _act(y: torch.Tensor, act: str | None) -> torch.Tensor:
    return F.hardtanh(y, 0.0, 6.0) if act == "relu6" else F.relu(y) if act == "relu" else y


def unit_forward(unit: Unit, xs: list[torch.Tensor]) -> torch.Tensor:
    """What ``unit`` computes in float, from this module's own reading of it (not the fx graph)."""
    x = xs[0]
    if unit.kind == "add":
        y = xs[0] + xs[1]
    elif unit.kind == "mul":
        y = xs[0] * xs[1]
    elif unit.kind == "concat":
        return torch.cat(xs, 1)
    elif unit.kind in ("lut", "channels"):
        return unit.func(x)
    elif unit.kind == "affine":
        y = unit.bn(x)
    elif unit.kind == "avgpool":
        if unit.window == "global":
            return F.adaptive_avg_pool2d(x, 1)
        k, s, p = unit.window
        return F.avg_pool2d(x, k, s, p, ceil_mode=unit.ceil_mode, count_include_pad=unit.count_include_pad)
    elif unit.kind == "maxpool":
        k, s, p = unit.window
        return F.max_pool2d(x, k, s, p, ceil_mode=unit.ceil_mode)
    else:
        y = unit.layer(x if unit.kind == "conv" else x.flatten(1))
        if unit.bn is not None:
            y = unit.bn(y)
    y = _act(y, unit.act)
    if unit.pool:
        y = F.max_pool2d(y, *unit.pool)
    return y


def _checked_node(unit: Unit) -> str:
    """The traced node whose output a unit's must equal: the last it covers (an island's: its own)."""
    return unit.name if unit.kind in ("lut", "channels") else unit.fx_nodes[-1]


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
        gm = trace(model)
        seen: dict[str, torch.Tensor] = {}
        wanted = {_checked_node(unit) for unit in units}

        class _Record(fx.Interpreter):
            def run_node(self, n: fx.Node):
                out = super().run_node(n)
                if isinstance(out, torch.Tensor) and n.name in wanted:
                    seen[n.name] = out.clone()  # an in-place activation later would change it
                return out

        _Record(gm).run(x)
        env = {"input": x}
        for unit in units:
            try:
                got = unit_forward(unit, [env[s] for s in unit.inputs])
            except (RuntimeError, ValueError) as e:
                raise UnsupportedModelError(f"import check failed: unit {unit.name} ({unit.kind}) cannot run on its "
                                            f"inputs ({str(e).splitlines()[0][:120]})") from None
            if unit.kind == "channels":
                try:
                    channel_index(unit.func, tuple(env[unit.inputs[0]].shape))
                except ValueError as e:
                    raise UnsupportedModelError(f"unit {unit.name} (traced nodes {', '.join(unit.fx_nodes)}) reshapes "
                                                f"its input but does not only move channels: {e}") from None
            env[unit.name] = got
            want = seen.get(_checked_node(unit))
            ok = want is not None and got.numel() == want.numel()
            err = math.nan
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
