"""IntGraph: an integer network, nothing but integer arrays and (mult, shift) pairs.

An :class:`IntGraph` is a list of nodes in topological order: :class:`IntLayer`
(conv or fully connected, then requantization (E4) and an optional max-pool
(E7)), :class:`IntAdd` (a residual add with one multiplier per input, (E9)) and
:class:`IntAvgPool` ((E10)). A node reads the previous node's output unless it
names its ``inputs`` (``"input"`` is the network input). A conv/fc node without
``a_bits`` outputs its int32 accumulators: the last node's are the logits, and
any other's may only feed an add (a residual branch without a ReLU before the
sum). Building a graph checks every array's dtype, shape and range, the shapes
and bit widths along every edge, and proves node by node that no int32
accumulator (E6) and no int64 sum (E9) can overflow; a graph that fails is
refused with the node named.

File format (``save``/``load``): a ``.npz`` zip archive whose ``meta.json``
member holds the structure, ``ARITH_VERSION`` and a SHA-256 of every array, and
whose ``<layer>.<array>.npy`` members hold the arrays. Loading never unpickles
(``allow_pickle=False``) and refuses a wrong version, a missing or tampered
array, or out-of-range values, each with a one-line :class:`ModelFileError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import FiqnnError
from .arith import ARITH_VERSION, INT32_MAX, INT32_MIN, SHIFT_MAX, SHIFT_MIN, acc_bound, act_range, weight_range


class ModelFileError(FiqnnError):
    """A model file is unreadable, from another ARITH_VERSION, or tampered with."""


class OverflowProofError(FiqnnError):
    """A layer's int32 accumulator could overflow for some input (E6)."""


_ARRAYS = {"w_q": np.int8, "bias_q": np.int32, "mult": np.int32, "shift": np.int32}


# Node names come from model files, i.e. from strangers: one identifier, so that no name can
# carry a newline, a comment terminator or a path into a message, generated code or a zip member.
def _is_int(v: object) -> bool:
    """An integer that is not a bool (JSON's true and false would pass as 1 and 0)."""
    return isinstance(v, int) and not isinstance(v, bool)


