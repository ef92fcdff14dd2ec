"""GraphNet: the network form of every teacher QNN, student and hybrid that distill trains.

A :class:`GraphNet` runs code-domain units (:mod:`fiqnn.train.units`) wired by name, in
topological order, on the outputs of the units each one names (``"input"`` is the network
input). A chain of layers is a GraphNet in which every unit reads the one before; a residual
network's adds read two. :meth:`GraphNet.spec` describes a student in plain JSON values, so
a saved student loads without the teacher it came from.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .blocks import STUDENTS


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
        units = [{"name": name, "inputs": self.inputs[name], "type": u.spec_type, **u.spec_fields()}
                 for name, u in self.units.items()]
        return {"graph": True, "in_shape": list(self.in_shape), "num_classes": self.num_classes, "units": units}

    @staticmethod
    def from_spec(spec: dict) -> GraphNet:
        """The (untrained) student ``spec`` describes; the chain specs of older student files
        (units with no type and no inputs, each reading the one before) load too."""
        built, previous = [], "input"
        for d in spec["units"]:
            d = {"type": "int", "inputs": [previous], "raw": False, **d}
            previous = d["name"]
            built.append((d["name"], STUDENTS[d["type"]].from_fields(d), d["inputs"]))
        net = GraphNet(built)
        net.in_shape, net.num_classes = tuple(spec["in_shape"]), spec["num_classes"]
        return net


def indexed_form(state: dict[str, torch.Tensor]) -> bool:
    """A state dict of older chain checkpoints: units under ``units.<i>.``, not ``units.<name>.``."""
    return any(k.startswith("units.0.") for k in state)


def upgrade_state(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """A state dict of a network with units ``names``, from either form fiqnn has saved: a
    GraphNet's (``units.<name>.``) or the unit list of older chain checkpoints (``units.<i>.``)."""
    if not indexed_form(state):
        return state
    out = {}
    for k, v in state.items():
        head, i, rest = k.split(".", 2) if k.count(".") >= 2 else (k, "", "")
        out[f"{head}.{names[int(i)]}.{rest}" if head == "units" and i.isdigit() and int(i) < len(names) else k] = v
    return out
