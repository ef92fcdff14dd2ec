"""Step 2 of docs/method.md: layer-by-layer (block-by-block) conversion in PTL stages.

:func:`stages` cuts a network into stages (every layer of a chain, every residual block as a
whole); :func:`ptl_stage` converts one: local initialisation of its units from the compensated
teacher on the codes the converted stages produce, then training with the downstream teacher
units on the stage loss of :func:`stage_loss`, under the patience scheduler of
:mod:`fiqnn.train.loop`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import DistillConfig
from ..integer.arith import code_peak
from ..nets.fximport import import_model
from .blocks import ChannelsUnit
from .fold import init_unit
from .graphnet import GraphNet
from .loop import ptl_loss, train_stage
from .pointwise import QnnAffine, QnnLut
from .pools import MaxPoolUnit
from .units import IntUnit

# Units that belong to the stage of a neighbour (docs/method.md, "Stages"): an activation table,
# a max-pool or a channel gather joins the unit it reads; a pre-activation affine joins the unit it feeds.
JOIN_BEFORE = (QnnLut, MaxPoolUnit, ChannelsUnit)
JOIN_AFTER = (QnnAffine,)
_KINDS_BEFORE, _KINDS_AFTER = ("lut", "maxpool", "channels"), ("affine",)


def stages(qnn: GraphNet) -> list[list[str]]:
    """PTL stages of a network: runs of units between cut points. A unit is a cut point when it
    outputs codes and no edge jumps over it, so a residual block (its branch, shortcut and
    add) is one stage and its output, the add's codes, is the stage's target; in a chain
    every layer is its own stage (docs/method.md: layer-by-layer conversion). A layer's
    activation table, max-pool or channel gather stays in its stage, and a pre-activation
    affine goes with the layer it feeds."""
    units = qnn.units
    return _cut(list(units), qnn.inputs, {n for n, u in units.items() if getattr(u, "a_bits", None)},
                {n for n, u in units.items() if isinstance(u, JOIN_BEFORE)},
                {n for n, u in units.items() if isinstance(u, JOIN_AFTER)})


def stage_count(teacher: nn.Module) -> int:
    """How many PTL stages distilling ``teacher`` runs (:func:`stages` of its units)."""
    units = import_model(teacher)
    return len(_cut([u.name for u in units], {u.name: u.inputs for u in units}, {u.name for u in units if u.codes},
                    {u.name for u in units if u.kind in _KINDS_BEFORE},
                    {u.name for u in units if u.kind in _KINDS_AFTER}))


def _cut(names: list[str], inputs: dict[str, list[str]], codes: set[str], join_before: set[str] = frozenset(),
         join_after: set[str] = frozenset()) -> list[list[str]]:
    index = {n: i for i, n in enumerate(names)} | {"input": -1}
    edges = [(index[src], index[n]) for n in names for src in inputs[n]]
    readers = {n: [m for m in names if n in inputs[m]] for n in names}
    out, start = [], 0
    for i, n in enumerate(names):
        joined = n in join_after or (i + 1 < len(names) and names[i + 1] in join_before
                                     and readers[n] == [names[i + 1]])  # its one reader is the joining unit
        if i == len(names) - 1 or (n in codes and not joined and all(a == i for a, b in edges if a <= i < b)):
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
    qmax = 1.0 if final or getattr(out_unit, "a_bits", None) is None else \
        float(code_peak(out_unit.a_bits, out_unit.signed))

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
            init = init_unit(qnn.units[n], qnn.inputs[n], env, done, config, n == last_name)
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