MAX_DIM = 1 << 16  # the largest input channel count, height or width a model file may declare

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_name(name: object, what: str = "node") -> None:
    """Refuse a node name that is not an identifier of at most 64 characters (or is 'input')."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name == "input":
        shown = repr(name)[:40] + ("..." if len(repr(name)) > 40 else "")
        raise ModelFileError(f"{what} name {shown} is not an identifier of at most 64 characters "
                             "([A-Za-z_][A-Za-z0-9_]*, not 'input')")


@dataclass(frozen=True, eq=False)
class IntLayer:
    """One integer layer: ``acc = conv/fc(x_q, w_q) + bias_q`` (E2), then (E4) and (E7)."""

    ARRAYS = ("w_q", "bias_q", "mult", "shift")  # (not a field) the arrays a model file stores for it

    name: str
    kind: str  # "conv" | "fc"
    w_q: np.ndarray  # int8 (O, I/groups, kh, kw) or (O, I); W-bit codes
    bias_q: np.ndarray  # int32 (O,)
    mult: np.ndarray  # int32 (1,) per layer or (O,) per channel
    shift: np.ndarray  # int32, same shape as mult
    in_bits: int  # bits of the input codes (8 for the network input)
    w_bits: int
    a_bits: int | None  # output code bits; None: the last layer, whose acc are the logits
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    pool: tuple[int, int, int] | None = None  # max-pool (kernel, stride, padding)
    inputs: tuple[str, ...] = ()  # () = the previous node's output

    def __post_init__(self) -> None:
        def bad(msg: str) -> ModelFileError:
            return ModelFileError(f"layer {self.name}: {msg}")

        _check_names(self)
        if len(self.inputs) > 1:
            raise bad(f"a {self.kind} layer takes one input, got {list(self.inputs)}")
        if self.kind not in ("conv", "fc"):
            raise bad(f"unknown kind {self.kind!r}")
        _check_geometry(bad, stride=(self.stride, 1), dilation=(self.dilation, 1), padding=(self.padding, 0))
        if not (_is_int(self.groups) and self.groups >= 1):
            raise bad(f"groups must be a positive integer, got {self.groups!r}")
        if self.kind == "fc" and (self.stride, self.padding, self.dilation, self.groups) != ((1, 1), (0, 0), (1, 1), 1):
            raise bad("an fc layer has no stride, padding, dilation or groups (a file that says otherwise "
                      "describes a conv)")
        if self.pool is not None:
            if not (isinstance(self.pool, tuple) and len(self.pool) == 3
                    and all(_is_int(v) for v in self.pool)):
                raise bad(f"pool must be (kernel, stride, padding), got {self.pool!r}")
            k, s_, p_ = self.pool
            if k < 1 or s_ < 1 or not 0 <= 2 * p_ <= k:
                raise bad(f"max-pool window {self.pool} needs kernel >= 1, stride >= 1 and 0 <= padding <= kernel / 2")
            if self.a_bits is None:
                raise bad("a max-pool needs codes to pool: this layer outputs int32 accumulators")
        for key, dtype in _ARRAYS.items():
            a = getattr(self, key)
            if not isinstance(a, np.ndarray) or a.dtype != dtype:
                raise bad(f"{key} must be a {np.dtype(dtype).name} array")
        o = len(self.w_q)
        if self.w_q.ndim != (4 if self.kind == "conv" else 2) or self.w_q.size == 0:
            raise bad(f"w_q has shape {self.w_q.shape}")
        if self.kind == "conv" and any(p > d * (k - 1) for p, d, k in zip(self.padding, self.dilation,
                                                                            self.w_q.shape[2:])):
            raise bad(f"padding {self.padding} reaches past the (dilated) kernel: some outputs would see only "
                      "padding")
        if self.bias_q.shape != (o,) or self.mult.shape not in ((1,), (o,)) or self.shift.shape != self.mult.shape:
            raise bad(f"bias/mult/shift shapes {self.bias_q.shape}/{self.mult.shape}/{self.shift.shape} do not "
                      f"fit {o} output channels")
        for bits_name in ("in_bits", "w_bits") + (("a_bits",) if self.a_bits is not None else ()):
            b = getattr(self, bits_name)
            if not (_is_int(b) and 2 <= b <= 8):
                raise bad(f"{bits_name} must be in 2..8, got {b!r}")
        lo, hi = weight_range(self.w_bits)
        if self.w_q.min() < lo or self.w_q.max() > hi:
            raise bad(f"weights outside the {self.w_bits}-bit range [{lo}, {hi}]")
        if self.mult.min() < 1 or self.shift.min() < SHIFT_MIN or self.shift.max() > SHIFT_MAX:
            raise bad(f"mult must be positive and shift in [{SHIFT_MIN}, {SHIFT_MAX}]")
        # (E6): every partial sum of every accumulator fits int32, for every input.
        acc_lo, acc_hi = acc_bound(self.w_q, act_range(self.in_bits)[1], self.bias_q)
        over = max(int(acc_hi.max()) - INT32_MAX, INT32_MIN - int(acc_lo.min()))
        if over > 0:
            raise OverflowProofError(
                f"layer {self.name}: its int32 accumulator could overflow: bounds [{int(acc_lo.min())}, "
                f"{int(acc_hi.max())}] exceed int32 by {over} (about {np.log2(over + 1):.1f} bits of missing "
                "headroom); use fewer weight or activation bits, or a smaller bias")

    @property
    def out_channels(self) -> int:
        return len(self.w_q)

    def headroom_bits(self) -> float:
        """log2 of how far the (E6) bound stays inside int32."""
        lo, hi = acc_bound(self.w_q, act_range(self.in_bits)[1], self.bias_q)
        peak = max(int(hi.max()), -int(lo.min()), 1)
        return float(np.log2(2**31 / peak))

    def acc_bound(self) -> int:
        """max |acc| over all inputs, (E6)."""
        lo, hi = acc_bound(self.w_q, act_range(self.in_bits)[1], self.bias_q)
        return max(int(hi.max()), -int(lo.min()))

    def meta(self) -> dict:
        return {"name": self.name, "kind": self.kind, "in_bits": self.in_bits, "w_bits": self.w_bits,
                "a_bits": self.a_bits, "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups,
                "pool": list(self.pool) if self.pool else None, "inputs": list(self.inputs)}

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntLayer:
        return cls(name=m["name"], kind=m["kind"], in_bits=m["in_bits"], w_bits=m["w_bits"], a_bits=m["a_bits"],
                   stride=tuple(m["stride"]), padding=tuple(m["padding"]), dilation=tuple(m["dilation"]),
                   groups=m["groups"], pool=tuple(m["pool"]) if m["pool"] else None,
                   inputs=tuple(m.get("inputs", ())), **arrays)  # files from before residual graphs have no inputs

    def out_shape(self, ins: list[tuple[int, int, int]], srcs: list[Node | None], bad) -> tuple[int, int, int]:
        """The (C, H, W) output for input shape ``ins[0]`` (fc: (O, 1, 1)), checking the edge."""
        _check_codes_in(self, srcs[0], bad)
        c, h, w = ins[0]
        if self.kind == "fc":
            if self.w_q.shape[1] != c * h * w:
                raise bad(f"has {self.w_q.shape[1]} inputs but {_name(srcs[0])} gives {c}x{h}x{w}")
            return (self.out_channels, 1, 1)
        kh, kw = self.w_q.shape[2:]
        if self.w_q.shape[1] * self.groups != c or self.out_channels % self.groups:
            raise bad(f"weights {self.w_q.shape} with {self.groups} groups do not fit {c} input channels")
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        out = (self.out_channels, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
               (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
        if self.pool:
            k, s_, p_ = self.pool
            out = (out[0], (out[1] + 2 * p_ - k) // s_ + 1, (out[2] + 2 * p_ - k) // s_ + 1)
        return out


def _check_geometry(bad, **fields: tuple) -> None:
    """Each field a pair of integers no smaller than its minimum (stride and dilation 1, padding 0)."""
    for key, (value, low) in fields.items():
        if not (isinstance(value, tuple) and len(value) == 2 and all(_is_int(v) and v >= low for v in value)):
            raise bad(f"{key} must be two integers >= {low}, got {value!r}")


def _check_names(node) -> None:
    check_name(node.name)
    if not isinstance(node.inputs, tuple):
        raise ModelFileError(f"node {node.name}: inputs must be a list of names")
    for src in node.inputs:
        if src != "input":
            check_name(src, f"node {node.name}: input")


def _check_requant(name: str, mult: np.ndarray, shift: np.ndarray, n_mult: int, a_bits) -> None:
    for key, a in (("mult", mult), ("shift", shift)):
        if not isinstance(a, np.ndarray) or a.dtype != np.int32:
            raise ModelFileError(f"node {name}: {key} must be an int32 array")
    if mult.shape != (n_mult,) or shift.shape != (1,):
        raise ModelFileError(f"node {name}: mult/shift shapes {mult.shape}/{shift.shape}, expected ({n_mult},)/(1,)")
    if mult.min() < 1 or not SHIFT_MIN <= int(shift[0]) <= SHIFT_MAX:
        raise ModelFileError(f"node {name}: mult must be positive and shift in [{SHIFT_MIN}, {SHIFT_MAX}]")
    if not (_is_int(a_bits) and 2 <= a_bits <= 8):
        raise ModelFileError(f"node {name}: a_bits must be in 2..8, got {a_bits!r}")


@dataclass(frozen=True, eq=False)
class IntAdd:
    """(E9) Residual add: ``y = clamp(rshift_round(sum_i v_i * mult[i], shift), 0, 2^A - 1)``,
    each input ``v_i`` uint8 codes or int32 accumulators, the sum in int64."""

    ARRAYS = ("mult", "shift")

    name: str
    inputs: tuple[str, ...]  # two or more earlier nodes (or "input")
    mult: np.ndarray  # int32 (len(inputs),)
    shift: np.ndarray  # int32 (1,)
    a_bits: int
    kind: str = "add"

    def __post_init__(self) -> None:
        _check_names(self)
        if self.kind != "add" or len(self.inputs) < 2:
            raise ModelFileError(f"node {self.name}: an add takes two or more inputs, got {list(self.inputs)}")
        _check_requant(self.name, self.mult, self.shift, len(self.inputs), self.a_bits)

    def meta(self) -> dict:
        return {"name": self.name, "kind": "add", "inputs": list(self.inputs), "a_bits": self.a_bits}

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntAdd:
        return cls(name=m["name"], inputs=tuple(m.get("inputs", ())), a_bits=m["a_bits"], **arrays)

    def out_shape(self, ins: list[tuple[int, int, int]], srcs: list[Node | None], bad) -> tuple[int, int, int]:
        """The inputs' common shape; (E9) proven: the int64 sum stays below 2^62 for every input."""
        if any(shape != ins[0] for shape in ins):
            raise bad(f"adds tensors of different shapes {ins}")
        total = 0
        for src, m in zip(srcs, self.mult):
            b = out_bits(src)
            total += int(m) * (act_range(b)[1] if b is not None else src.acc_bound())
        if total >= 2**62:
            raise OverflowProofError(f"node {self.name}: its int64 sum could reach {total} >= 2^62 (E9)")
        return ins[0]


