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

import hashlib
import io
import json
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _io
from .arith import (
    ARITH_VERSION,
    INT32_MAX,
    INT32_MIN,
    SHIFT_MAX,
    SHIFT_MIN,
    acc_bound,
    act_range,
    weight_range,
)
from .errors import FiqnnError


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


def _arrays_of(kind: str) -> tuple[str, ...]:
    return tuple(_ARRAYS) if kind in ("conv", "fc") else ("mult", "shift")


@dataclass(frozen=True, eq=False)
class IntLayer:
    """One integer layer: ``acc = conv/fc(x_q, w_q) + bias_q`` (E2), then (E4) and (E7)."""

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


@dataclass(frozen=True, eq=False)
class IntAvgPool:
    """(E10) Average pool: window sums of codes (zero padding counts), then
    ``clamp(rshift_round(sum * mult, shift), 0, 2^A - 1)``; mult / 2^shift ~ 1 / (kh * kw)
    times the ratio of input to output scale."""

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


Node = IntLayer | IntAdd | IntAvgPool


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
        ins = [shapes[src] for src in srcs]
        if isinstance(node, IntAdd):
            if any(shape != ins[0] for shape in ins):
                raise bad(f"adds tensors of different shapes {ins}")
            total = 0
            for src, m in zip(srcs, node.mult):
                b = out_bits(nodes[src])
                total += int(m) * (act_range(b)[1] if b is not None else nodes[src].acc_bound())
            if total >= 2**62:
                raise OverflowProofError(f"node {node.name}: its int64 sum could reach {total} >= 2^62 (E9)")
            out = ins[0]
        else:
            b = out_bits(nodes[srcs[0]])
            if b is None:
                raise bad(f"reads the int32 accumulators of {srcs[0]}; only an add may")
            if b != node.in_bits:
                raise bad(f"takes {node.in_bits}-bit codes but {srcs[0]} makes {b}-bit ones")
            c, h, w = ins[0]
            if isinstance(node, IntAvgPool):
                (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
                out = (c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
            elif node.kind == "fc":
                if node.w_q.shape[1] != c * h * w:
                    raise bad(f"has {node.w_q.shape[1]} inputs but {srcs[0]} gives {c}x{h}x{w}")
                out = (node.out_channels, 1, 1)
            else:
                kh, kw = node.w_q.shape[2:]
                if node.w_q.shape[1] * node.groups != c or node.out_channels % node.groups:
                    raise bad(f"weights {node.w_q.shape} with {node.groups} groups do not fit {c} input channels")
                (sh, sw), (ph, pw), (dh, dw) = node.stride, node.padding, node.dilation
                out = (node.out_channels, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                       (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
                if node.pool:
                    k, s_, p_ = node.pool
                    out = (out[0], (out[1] + 2 * p_ - k) // s_ + 1, (out[2] + 2 * p_ - k) // s_ + 1)
            if min(out) < 1:
                raise bad(f"its output would be empty ({out}) for input {ins[0]}")
        shapes[node.name], nodes[node.name] = out, node
        if isinstance(node, IntLayer) and node.a_bits is None and node is not graph.layers[-1]:
            if any(not isinstance(n, IntAdd) for n in readers.get(node.name, [])):
                raise bad("its int32 accumulators may only feed an add")
    del shapes["input"]
    return shapes


def _member(name: str) -> zipfile.ZipInfo:
    """A zip member with a fixed timestamp: the same graph always gives the same bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def save(graph: IntGraph, path: str | os.PathLike) -> None:
    """Write ``graph`` to ``path`` (a .npz archive, see module doc), atomically."""
    buf = io.BytesIO()
    meta = {"format": "fiqnn-intgraph", "arith_version": graph.arith_version, "in_shape": list(graph.in_shape),
            "num_classes": graph.num_classes, "info": graph.info, "layers": [], "sha256": {}}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for layer in graph.layers:
            meta["layers"].append(layer.meta())
            for key in _arrays_of(layer.kind):
                member = f"{layer.name}.{key}.npy"
                arr_buf = io.BytesIO()
                np.lib.format.write_array(arr_buf, np.ascontiguousarray(getattr(layer, key)), allow_pickle=False)
                data = arr_buf.getvalue()
                meta["sha256"][member] = hashlib.sha256(data).hexdigest()
                z.writestr(_member(member), data)
        z.writestr(_member("meta.json"), json.dumps(meta, indent=1))
    _io.write_bytes(path, buf.getvalue())


# A model file's arrays are int8 codes and int32 parameters; deflate shrinks real ones by well
# under 8x, so members that unpack to more than 64x the file's size are a zip bomb, not a model.
UNPACK_RATIO = 64
_MEMBER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]{0,127}")  # a plain name: no '/', '\\' or drive


def _zip_members(z: zipfile.ZipFile, path: Path, max_bytes: int | None) -> None:
    """Refuse, from the zip's directory alone (before anything is unpacked), members that are not
    plain file names (path traversal, directories), repeated names, and declared sizes that add
    up to more than ``max_bytes`` (default ``UNPACK_RATIO`` times the file's size, at least 1 MiB)."""
    infos = z.infolist()
    names = [i.filename for i in infos]
    for name in names:
        if not _MEMBER.fullmatch(name):
            raise ModelFileError(f"{path}: zip member {name[:60]!r} is not a plain file name (a path or a "
                                 "directory); refusing the file")
    if len(set(names)) != len(names):
        raise ModelFileError(f"{path}: a zip member name appears twice; refusing the file")
    limit = max_bytes if max_bytes is not None else max(UNPACK_RATIO * path.stat().st_size, 1 << 20)
    total = sum(i.file_size for i in infos)
    if total > limit:
        raise ModelFileError(f"{path}: its members would unpack to {total:,} bytes, more than the limit of "
                             f"{limit:,} ({UNPACK_RATIO}x the file's size unless max_bytes says otherwise); "
                             "a zip bomb, or not a fiqnn model file")


class _Hashed:
    """A zip member read through SHA-256, counting what it has read."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.sha.update(data)
        self.n += len(data)
        return data


def _read_array(z: zipfile.ZipFile, member: str, dtype: type, sha256: object) -> np.ndarray:
    """An .npy member, streamed: its header is checked before any array exists (the dtype fiqnn
    expects, and a shape whose size is exactly the bytes the zip directory says follow it, so no
    header can make this allocate more than the member holds); then the codes are read in chunks
    straight into the array, and the member's SHA-256 compared with ``sha256``."""
    info = z.getinfo(member)
    tampered = ModelFileError(f"array {member} does not match its checksum (tampered or corrupt)")
    with z.open(info) as raw:
        f = _Hashed(raw)
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, got = read_header(f)
            if got != np.dtype(dtype) or fortran or not all(_is_int(d) and d >= 0 for d in shape):
                raise ModelFileError(f"array {member} is {got}{list(shape)}, expected a C-ordered "
                                     f"{np.dtype(dtype).name} array")
            count = 1
            for d in shape:
                count *= d
            if count * got.itemsize != info.file_size - f.n:
                declared, held = count * got.itemsize, info.file_size - f.n
                raise ModelFileError(f"array {member}: its header declares shape {list(shape)} ({declared:,} "
                                     f"bytes) but the member holds {held:,} bytes")
        except (ModelFileError, ValueError) as e:  # a bad header: "tampered" if the bytes are not the saved ones
            while f.read(1 << 16):
                pass
            raise (tampered if f.sha.hexdigest() != sha256 else e) from None
        out = np.empty(count, got)
        view = memoryview(out).cast("B")
        at = 0
        while at < len(view):
            chunk = f.read(min(len(view) - at, 1 << 16))
            if not chunk:
                raise ModelFileError(f"array {member} is truncated")
            view[at:at + len(chunk)] = chunk
            at += len(chunk)
        if f.sha.hexdigest() != sha256:
            raise tampered
    out = out.reshape(shape)
    out.flags.writeable = False  # the graph is frozen, and so are its arrays
    return out


def load(path: str | os.PathLike, *, max_bytes: int | None = None) -> IntGraph:
    """Read a model file written by :func:`save`; never unpickles.

    Model files come from strangers, so the zip directory, every array header and every size is
    checked before anything is unpacked (``_zip_members``, ``_read_array``): nothing a file
    declares makes this allocate more than ``max_bytes`` (default ``UNPACK_RATIO`` times the file's
    size), and a refused file costs no more memory than its headers.

    Raises:
        ModelFileError: missing, unreadable, wrong version, tampered, out-of-range or oversized.
        OverflowProofError: the layers fail the (E6) proof.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            _zip_members(z, path, max_bytes)
            meta = json.loads(z.read("meta.json"))
            if not isinstance(meta, dict) or meta.get("format") != "fiqnn-intgraph":
                raise ModelFileError(f"{path} is not a fiqnn model file")
            version = meta.get("arith_version")
            if version != ARITH_VERSION:
                raise ModelFileError(f"{path} was written for ARITH_VERSION {version}; this fiqnn implements "
                                     f"{ARITH_VERSION}: re-export it with this version")
            layers = []
            for m in meta["layers"]:
                check_name(m["name"])
                arrays = {}
                for key in _arrays_of(m["kind"]):
                    member = f"{m['name']}.{key}.npy"
                    arrays[key] = _read_array(z, member, _ARRAYS[key], meta["sha256"].get(member))
                inputs = tuple(m.get("inputs", ()))  # files from before residual graphs have none
                if m["kind"] == "add":
                    layers.append(IntAdd(name=m["name"], inputs=inputs, a_bits=m["a_bits"], **arrays))
                elif m["kind"] == "avgpool":
                    layers.append(IntAvgPool(name=m["name"], kernel=tuple(m["kernel"]), stride=tuple(m["stride"]),
                                             padding=tuple(m["padding"]), in_bits=m["in_bits"],
                                             a_bits=m["a_bits"], inputs=inputs, **arrays))
                else:
                    layers.append(IntLayer(
                        name=m["name"], kind=m["kind"], in_bits=m["in_bits"], w_bits=m["w_bits"],
                        a_bits=m["a_bits"], stride=tuple(m["stride"]), padding=tuple(m["padding"]),
                        dilation=tuple(m["dilation"]), groups=m["groups"],
                        pool=tuple(m["pool"]) if m["pool"] else None, inputs=inputs, **arrays))
            return IntGraph(tuple(meta["in_shape"]), meta["num_classes"], tuple(layers), version,
                            meta.get("info", {}))
    except FileNotFoundError:
        raise ModelFileError(f"{path} not found") from None
    except FiqnnError as e:
        if str(path) in str(e):
            raise
        raise type(e)(f"{path}: {e}") from None
    except (OSError, zipfile.BadZipFile, zlib.error, KeyError, ValueError, TypeError, AttributeError, EOFError,
            OverflowError, struct.error, NotImplementedError, RuntimeError, MemoryError) as e:
        # Everything zipfile, json and numpy raise on malformed bytes (RuntimeError: an
        # "encrypted" flag; NotImplementedError: an unsupported zip feature).
        raise ModelFileError(f"{path} is not a readable fiqnn model file ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


def layer_summary(layer: Node) -> dict:
    """One node's shape, bits, (mult, shift) range, (E6) accumulator bound and headroom, and array dtypes."""
    def span(a) -> str:
        return str(int(a.min())) if a.min() == a.max() else f"{int(a.min())}..{int(a.max())}"

    row = {"name": layer.name, "kind": layer.kind, "a_bits": layer.a_bits, "mult": span(layer.mult),
           "shift": span(layer.shift), "inputs": list(layer.inputs)}
    if not isinstance(layer, IntLayer):
        window = "x".join(map(str, layer.kernel)) if isinstance(layer, IntAvgPool) else f"{len(layer.inputs)} inputs"
        return {**row, "shape": [window], "in_bits": getattr(layer, "in_bits", "-"), "w_bits": "-",
                "acc_bound": "-", "headroom_bits": float("nan"), "pool": None,
                "dtypes": {k: str(getattr(layer, k).dtype) for k in ("mult", "shift")}}
    lo, hi = acc_bound(layer.w_q, act_range(layer.in_bits)[1], layer.bias_q)
    return {**row, "shape": list(layer.w_q.shape), "in_bits": layer.in_bits, "w_bits": layer.w_bits,
            "acc_bound": f"[{int(lo.min())}, {int(hi.max())}]", "headroom_bits": layer.headroom_bits(),
            "pool": layer.pool, "dtypes": {k: str(getattr(layer, k).dtype) for k in _ARRAYS}}
