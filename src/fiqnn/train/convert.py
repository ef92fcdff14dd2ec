"""Student -> IntGraph: the one step where the float training world meets the integer one.

Each student unit makes its own node (``to_node``, :mod:`fiqnn.train.blocks`) from its
``integer_params()``, the integers its eval mode computes with, so the graph and the
eval-mode student cannot drift apart.
"""

from __future__ import annotations

from ..integer.graph import IntGraph
from .graphnet import GraphNet


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
        nodes.append(u.to_node(name, inputs))
    student.train(was_training)
    return IntGraph(tuple(student.in_shape), student.num_classes, tuple(nodes), info=dict(info or {}))