@dataclass(frozen=True, eq=False)
class IntAvgPool:
    """(E10) Average pool: window sums of codes (zero padding counts), then
    ``clamp(rshift_round(sum * mult, shift), 0, 2^A - 1)``; mult / 2^shift ~ 1 / (kh * kw)
    times the ratio of input to output scale."""

    ARRAYS = ("mult", "shift")

    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    mult: np.ndarray  # int32 (1,)
    shift: np.ndarray  # int32 (1,)
    in_bits: int
    a_bits: int
    inputs: tuple[str, ...] = ()
    kind: str = "avgpool"

    def __post_init__(self) -> None:
        _check_names(self)
        if self.kind != "avgpool" or len(self.inputs) > 1:
            raise ModelFileError(f"node {self.name}: an avgpool takes one input")
        _check_geometry(lambda msg: ModelFileError(f"node {self.name}: {msg}"), kernel=(self.kernel, 1),
                        stride=(self.stride, 1), padding=(self.padding, 0))
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise ModelFileError(f"node {self.name}: padding {self.padding} is more than half the window {self.kernel}")
        _check_requant(self.name, self.mult, self.shift, 1, self.a_bits)
        if not (_is_int(self.in_bits) and 2 <= self.in_bits <= 8):
            raise ModelFileError(f"node {self.name}: in_bits must be in 2..8, got {self.in_bits!r}")
        if act_range(self.in_bits)[1] * self.kernel[0] * self.kernel[1] * int(self.mult[0]) >= 2**62:
            raise OverflowProofError(f"node {self.name}: window sum * mult could leave the (E3) range")

    def meta(self) -> dict:
        return {"name": self.name, "kind": "avgpool", "kernel": list(self.kernel), "stride": list(self.stride),
                "padding": list(self.padding), "in_bits": self.in_bits, "a_bits": self.a_bits,
                "inputs": list(self.inputs)}

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntAvgPool:
        return cls(name=m["name"], kernel=tuple(m["kernel"]), stride=tuple(m["stride"]), padding=tuple(m["padding"]),
                   in_bits=m["in_bits"], a_bits=m["a_bits"], inputs=tuple(m.get("inputs", ())), **arrays)

    def out_shape(self, ins: list[tuple[int, int, int]], srcs: list[Node | None], bad) -> tuple[int, int, int]:
        _check_codes_in(self, srcs[0], bad)
        c, h, w = ins[0]
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)


