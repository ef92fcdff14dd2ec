"""IntGraph: an integer network, nothing but integer arrays and (mult, shift) pairs.

An :class:`IntGraph` is a list of nodes (:mod:`fiqnn.integer.nodes`: conv/fc layers, adds,
pools, lookup tables, multiplies, concatenations, channel gathers, channel affines) in
topological order. A node reads the previous node's output unless it names its ``inputs``
(``"input"`` is the network input). A conv/fc node without ``a_bits`` outputs its int32
accumulators: the last node's are the logits, and any other's may only feed an add (a
residual branch without a ReLU before the sum). Building a graph checks every array's
dtype, shape and range, the shapes and code kinds along every edge, and proves node by node
that no int32 accumulator (E6) and no int64 sum can overflow; a graph that fails is
refused with the node named.

File format (:mod:`fiqnn.integer.modelfile`): a ``.npz`` zip archive whose ``meta.json``
member holds the structure, ``ARITH_VERSION`` and a SHA-256 of every array, and whose
``<node>.<array>.npy`` members hold the arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .arith import ARITH_VERSION, READS
from .nodes import (  # noqa: F401  (re-exported: the graph's vocabulary)
    ARRAY_DTYPES,
    MAX_DIM,
    NODES,
    Code,
    IntAdd,
    IntAffine,
    IntAvgPool,
    IntChannels,
    IntConcat,
    IntLayer,
    IntLut,
    IntMaxPool,
    IntMul,
    ModelFileError,
    Node,
    OverflowProofError,
    _is_int,
    check_name,
    code_of,
    describe,
    name_of,
)


@dataclass(frozen=True, eq=False)
class IntGraph:
    """A whole integer network: uint8 input of ``in_shape`` (C, H, W) -> int32 logits.

    ``layers`` are the nodes in topological order (the name is historical: most are layers).
    ``arith_version`` is the contract the graph is written against: by default the lowest that
    holds it (1 unless a node uses a version-2 feature, 3 for (E4d) double rounding), so that a
    file an older fiqnn can compute is one it can read.
    """

    in_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[Node, ...]
    arith_version: int | None = None
    info: dict = field(default_factory=dict)  # free-form provenance (method, bits, ...); JSON values only

    def __post_init__(self) -> None:
        needed = max((node.min_version() for node in self.layers), default=1)
        if self.arith_version is None:
            object.__setattr__(self, "arith_version", needed)
        if self.arith_version not in READS:
            raise ModelFileError(f"model uses ARITH_VERSION {self.arith_version}, this fiqnn implements "
                                 f"{ARITH_VERSION} (and reads {', '.join(map(str, READS))}); re-export the model "
                                 "with this version")
        if self.arith_version < needed:
            first = next(node for node in self.layers if node.min_version() > self.arith_version)
            what = "double rounding (E4d)" if first.min_version() == 3 else "signed codes or a node"
            raise ModelFileError(f"node {first.name} uses {what} of ARITH_VERSION {first.min_version()}, but the "
                                 f"model declares version {self.arith_version}")
        if not (isinstance(self.in_shape, tuple) and len(self.in_shape) == 3
                and all(_is_int(v) and 1 <= v <= MAX_DIM for v in self.in_shape)):
            raise ModelFileError(f"the input shape must be three integers (C, H, W) in 1..{MAX_DIM}, got "
                                 f"{repr(self.in_shape)[:60]}")
        if not (_is_int(self.num_classes) and self.num_classes >= 1):
            raise ModelFileError(f"num_classes must be a positive integer, got {repr(self.num_classes)[:40]}")
        if not isinstance(self.info, dict):
            raise ModelFileError("info must be a JSON object")
        last = self.layers[-1] if self.layers else None
        if not isinstance(last, IntLayer) or last.a_bits is not None:
            raise ModelFileError("the last node must be a conv or fc layer producing logits (a_bits None)")
        if last.out_channels != self.num_classes:
            raise ModelFileError(f"last layer has {last.out_channels} outputs, not {self.num_classes}")
        sources = {node.name: node.inputs or ((self.layers[i - 1].name,) if i else ("input",))
                   for i, node in enumerate(self.layers)}
        object.__setattr__(self, "_sources", sources)  # derived once; the graph is frozen
        shapes = node_shapes(self)  # checks names, edges, shapes and bits
        if shapes[last.name][1:] != (1, 1):
            raise ModelFileError(f"the logits layer {last.name} must have a 1x1 output, got {shapes[last.name]}")
        used = {src for node in self.layers for src in self.sources(node)}
        for node in self.layers[:-1]:
            if node.name not in used:
                raise ModelFileError(f"node {node.name} is never used")

    def sources(self, node: Node) -> tuple[str, ...]:
        """The names a node reads: its ``inputs``, or the previous node (``"input"`` for the first)."""
        return self._sources[node.name]

    def int_layers(self) -> list[IntLayer]:
        """The conv and fc layers (the nodes with weights)."""
        return [n for n in self.layers if isinstance(n, IntLayer)]


def out_bits(node: Node | None) -> int | None:
    """Bits of a node's output codes; None for int32 accumulators; 8 for the network input."""
    code = code_of(node)
    return None if code is None else code[0]


def node_shapes(graph: IntGraph) -> dict[str, tuple[int, int, int]]:
    """The (C, H, W) output shape of every node (fc: (O, 1, 1)), checking every edge:
    names defined before use, matching channels, shapes and code kinds; (E9) proven for adds."""
    shapes: dict[str, tuple[int, int, int]] = {"input": tuple(graph.in_shape)}
    nodes: dict[str, Node | None] = {"input": None}
    readers: dict[str, list[Node]] = {}
    for n in graph.layers:
        for src in graph.sources(n):
            readers.setdefault(src, []).append(n)
    for node in graph.layers:
        def bad(msg: str, name: str = node.name) -> ModelFileError:
            return ModelFileError(f"node {name}: {msg}")

        if node.name in nodes:
            raise bad("the name is used twice (or is 'input')")
        srcs = graph.sources(node)
        for src in srcs:
            if src not in nodes:
                raise bad(f"reads {src!r}, which is not an earlier node")
        out = node.out_shape([shapes[src] for src in srcs], [nodes[src] for src in srcs], bad)
        if min(out) < 1:
            raise bad(f"its output would be empty ({out}) for input {shapes[srcs[0]]}")
        shapes[node.name], nodes[node.name] = out, node
        if isinstance(node, IntLayer) and node.a_bits is None and node is not graph.layers[-1]:
            if any(not isinstance(n, IntAdd) for n in readers.get(node.name, [])):
                raise bad("its int32 accumulators may only feed an add")
    del shapes["input"]
    return shapes
