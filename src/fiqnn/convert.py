"""Student -> IntGraph: the one step where the float training world meets the integer one.

The integers come from :meth:`fiqnn.layers.IntUnit.integer_params`, the same
method the student's eval mode computes with, so the graph and the eval-mode
student cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from .graph import IntGraph, IntLayer
from .layers import Student


def convert(student, info: dict | None = None) -> IntGraph:
    """The integer graph of a trained student (refused if any layer could overflow int32).

    Args:
        student: the BN-free student returned by :func:`fiqnn.distill` (a chain
            :class:`~fiqnn.layers.Student`, or a :class:`fiqnn.dag.GraphNet` for residual networks).
        info: provenance stored in the model file (method, bits, accuracy, ...).
    """
    if not isinstance(student, Student):
        from . import dag

        return dag.convert(student, student.in_shape, student.num_classes, info)
    layers = []
    was_training = student.training
    student.eval()
    for name, unit in zip(student.names, student.units):
        p = unit.integer_params()
        g = unit.geometry
        layers.append(IntLayer(
            name=name, kind=g.kind, w_q=p["w_q"].numpy().astype(np.int8), bias_q=p["bias_q"].numpy().astype(np.int32),
            mult=p["mult"].numpy().astype(np.int32), shift=p["shift"].numpy().astype(np.int32),
            in_bits=unit.in_bits, w_bits=unit.w_bits, a_bits=unit.a_bits, stride=tuple(g.stride),
            padding=tuple(g.padding), dilation=tuple(g.dilation), groups=g.groups, pool=g.pool))
    student.train(was_training)
    return IntGraph(tuple(student.in_shape), student.num_classes, tuple(layers), info=dict(info or {}))