Node = IntLayer | IntAdd | IntAvgPool
# A node's kind in a model file -> its class: each class checks its own fields on construction,
# reads itself from a file (from_meta, ARRAYS) and gives its output shape (out_shape).
NODES: dict[str, type] = {"conv": IntLayer, "fc": IntLayer, "add": IntAdd, "avgpool": IntAvgPool}


def _name(node: Node | None) -> str:
    return "input" if node is None else node.name


def _check_codes_in(node: Node, src: Node | None, bad) -> None:
    """A node that reads codes: its input must be codes of its ``in_bits``."""
    b = out_bits(src)
    if b is None:
        raise bad(f"reads the int32 accumulators of {_name(src)}; only an add may")
    if b != node.in_bits:
        raise bad(f"takes {node.in_bits}-bit codes but {_name(src)} makes {b}-bit ones")


@dataclass(frozen=True, eq=False)
class IntGraph:
    """A whole integer network: uint8 input of ``in_shape`` (C, H, W) -> int32 logits.

    ``layers`` are the nodes in topological order (the name is historical: most are layers).
    """

    in_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[Node, ...]
    arith_version: int = ARITH_VERSION
    info: dict = field(default_factory=dict)  # free-form provenance (method, bits, ...); JSON values only

    def __post_init__(self) -> None:
        if self.arith_version != ARITH_VERSION:
            raise ModelFileError(f"model uses ARITH_VERSION {self.arith_version}, this fiqnn implements "
                                 f"{ARITH_VERSION}; re-export the model with this version")
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
    return 8 if node is None else node.a_bits


def node_shapes(graph: IntGraph) -> dict[str, tuple[int, int, int]]:
    """The (C, H, W) output shape of every node (fc: (O, 1, 1)), checking every edge:
    names defined before use, matching channels, shapes and bits; (E9) proven for adds."""
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
