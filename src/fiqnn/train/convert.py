"""Student -> IntGraph: the one step where the float training world meets the integer one.

The integers come from each unit's ``integer_params()`` (:meth:`fiqnn.train.units.IntUnit.integer_params`
and the add and average-pool units of :mod:`fiqnn.train.units`), the same method the student's eval
mode computes with, so the graph and the eval-mode student cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from ..integer.graph import IntAdd, IntAvgPool, IntGraph, IntLayer
from .graphnet import GraphNet
from .units import IntAddUnit, IntUnit


def convert(student: GraphNet, info: dict | None = None) -> IntGraph:
    """The integer graph of a trained student (refused if any layer could overflow int32).

    Args:
        student: the BN-free student returned by :func:`fiqnn.distill`.
        info: provenance stored in the model file (method, bits, accuracy, ...).

    A node that reads the node before it (the network input, for the first) names no inputs,
    as IntGraph reads it; the others name theirs.
    """
    nodes, previous = [], "input"
    was_training = student.training
    student.eval()
    for name, u in student.units.items():
        inputs = tuple(student.inputs[name])
        inputs, previous = (() if inputs == (previous,) else inputs), name
        p = u.integer_params()
        mult, shift = p["mult"].numpy().astype(np.int32), p["shift"].numpy().astype(np.int32)
        if isinstance(u, IntUnit):
            g = u.geometry
            nodes.append(IntLayer(
                name=name, kind=g.kind, w_q=p["w_q"].numpy().astype(np.int8),
                bias_q=p["bias_q"].numpy().astype(np.int32), mult=mult, shift=shift, in_bits=u.in_bits,
                w_bits=u.w_bits, a_bits=u.a_bits, stride=tuple(g.stride), padding=tuple(g.padding),
                dilation=tuple(g.dilation), groups=g.groups, pool=g.pool, inputs=inputs))
        elif isinstance(u, IntAddUnit):
            nodes.append(IntAdd(name=name, inputs=tuple(student.inputs[name]), mult=mult, shift=shift,
                                a_bits=u.a_bits))
        else:
            k, s, pd = u.window
            nodes.append(IntAvgPool(name=name, kernel=tuple(k), stride=tuple(s), padding=tuple(pd), mult=mult,
                                    shift=shift, in_bits=u.in_bits, a_bits=u.a_bits, inputs=inputs))
    student.train(was_training)
    return IntGraph(tuple(student.in_shape), student.num_classes, tuple(nodes), info=dict(info or {}))
