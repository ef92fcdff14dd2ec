"""The networks distill trains: teacher QNN, local initialisation, PTL stages, conversion.

The units come from :func:`fiqnn.import_model`, for a chain of layers (the models of
:mod:`fiqnn.models`) and a residual network alike. A :class:`GraphNet` runs units wired
by name: the teacher QNN
(:class:`~fiqnn.layers.QnnUnit`, :class:`QnnAdd`, :class:`QnnAvgPool`, BN kept) and
the BN-free student (:class:`~fiqnn.layers.IntUnit`, :class:`IntAddUnit`,
:class:`IntAvgPoolUnit`), both in the code domain. A conv/fc unit without an
activation inside the network is a residual branch: in the teacher it outputs the
real-valued BN output, in the student its int32 accumulators (``IntUnit(raw=True)``),
and the add scales each input by its own factor, (E9).

:func:`fold` is phase 1 of docs/method.md (every unit from the frozen teacher on the
teacher's own inputs), :func:`stages` and :func:`ptl_stage` are phase 2;
:func:`fiqnn.convert` turns the trained student into an IntGraph.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._progress import bar as progress_bar
from .arith import act_range, quantize_multiplier
from .config import DistillConfig
from .fold import local_init
from .fximport import Unit, import_model
from .layers import Geometry, IntUnit, QnnUnit, _Cached, _version_key, requantize_sum
from .quantizers import LsqAct, round_half_up
from .train import ptl_loss, train_stage


class GraphNet(nn.Module):
    """Units run in topological order, each on the outputs of the units it names."""

    def __init__(self, units: list[tuple[str, nn.Module, list[str]]]):
        super().__init__()
        self.units = nn.ModuleDict(OrderedDict((n, m) for n, m, _ in units))
        self.inputs = {n: list(ins) for n, _, ins in units}

    def outputs(self, x_q: torch.Tensor) -> dict[str, torch.Tensor]:
        env = {"input": x_q.to(torch.float32)}
        for name, unit in self.units.items():
            env[name] = unit(*[env[s] for s in self.inputs[name]])
        return env

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        """The logits, (N, classes): a conv logits layer's 1x1 map is flattened."""
        return self.logits(self.outputs(x_q))

    def logits(self, env: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits, (N, classes), from the outputs of :meth:`outputs`."""
        return env[list(self.units)[-1]].flatten(1)

    def spec(self) -> dict:
        """A student's structure in plain JSON values (it loads without the teacher)."""
        units = []
        for name, u in self.units.items():
            d = {"name": name, "inputs": self.inputs[name]}
            if isinstance(u, IntUnit):
                d.update(type="int", geometry=dataclasses.asdict(u.geometry), weight_shape=list(u.weight.shape),
                         in_bits=u.in_bits, w_bits=u.w_bits, a_bits=u.a_bits, per_channel=u.per_channel, raw=u.raw)
            elif isinstance(u, IntAddUnit):
                d.update(type="add", n_inputs=len(u.log_beta), a_bits=u.a_bits)
            else:
                d.update(type="avgpool", window=[list(x) for x in u.window], in_bits=u.in_bits, a_bits=u.a_bits)
            units.append(d)
        return {"graph": True, "in_shape": list(self.in_shape), "num_classes": self.num_classes, "units": units}

    @staticmethod
    def from_spec(spec: dict) -> GraphNet:
        """The (untrained) student ``spec`` describes; the chain specs of older student files
        (units with no type and no inputs, each reading the one before) load too."""
        built, previous = [], "input"
        for d in spec["units"]:
            d = {"type": "int", "inputs": [previous], "raw": False, **d}
            previous = d["name"]
            if d["type"] == "int":
                g = d["geometry"]
                geometry = Geometry(g["kind"], g["out_channels"], tuple(g["stride"]), tuple(g["padding"]),
                                    tuple(g["dilation"]), g["groups"], tuple(g["pool"]) if g["pool"] else None)
                u = IntUnit(geometry, tuple(d["weight_shape"]), d["in_bits"], d["w_bits"], d["a_bits"],
                            d["per_channel"], d["raw"])
            elif d["type"] == "add":
                u = IntAddUnit(d["n_inputs"], d["a_bits"])
            else:
                u = IntAvgPoolUnit(tuple(tuple(x) for x in d["window"]), d["in_bits"], d["a_bits"])
            built.append((d["name"], u, d["inputs"]))
        net = GraphNet(built)
        net.in_shape, net.num_classes = tuple(spec["in_shape"]), spec["num_classes"]
        return net


def upgrade_state(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """A state dict of a network with units ``names``, from either form fiqnn has saved: a
    GraphNet's (``units.<name>.``) or the unit list of older chain checkpoints (``units.<i>.``)."""
    if not any(k.startswith("units.0.") for k in state):
        return state
    out = {}
    for k, v in state.items():
        head, i, rest = k.split(".", 2) if k.count(".") >= 2 else (k, "", "")
        out[f"{head}.{names[int(i)]}.{rest}" if head == "units" and i.isdigit() and int(i) < len(names) else k] = v
    return out


def _act(x: torch.Tensor, relu6: bool) -> torch.Tensor:
    return F.hardtanh(x, 0.0, 6.0) if relu6 else F.relu(x)


class QnnAdd(nn.Module):
    """Teacher residual add: real sum of the inputs (codes x their step, or real values),
    ReLU/ReLU6, then A-bit activation codes."""

    def __init__(self, in_scales: list[float | None], a_bits: int, relu6: bool = False):
        super().__init__()
        self.register_buffer("in_scales", torch.tensor([s if s is not None else 0.0 for s in in_scales]))
        self.relu6, self.a_bits = relu6, a_bits
        self.aq = LsqAct(a_bits)

    def pre_act(self, *xs: torch.Tensor) -> torch.Tensor:
        return sum(x * s if s > 0 else x for x, s in zip(xs, self.in_scales.tolist()))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.aq(_act(self.pre_act(*xs), self.relu6))


class QnnAvgPool(nn.Module):
    """Teacher average pool of codes (zero padding counts), then A-bit activation codes."""

    def __init__(self, window: tuple, in_scale: float, a_bits: int):
        super().__init__()
        self.window, self.a_bits = window, a_bits
        self.register_buffer("in_scale", torch.tensor(float(in_scale)))
        self.aq = LsqAct(a_bits)

    def pre_act(self, x_q: torch.Tensor) -> torch.Tensor:
        k, s, p = self.window
        return F.avg_pool2d(x_q * self.in_scale, k, s, p, count_include_pad=True)

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        return self.aq(self.pre_act(x_q))


class IntAddUnit(_Cached):
    """Student residual add, (E9): ``clamp(round(sum_i v_i * beta_i), 0, 2^A - 1)``; eval mode
    computes the integers exactly (one mult per input, one shared shift)."""

    def __init__(self, n_inputs: int, a_bits: int):
        super().__init__()
        self.a_bits = a_bits
        self.log_beta = nn.Parameter(torch.zeros(n_inputs))
        self._int_cache: tuple | None = None

    @torch.no_grad()
    def integer_params(self) -> dict[str, torch.Tensor]:
        key = _version_key(self.log_beta)
        if self._int_cache is None or self._int_cache[0] != key:
            beta = self.log_beta.double().exp()
            _, shift = quantize_multiplier(float(beta.max()))
            mult = torch.floor(beta * 2.0**shift + 0.5).clamp(1, 2**31 - 1).to(torch.int64)
            self._int_cache = (key, {"mult": mult, "shift": torch.tensor([shift], dtype=torch.int64)})
        return self._int_cache[1]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        qmax = act_range(self.a_bits)[1]
        if self.training:
            beta = self.log_beta.exp()
            return torch.clamp(round_half_up(sum(x * b for x, b in zip(xs, beta))), 0, qmax)
        p = self.integer_params()
        total = sum(x.to(torch.int64) * int(m) for x, m in zip(xs, p["mult"]))  # |total| < 2^62 (E9)
        return requantize_sum(total, int(p["shift"][0]), self.a_bits)


class IntAvgPoolUnit(_Cached):
    """Student average pool, (E10): ``clamp(round(window_sum * beta), 0, 2^A - 1)``."""

    def __init__(self, window: tuple, in_bits: int, a_bits: int):
        super().__init__()
        self.window, self.in_bits, self.a_bits = window, in_bits, a_bits
        self.log_beta = nn.Parameter(torch.zeros(()))
        self._int_cache: tuple | None = None

    @torch.no_grad()
    def integer_params(self) -> dict[str, torch.Tensor]:
        key = _version_key(self.log_beta)
        if self._int_cache is None or self._int_cache[0] != key:
            mult, shift = quantize_multiplier(float(self.log_beta.double().exp()))
            self._int_cache = (key, {"mult": torch.tensor([mult]), "shift": torch.tensor([shift])})
        return self._int_cache[1]

    def window_sum(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = self.window
        return F.avg_pool2d(x, k, s, p, count_include_pad=True, divisor_override=1)

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        qmax = act_range(self.a_bits)[1]
        if self.training:
            return torch.clamp(round_half_up(self.window_sum(x_q) * self.log_beta.exp()), 0, qmax)
        p = self.integer_params()
        total = self.window_sum(x_q.double()).to(torch.int64) * int(p["mult"][0])  # sums exact in float64
        return requantize_sum(total, int(p["shift"][0]), self.a_bits)


def _bits(i: int, n: int, first_input: bool, config: DistillConfig, act: bool) -> tuple[int, int, int | None]:
    in_bits = 8 if first_input else config.a_bits
    w_bits = config.first_last_bits if i in (0, n - 1) else config.w_bits
    return in_bits, w_bits, (config.a_bits if act else None)


@torch.no_grad()
def build_teacher_qnn(units: list[Unit], config: DistillConfig, calib_x: torch.Tensor) -> GraphNet:
    """The teacher QNN of an imported model: every activation step calibrated for minimum MSE
    on ``calib_x`` (uint8 codes as floats). The model's modules are copied, never mutated."""
    n = sum(u.kind in ("conv", "fc") for u in units)
    env, scale, built, i = {"input": calib_x.float()}, {"input": 1.0 / 255.0}, [], 0
    for u in units:
        xs = [env[s] for s in u.inputs]
        relu6 = u.act == "relu6"
        if u.kind in ("conv", "fc"):
            parts = [("drop", u.drop)] if u.drop is not None else []
            parts += [(u.kind, u.layer)] + ([("bn", u.bn)] if u.bn is not None else [])
            if u.act:
                parts.append(("act", nn.ReLU6() if relu6 else nn.ReLU()))
            if u.pool:
                parts.append(("pool", nn.MaxPool2d(*u.pool)))
            in_bits, w_bits, a_bits = _bits(i, n, u.inputs == ["input"], config, u.act is not None)
            if in_bits != 8 and scale[u.inputs[0]] is None:
                raise ValueError(f"{u.name} reads int32 accumulators")
            q = QnnUnit(nn.Sequential(OrderedDict(parts)), scale[u.inputs[0]], w_bits, a_bits,
                        config.teacher_quantizer).eval()
            i += 1
        elif u.kind == "add":
            q = QnnAdd([scale[s] for s in u.inputs], config.a_bits, relu6).eval()
        else:
            window = u.window
            if window == "global":
                h, w = xs[0].shape[2:]
                window = ((h, w), (1, 1), (0, 0))
            q = QnnAvgPool(window, scale[u.inputs[0]], config.a_bits).eval()
        if getattr(q, "aq", None) is not None:
            pre = q.pre_act(*xs)
            q.aq.init_step(_act(pre, relu6) if u.kind != "avgpool" else pre)
            scale[u.name] = float(q.aq.step)
        else:
            scale[u.name] = None  # real values (a residual branch, or the logits)
        env[u.name] = q(*xs)
        built.append((u.name, q, u.inputs))
    return GraphNet(built)


@torch.no_grad()
def init_unit(name: str, t: nn.Module, srcs: list[str], env: dict[str, torch.Tensor], students: dict[str, nn.Module],
              config: DistillConfig, last: bool) -> nn.Module:
    """Local initialisation of one student unit from teacher unit ``t``, whose inputs on the
    calibration images are ``env[src]``; ``students`` holds the already initialised units
    (an add reads the scale of the residual branch feeding it)."""
    if isinstance(t, QnnUnit):
        raw = t.a_bits is None and not last
        in_bits = 8 if srcs == ["input"] else config.a_bits
        s = local_init(t, env[srcs[0]], in_bits, t.w_bits, config.scale == "per-channel")
        s.raw = raw
        return s
    out = float(t.aq.step)
    if isinstance(t, QnnAdd):
        s = IntAddUnit(len(srcs), t.a_bits)
        betas = [float(sc) / out if sc > 0 else float(students[src].alpha) / out
                 for src, sc in zip(srcs, t.in_scales.tolist())]
        s.log_beta.copy_(torch.tensor(betas).log())
        return s
    (kh, kw), _, _ = t.window
    s = IntAvgPoolUnit(t.window, 8 if srcs == ["input"] else config.a_bits, t.a_bits)
    s.log_beta.copy_(torch.tensor(float(t.in_scale) / (kh * kw * out)).log())
    return s


@torch.no_grad()
def fold(qnn: GraphNet, config: DistillConfig, calib_x: torch.Tensor, progress: bool = False) -> GraphNet:
    """Step 1 for a DAG: every student unit from its teacher unit, on the teacher's own inputs.

    Residual branches get one scale per layer even with ``per-channel`` (the add's (E9)
    multiplier is one per input)."""
    env = qnn.eval().outputs(calib_x)
    last = list(qnn.units)[-1]
    students: dict[str, nn.Module] = {}
    for name, t in progress_bar(qnn.units.items(), progress=progress, desc="fold", total=len(qnn.units), unit="unit"):
        students[name] = init_unit(name, t, qnn.inputs[name], env, students, config, name == last)
    return GraphNet([(n, m, qnn.inputs[n]) for n, m in students.items()]).eval()


def stages(qnn: GraphNet) -> list[list[str]]:
    """PTL stages of a network: runs of units between cut points. A unit is a cut point when it
    outputs codes and no edge jumps over it, so a residual block (its branch, shortcut and
    add) is one stage and its output, the add's codes, is the stage's target; in a chain
    every unit is its own stage (docs/method.md: layer-by-layer conversion)."""
    return _cut(list(qnn.units), qnn.inputs, {n for n, u in qnn.units.items() if getattr(u, "a_bits", None)})


def stage_count(teacher: nn.Module) -> int:
    """How many PTL stages distilling ``teacher`` runs (:func:`stages` of its units)."""
    units = import_model(teacher)
    codes = {u.name for u in units if u.kind in ("add", "avgpool") or u.act is not None}
    return len(_cut([u.name for u in units], {u.name: u.inputs for u in units}, codes))


def _cut(names: list[str], inputs: dict[str, list[str]], codes: set[str]) -> list[list[str]]:
    index = {n: i for i, n in enumerate(names)} | {"input": -1}
    edges = [(index[src], index[n]) for n in names for src in inputs[n]]
    out, start = [], 0
    for i, n in enumerate(names):
        if i == len(names) - 1 or (n in codes and all(a == i for a, b in edges if a <= i < b)):
            out.append(names[start:i + 1])
            start = i + 1
    return out


def hybrid(student: GraphNet, qnn: GraphNet, groups: list[list[str]], k: int) -> GraphNet:
    """Stages 1..k from the student, the rest from the teacher QNN (shared modules)."""
    converted = {n for g in groups[:k] for n in g}
    return GraphNet([(n, student.units[n] if n in converted else qnn.units[n], qnn.inputs[n]) for n in qnn.units])


def stage_loss(student: GraphNet, qnn: GraphNet, frozen: GraphNet, groups: list[list[str]], k: int,
               config: DistillConfig) -> tuple[GraphNet, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The hybrid network of stage k+1 (stages 1..k+1 converted) and its loss,
    ``CE + lambda_target * MSE(stage output, frozen teacher's) + lambda_kd * KD``, codes scaled
    by the activation range so that the target term does not depend on the bits."""
    net = hybrid(student, qnn, groups, k + 1)
    out_name, final = groups[k][-1], k == len(groups) - 1
    out_unit = qnn.units[out_name]
    qmax = 1.0 if final or getattr(out_unit, "a_bits", None) is None else float(act_range(out_unit.a_bits)[1])

    def loss_fn(x_q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_env = frozen.outputs(x_q)
        env = net.outputs(x_q)
        return ptl_loss(net.logits(env), y, env[out_name], t_env[out_name], frozen.logits(t_env), qmax, config)

    return net, loss_fn


def ptl_stage(state, groups: list[list[str]], k: int, config: DistillConfig, stream, calib: torch.Tensor,
              val_acc, progress: bool, log) -> list[dict]:
    """Stage k+1 of PTL over blocks: convert the units of ``groups[k]`` (initialised from the
    compensated teacher on the codes the converted stages produce), train them with the
    downstream teacher units on CE + lambda_target * MSE(stage output codes, frozen teacher's)
    + KD; the patience rule picks the best epoch."""
    student, qnn, frozen = state.student, state.qnn, state.frozen
    group, names = groups[k], list(qnn.units)
    last_name = names[-1]
    with torch.no_grad():  # local init on the hybrid's own codes
        before = hybrid(student, qnn, groups, k).eval()
        env = before.outputs(calib)
        done: dict[str, nn.Module] = {n: student.units[n] for g in groups[:k] for n in g}
        for n in group:
            init = init_unit(n, qnn.units[n], qnn.inputs[n], env, done, config, n == last_name)
            student.units[n].load_state_dict(init.state_dict())
            if isinstance(init, IntUnit):
                student.units[n].raw = init.raw
            done[n] = student.units[n]
    net, loss_fn = stage_loss(student, qnn, frozen, groups, k, config)
    prefix = [student.units[n] for g in groups[:k] for n in g]
    stage = [student.units[n] for n in group]
    rest = [qnn.units[n] for g in groups[k + 1:] for n in g]
    final = k == len(groups) - 1
    return train_stage(prefix=prefix, stage=stage, rest=rest, loss_fn=loss_fn, evaluate=val_acc(net), stream=stream,
                       k=k, final=final, config=config, progress=progress, log=log)


@torch.no_grad()
def fold_into(student: GraphNet, source: GraphNet, config: DistillConfig, calib: torch.Tensor,
              progress: bool = False) -> list[dict]:
    """Step 1 for every unit at once (the fold / oneshot / scratch start), into ``student``."""
    for name, unit in fold(source, config, calib, progress).units.items():
        student.units[name].load_state_dict(unit.state_dict())
    return []
