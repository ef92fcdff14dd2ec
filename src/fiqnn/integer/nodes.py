"""The nodes of an IntGraph: integer arrays, (mult, shift) pairs and geometry, nothing else.

One frozen dataclass per op of docs/arithmetic.md. Each checks its own fields on
construction (dtypes, shapes, ranges, and the overflow proof that needs nothing but its own
numbers), names the arrays a model file stores for it (``ARRAYS``), reads itself from a file
(``meta`` / ``from_meta``) and gives its output shape and code kind from its inputs'
(``out_shape``), checking the edges. A node's output is codes (``a_bits``, ``signed``) or,
for a conv/fc layer without ``a_bits``, int32 accumulators.

==========  ==============================================================  ==========
kind        computes                                                        equation
==========  ==============================================================  ==========
conv, fc    accumulate, requantize [, fused max-pool]                       (E2)-(E7)
add         sum of codes / accumulators, one multiplier each                (E9)
avgpool     window sums, one pair per divisor                               (E10)
maxpool     window maxima                                                   (E7)
lut         elementwise function as a table of output codes                 (E11)
mul         codes x codes (a squeeze-excite gate), one requantization       (E12)
concat      channel concatenation, each input requantized                   (E13)
channels    channel gather: split, shuffle                                  (E14)
affine      per-channel multiplier and offset (a pre-activation BN + ReLU)   (E15)
==========  ==============================================================  ==========

Version-2 features (signed codes, the nodes after avgpool, the pooling variants) report
themselves through ``needs_v2`` so that a file declaring ARITH_VERSION 1 cannot use them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import FiqnnError
from .arith import INT32_MAX, INT32_MIN, ROUNDINGS, SHIFT_MAX, SHIFT_MIN, acc_bound, code_peak, code_range, weight_range


class ModelFileError(FiqnnError):
    """A model file is unreadable, from another ARITH_VERSION, or tampered with."""


class OverflowProofError(FiqnnError):
    """A layer's int32 accumulator could overflow for some input (E6)."""


# The dtype of every array a model file may hold, by its name.
ARRAY_DTYPES = {"w_q": np.int8, "bias_q": np.int32, "mult": np.int32, "shift": np.int32, "table": np.int16,
                "index": np.int32, "offset": np.int64}


def _is_int(v: object) -> bool:
    """An integer that is not a bool (JSON's true and false would pass as 1 and 0)."""
    return isinstance(v, int) and not isinstance(v, bool)


MULT_LIMIT = 2**31 - 1  # the largest |mult| (int32, and symmetric)
MAX_DIM = 1 << 16  # the largest input channel count, height or width a model file may declare

# Node names come from model files, i.e. from strangers: one identifier, so that no name can
# carry a newline, a comment terminator or a path into a message, generated code or a zip member.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

Shape = tuple[int, int, int]
Code = tuple[int, bool] | None  # a tensor's (bits, signed), or None for int32 accumulators
INPUT_CODE: Code = (8, False)  # the network input: uint8 pixel codes


def check_name(name: object, what: str = "node") -> None:
    """Refuse a node name that is not an identifier of at most 64 characters (or is 'input')."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name == "input":
        shown = repr(name)[:40] + ("..." if len(repr(name)) > 40 else "")
        raise ModelFileError(f"{what} name {shown} is not an identifier of at most 64 characters "
                             "([A-Za-z_][A-Za-z0-9_]*, not 'input')")


class _Node:
    """What every node shares: its name and inputs checked, errors that name it, its code kind."""

    ARRAYS: tuple[str, ...] = ()
    WHAT = "node"  # how messages name it

    def _bad(self, msg: str) -> ModelFileError:
        return ModelFileError(f"{self.WHAT} {self.name}: {msg}")

    def _check_common(self, n_inputs: tuple[int, int | None]) -> None:
        check_name(self.name)
        if not isinstance(self.inputs, tuple):
            raise ModelFileError(f"node {self.name}: inputs must be a list of names")
        for src in self.inputs:
            if src != "input":
                check_name(src, f"node {self.name}: input")
        lo, hi = n_inputs
        n = len(self.inputs) or 1  # () reads the previous node
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
            raise self._bad(f"a {self.kind} takes {want} inputs, got {list(self.inputs)}")
        for key in self.ARRAYS:
            a, dtype = getattr(self, key), ARRAY_DTYPES[key]
            if not isinstance(a, np.ndarray) or a.dtype != dtype:
                raise self._bad(f"{key} must be a {np.dtype(dtype).name} array")
            if a.ndim != 1 and key != "w_q":
                raise self._bad(f"{key} must be one-dimensional, got shape {a.shape}")

    def _check_code(self, bits_name: str, signed_name: str) -> None:
        bits, signed = getattr(self, bits_name), getattr(self, signed_name)
        if not (_is_int(bits) and 2 <= bits <= 8):
            raise self._bad(f"{bits_name} must be in 2..8, got {bits!r}")
        if not isinstance(signed, bool):
            raise self._bad(f"{signed_name} must be true or false, got {signed!r}")

    def _check_pairs(self, n: tuple[int, ...]) -> None:
        """``mult`` positive and ``shift`` in [0, 62], of one of the lengths ``n`` (same length)."""
        if len(self.mult) not in n or self.shift.shape != self.mult.shape:
            raise self._bad(f"mult/shift shapes {self.mult.shape}/{self.shift.shape}, expected one of the "
                            f"lengths {sorted(set(n))}, the same for both")
        if self.mult.min() < 1 or self.shift.min() < SHIFT_MIN or self.shift.max() > SHIFT_MAX:
            raise self._bad(f"mult must be positive and shift in [{SHIFT_MIN}, {SHIFT_MAX}]")

    @property
    def code(self) -> Code:
        """The (bits, signed) of this node's output codes; None for int32 accumulators."""
        return None if self.a_bits is None else (self.a_bits, self.signed)

    def needs_v2(self) -> bool:
        return bool(getattr(self, "signed", False) or getattr(self, "in_signed", False))

    def min_version(self) -> int:
        """The lowest ARITH_VERSION that holds this node."""
        return 2 if self.needs_v2() else 1

    def _codes_in(self, src: _Node | None, want: Code, bad) -> None:
        """The input ``src`` must make codes of kind ``want``."""
        if code_of(src) is None:
            raise bad(f"reads the int32 accumulators of {name_of(src)}; only an add may")
        if code_of(src) != want:
            raise bad(f"takes {describe(want)} but {name_of(src)} makes {describe(code_of(src))}")


def code_of(node: _Node | None) -> Code:
    """The (bits, signed) of a node's output codes (None: int32 accumulators); the network input's
    for None."""
    return INPUT_CODE if node is None else node.code


def name_of(node: _Node | None) -> str:
    return "input" if node is None else node.name


def peak_of(node: _Node | None) -> int:
    """The largest magnitude a node's output can take: its codes' (E1), or its accumulators' (E6)."""
    code = code_of(node)
    return code_peak(*code) if code is not None else node.acc_bound()


def describe(code: Code) -> str:
    """'4-bit unsigned codes', '8-bit signed codes' or 'int32 accumulators'."""
    return "int32 accumulators" if code is None else f"{code[0]}-bit {'signed' if code[1] else 'unsigned'} codes"


def _check_geometry(bad, **fields: tuple) -> None:
    """Each field a pair of integers no smaller than its minimum (stride and dilation 1, padding 0)."""
    for key, (value, low) in fields.items():
        if not (isinstance(value, tuple) and len(value) == 2 and all(_is_int(v) and v >= low for v in value)):
            raise bad(f"{key} must be two integers >= {low}, got {value!r}")


def pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool = False) -> int:
    """(E7) Output length of a pooling window ``k``, stride ``s``, padding ``p`` over ``size``
    cells: floor mode, or PyTorch's ceil mode (the last window must start inside the map or its
    left padding)."""
    span = size + 2 * p - k
    n = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (n - 1) * s >= size + p:
        n -= 1
    return n


def pool_divisors(size: int, k: int, s: int, p: int, ceil_mode: bool, count_include_pad: bool) -> np.ndarray:
    """(E10) Per output position along one axis, how many of its window's cells count: those
    inside ``[-p, size + p)`` (count_include_pad) or inside ``[0, size)``."""
    lo, hi = (-p, size + p) if count_include_pad else (0, size)
    starts = np.arange(pool_out(size, k, s, p, ceil_mode)) * s - p
    return np.minimum(starts + k, hi) - np.maximum(starts, lo)


@dataclass(frozen=True, eq=False)
class IntLayer(_Node):
    """One integer layer: ``acc = conv/fc(x_q, w_q) + bias_q`` (E2), then (E4) and (E7)."""

    ARRAYS = ("w_q", "bias_q", "mult", "shift")  # (not a field) the arrays a model file stores for it
    WHAT = "layer"

    name: str
    kind: str  # "conv" | "fc"
    w_q: np.ndarray  # int8 (O, I/groups, kh, kw) or (O, I); W-bit codes
    bias_q: np.ndarray  # int32 (O,)
    mult: np.ndarray  # int32 (1,) per layer or (O,) per channel
    shift: np.ndarray  # int32, same shape as mult
    in_bits: int  # bits of the input codes (8 for the network input)
    w_bits: int
    a_bits: int | None  # output code bits; None: int32 accumulators (the logits, or a branch into an add)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    pool: tuple[int, int, int] | None = None  # max-pool (kernel, stride, padding)
    inputs: tuple[str, ...] = ()  # () = the previous node's output
    signed: bool = False  # signed output codes (no ReLU)
    in_signed: bool = False  # the input codes are signed
    rounding: str = "single"  # (E4) "single", or "double": gemmlowp's (E4d), ARITH_VERSION 3

    def __post_init__(self) -> None:
        bad = self._bad
        if self.kind not in ("conv", "fc"):
            raise bad(f"unknown kind {self.kind!r}")
        self._check_common((1, 1))
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
        self._check_pairs((1, o))
        for bits_name in ("in_bits", "w_bits"):
            b = getattr(self, bits_name)
            if not (_is_int(b) and 2 <= b <= 8):
                raise bad(f"{bits_name} must be in 2..8, got {b!r}")
        if self.a_bits is not None:
            self._check_code("a_bits", "signed")
        elif self.signed is not False:
            raise bad("a layer without a_bits outputs int32 accumulators, which are neither signed nor unsigned codes")
        if not isinstance(self.in_signed, bool):
            raise bad(f"in_signed must be true or false, got {self.in_signed!r}")
        if self.rounding not in ROUNDINGS:
            raise bad(f"rounding must be one of {', '.join(ROUNDINGS)}, got {str(self.rounding)[:20]!r}")
        if self.rounding == "double" and self.a_bits is None:
            raise bad("rounding applies to (E4); this layer outputs int32 accumulators and has no (E4)")
        lo, hi = weight_range(self.w_bits)
        if self.w_q.min() < lo or self.w_q.max() > hi:
            raise bad(f"weights outside the {self.w_bits}-bit range [{lo}, {hi}]")
        # (E6): every partial sum of every accumulator fits int32, for every input.
        acc_lo, acc_hi = self.acc_bounds()
        over = max(int(acc_hi.max()) - INT32_MAX, INT32_MIN - int(acc_lo.min()))
        if over > 0:
            raise OverflowProofError(
                f"layer {self.name}: its int32 accumulator could overflow: bounds [{int(acc_lo.min())}, "
                f"{int(acc_hi.max())}] exceed int32 by {over} (about {np.log2(over + 1):.1f} bits of missing "
                "headroom); use fewer weight or activation bits, or a smaller bias")
        if self.rounding == "double" and self.shift.min() < 31:
            # (E4d) multiplies acc by 2^(31 - shift) in int32 first, as TFLite and CMSIS-NN do
            bound = max(int(acc_hi.max()), -int(acc_lo.min()))
            if bound << (31 - int(self.shift.min())) > INT32_MAX:
                raise bad(f"double rounding shifts the accumulator left by {31 - int(self.shift.min())} bits in "
                          f"int32, and |acc| <= {bound} does not allow that (a scale of 1 or more per "
                          "accumulator step); use single rounding")

    @property
    def out_channels(self) -> int:
        return len(self.w_q)

    def acc_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(E6) per output channel, over every input the layer's input codes allow."""
        x_min, x_max = code_range(self.in_bits, self.in_signed)
        return acc_bound(self.w_q, x_max, self.bias_q, x_min)

    def headroom_bits(self) -> float:
        """log2 of how far the (E6) bound stays inside int32."""
        return float(np.log2(2**31 / max(self.acc_bound(), 1)))

    def acc_bound(self) -> int:
        """max |acc| over all inputs, (E6)."""
        lo, hi = self.acc_bounds()
        return max(int(hi.max()), -int(lo.min()))

    def meta(self) -> dict:
        m = {"name": self.name, "kind": self.kind, "in_bits": self.in_bits, "w_bits": self.w_bits,
             "a_bits": self.a_bits, "stride": list(self.stride), "padding": list(self.padding),
             "dilation": list(self.dilation), "groups": self.groups,
             "pool": list(self.pool) if self.pool else None, "inputs": list(self.inputs)}
        m |= {k: True for k in ("signed", "in_signed") if getattr(self, k)}  # version 1 files: absent
        return m | ({"rounding": self.rounding} if self.rounding != "single" else {})  # version 3 only

    def min_version(self) -> int:
        return 3 if self.rounding == "double" else super().min_version()

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntLayer:
        return cls(name=m["name"], kind=m["kind"], in_bits=m["in_bits"], w_bits=m["w_bits"], a_bits=m["a_bits"],
                   stride=tuple(m["stride"]), padding=tuple(m["padding"]), dilation=tuple(m["dilation"]),
                   groups=m["groups"], pool=tuple(m["pool"]) if m["pool"] else None,
                   inputs=tuple(m.get("inputs", ())),  # files from before residual graphs have no inputs
                   signed=m.get("signed", False), in_signed=m.get("in_signed", False),
                   rounding=m.get("rounding", "single"), **arrays)

    def out_shape(self, ins: list[Shape], srcs: list, bad) -> Shape:
        """The (C, H, W) output for input shape ``ins[0]`` (fc: (O, 1, 1)), checking the edge."""
        self._codes_in(srcs[0], (self.in_bits, self.in_signed), bad)
        c, h, w = ins[0]
        if self.kind == "fc":
            if self.w_q.shape[1] != c * h * w:
                raise bad(f"has {self.w_q.shape[1]} inputs but {name_of(srcs[0])} gives {c}x{h}x{w}")
            return (self.out_channels, 1, 1)
        kh, kw = self.w_q.shape[2:]
        if self.w_q.shape[1] * self.groups != c or self.out_channels % self.groups:
            raise bad(f"weights {self.w_q.shape} with {self.groups} groups do not fit {c} input channels")
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        out = (self.out_channels, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
               (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
        if self.pool:
            k, s_, p_ = self.pool
            out = (out[0], pool_out(out[1], k, s_, p_), pool_out(out[2], k, s_, p_))
        return out


@dataclass(frozen=True, eq=False)
class IntAdd(_Node):
    """(E9) Residual add: ``y = clamp(rshift_round(sum_i v_i * mult[i], shift), lo, hi)``,
    each input ``v_i`` codes or int32 accumulators, the sum in int64."""

    ARRAYS = ("mult", "shift")

    name: str
    inputs: tuple[str, ...]  # two or more earlier nodes (or "input")
    mult: np.ndarray  # int32 (len(inputs),)
    shift: np.ndarray  # int32 (1,)
    a_bits: int
    kind: str = "add"
    signed: bool = False

    def __post_init__(self) -> None:
        self._check_common((2, None))
        if self.kind != "add":
            raise self._bad(f"kind {self.kind!r} is not an add")
        if self.mult.shape != (len(self.inputs),) or self.shift.shape != (1,):
            raise self._bad(f"mult/shift shapes {self.mult.shape}/{self.shift.shape}, expected "
                            f"({len(self.inputs)},)/(1,)")
        _check_pair_values(self)
        self._check_code("a_bits", "signed")

    def meta(self) -> dict:
        m = {"name": self.name, "kind": "add", "inputs": list(self.inputs), "a_bits": self.a_bits}
        return m | ({"signed": True} if self.signed else {})

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntAdd:
        return cls(name=m["name"], inputs=tuple(m.get("inputs", ())), a_bits=m["a_bits"],
                   signed=m.get("signed", False), **arrays)

    def out_shape(self, ins: list[Shape], srcs: list, bad) -> Shape:
        """The inputs' common shape; (E9) proven: the int64 sum stays below 2^62 for every input."""
        if any(shape != ins[0] for shape in ins):
            raise bad(f"adds tensors of different shapes {ins}")
        total = sum(int(m) * peak_of(src) for m, src in zip(self.mult, srcs))
        if total >= 2**62:
            raise OverflowProofError(f"node {self.name}: its int64 sum could reach {total} >= 2^62 (E9)")
        return ins[0]


def _codes_only(srcs: list, bad) -> None:
    for src in srcs:
        if code_of(src) is None:
            raise bad(f"reads the int32 accumulators of {name_of(src)}; only an add may")


def _check_pair_values(node) -> None:
    if node.mult.min() < 1 or node.shift.min() < SHIFT_MIN or node.shift.max() > SHIFT_MAX:
        raise node._bad(f"mult must be positive and shift in [{SHIFT_MIN}, {SHIFT_MAX}]")


@dataclass(frozen=True, eq=False)
class IntAvgPool(_Node):
    """(E10) Average pool: window sums of codes, then ``clamp(rshift_round(sum * mult[d], shift[d]),
    lo, hi)`` for the window's divisor ``d``; one pair (divisor always kh * kw) or kh * kw pairs."""

    ARRAYS = ("mult", "shift")

    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    mult: np.ndarray  # int32 (1,) or (kh * kw,): pair d - 1 for divisor d
    shift: np.ndarray  # int32, same shape
    in_bits: int
    a_bits: int
    inputs: tuple[str, ...] = ()
    kind: str = "avgpool"
    ceil_mode: bool = False
    count_include_pad: bool = True
    in_signed: bool = False  # the output codes are signed exactly when the input codes are

    def __post_init__(self) -> None:
        self._check_common((1, 1))
        if self.kind != "avgpool":
            raise self._bad(f"kind {self.kind!r} is not an avgpool")
        _check_window(self)
        kh, kw = self.kernel
        self._check_pairs((1, kh * kw))
        if len(self.mult) == 1 and (self.ceil_mode or not self.count_include_pad) and kh * kw > 1:
            raise self._bad("one (mult, shift) pair divides every window by kh * kw, which only floor mode with "
                            "count_include_pad does; this pool needs kh * kw pairs, one per divisor")
        self._check_code("in_bits", "in_signed")
        self._check_code("a_bits", "signed")
        if code_peak(self.in_bits, self.in_signed) * kh * kw * int(self.mult.max()) >= 2**62:
            raise OverflowProofError(f"node {self.name}: window sum * mult could leave the (E3) range")

    @property
    def signed(self) -> bool:
        return self.in_signed

    def needs_v2(self) -> bool:
        return self.in_signed or self.ceil_mode or not self.count_include_pad

    def meta(self) -> dict:
        m = {"name": self.name, "kind": "avgpool", "kernel": list(self.kernel), "stride": list(self.stride),
             "padding": list(self.padding), "in_bits": self.in_bits, "a_bits": self.a_bits,
             "inputs": list(self.inputs)}
        # version-1 files have none of these keys; they are written only where they differ
        m |= {"ceil_mode": True} if self.ceil_mode else {}
        m |= {"count_include_pad": False} if not self.count_include_pad else {}
        return m | ({"in_signed": True} if self.in_signed else {})

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntAvgPool:
        return cls(name=m["name"], kernel=tuple(m["kernel"]), stride=tuple(m["stride"]), padding=tuple(m["padding"]),
                   in_bits=m["in_bits"], a_bits=m["a_bits"], inputs=tuple(m.get("inputs", ())),
                   ceil_mode=m.get("ceil_mode", False), count_include_pad=m.get("count_include_pad", True),
                   in_signed=m.get("in_signed", False), **arrays)

    def out_shape(self, ins: list[Shape], srcs: list, bad) -> Shape:
        self._codes_in(srcs[0], (self.in_bits, self.in_signed), bad)
        return _pooled(self, ins[0], bad)

    def divisors(self, h: int, w: int) -> np.ndarray:
        """(E10) The divisor of every output position, (Ho, Wo), for an h x w input."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        rows = pool_divisors(h, kh, sh, ph, self.ceil_mode, self.count_include_pad)
        cols = pool_divisors(w, kw, sw, pw, self.ceil_mode, self.count_include_pad)
        return rows[:, None] * cols[None, :]


def _check_window(node) -> None:
    bad = node._bad
    _check_geometry(bad, kernel=(node.kernel, 1), stride=(node.stride, 1), padding=(node.padding, 0))
    if any(2 * p > k for p, k in zip(node.padding, node.kernel)):
        raise bad(f"padding {node.padding} is more than half the window {node.kernel}")
    for key in ("ceil_mode", "count_include_pad"):
        if not isinstance(getattr(node, key, False), bool):
            raise bad(f"{key} must be true or false")


def _pooled(node, shape: Shape, bad) -> Shape:
    c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise bad(f"its {kh}x{kw} window does not fit the padded {h}x{w} map")
    return (c, pool_out(h, kh, sh, ph, node.ceil_mode), pool_out(w, kw, sw, pw, node.ceil_mode))


@dataclass(frozen=True, eq=False)
class IntMaxPool(_Node):
    """(E7) Max pool of codes (signed or not): window cells outside the map never count."""

    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    a_bits: int  # the codes it reads and writes
    signed: bool = False
    ceil_mode: bool = False
    inputs: tuple[str, ...] = ()
    kind: str = "maxpool"

    def __post_init__(self) -> None:
        self._check_common((1, 1))
        if self.kind != "maxpool":
            raise self._bad(f"kind {self.kind!r} is not a maxpool")
        _check_window(self)
        self._check_code("a_bits", "signed")

    def needs_v2(self) -> bool:
        return True

    def meta(self) -> dict:
        return {"name": self.name, "kind": "maxpool", "kernel": list(self.kernel), "stride": list(self.stride),
                "padding": list(self.padding), "a_bits": self.a_bits, "signed": self.signed,
                "ceil_mode": self.ceil_mode, "inputs": list(self.inputs)}

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntMaxPool:
        return cls(name=m["name"], kernel=tuple(m["kernel"]), stride=tuple(m["stride"]), padding=tuple(m["padding"]),
                   a_bits=m["a_bits"], signed=m["signed"], ceil_mode=m["ceil_mode"], inputs=tuple(m["inputs"]))

    def out_shape(self, ins: list[Shape], srcs: list, bad) -> Shape:
        self._codes_in(srcs[0], self.code, bad)
        return _pooled(self, ins[0], bad)


@dataclass(frozen=True, eq=False)
class IntLut(_Node):
    """(E11) Elementwise lookup: ``y = table[x - lo_in]``, one int16 entry per input code."""

    ARRAYS = ("table",)

    name: str
    table: np.ndarray  # int16 (2^in_bits,), values in the output code range
    in_bits: int
    a_bits: int
    in_signed: bool = False
    signed: bool = False
    inputs: tuple[str, ...] = ()
    kind: str = "lut"

    def __post_init__(self) -> None:
        self._check_common((1, 1))
        if self.kind != "lut":
            raise self._bad(f"kind {self.kind!r} is not a lut")
        self._check_code("in_bits", "in_signed")
        self._check_code("a_bits", "signed")
        if self.table.shape != (2**self.in_bits,):
            raise self._bad(f"table has shape {self.table.shape}, expected ({2 ** self.in_bits},): one entry per "
                            f"{self.in_bits}-bit input code")
        lo, hi = code_range(self.a_bits, self.signed)
        if self.table.min() < lo or self.table.max() > hi:
            raise self._bad(f"table entries outside the output code range [{lo}, {hi}]")

    def needs_v2(self) -> bool:
        return True

    def meta(self) -> dict:
        return {"name": self.name, "kind": "lut", "in_bits": self.in_bits, "in_signed": self.in_signed,
                "a_bits": self.a_bits, "signed": self.signed, "inputs": list(self.inputs)}

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntLut:
        return cls(name=m["name"], in_bits=m["in_bits"], in_signed=m["in_signed"], a_bits=m["a_bits"],
                   signed=m["signed"], inputs=tuple(m["inputs"]), **arrays)

    def out_shape(self, ins: list[Shape], srcs: list, bad) -> Shape:
        self._codes_in(srcs[0], (self.in_bits, self.in_signed), bad)
        return ins[0]


@dataclass(frozen=True, eq=False)
class IntMul(_Node):
    """(E12) ``y = clamp(rshift_round(x * g * mult, shift), lo, hi)``: codes x (C, H, W) times
    codes g of shape (C, 1, 1) (a squeeze-excite gate, broadcast over the map) or (C, H, W)."""

    ARRAYS = ("mult", "shift")

    name: str
    inputs: tuple[str, str]  # (x, g)
    mult: np.ndarray  # int32 (1,)
    shift: np.ndarray  # int32 (1,)
    a_bits: int
    signed: bool = False
    kind: str = "mul"

    def __post_init__(self) -> None:
        self._check_common((2, 2))
        if self.kind != "mul":
            raise self._bad(f"kind {self.kind!r} is not a mul")
        self._check_pairs((1,))
        self._check_code("a_bits", "signed")

    def needs_v2(self) -> bool:
        return True

    def meta(self) -> dict:
        return {"name": self.name, "kind": "mul", "inputs": list(self.inputs), "a_bits": self.a_bits,
                "signed": self.signed}

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntMul:
        return cls(name=m["name"], inputs=tuple(m["inputs"]), a_bits=m["a_bits"], signed=m["signed"], **arrays)

    def out_shape(self, ins: list[Shape], srcs: list, bad) -> Shape:
        _codes_only(srcs, bad)
        if ins[1] not in (ins[0], (ins[0][0], 1, 1)):
            raise bad(f"multiplies {ins[0]} by {ins[1]}: the second input must have the same shape or one value "
                      "per channel (C, 1, 1)")
        return ins[0]


@dataclass(frozen=True, eq=False)
class IntConcat(_Node):
    """(E13) Channel concatenation, input j requantized by ``(mult[j], shift[j])`` to the output codes."""

    ARRAYS = ("mult", "shift")

    name: str
    inputs: tuple[str, ...]
    mult: np.ndarray  # int32 (len(inputs),)
    shift: np.ndarray  # int32 (len(inputs),)
    a_bits: int
    signed: bool = False
    kind: str = "concat"

    def __post_init__(self) -> None:
        self._check_common((2, None))
        if self.kind != "concat":
            raise self._bad(f"kind {self.kind!r} is not a concat")
        self._check_pairs((len(self.inputs),))
        self._check_code("a_bits", "signed")

    def needs_v2(self) -> bool:
        return True

    def meta(self) -> dict:
        return {"name": self.name, "kind": "concat", "inputs": list(self.inputs), "a_bits": self.a_bits,
                "signed": self.signed}

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntConcat:
        return cls(name=m["name"], inputs=tuple(m["inputs"]), a_bits=m["a_bits"], signed=m["signed"], **arrays)

    def out_shape(self, ins: list[Shape], srcs: list, bad) -> Shape:
        _codes_only(srcs, bad)
        if any(shape[1:] != ins[0][1:] for shape in ins):
            raise bad(f"concatenates maps of different sizes {ins}")
        return (sum(shape[0] for shape in ins), *ins[0][1:])


@dataclass(frozen=True, eq=False)
class IntChannels(_Node):
    """(E14) Channel gather ``y[c] = x[index[c]]``: a split (a range) or a shuffle (a permutation)."""

    ARRAYS = ("index",)

    name: str
    index: np.ndarray  # int32 (C_out,), entries in [0, C_in)
    a_bits: int  # the codes it reads and writes
    signed: bool = False
    inputs: tuple[str, ...] = ()
    kind: str = "channels"

    def __post_init__(self) -> None:
        self._check_common((1, 1))
        if self.kind != "channels":
            raise self._bad(f"kind {self.kind!r} is not a channels node")
        if len(self.index) == 0 or len(self.index) > MAX_DIM or self.index.min() < 0:
            raise self._bad("index must list 1 to 65,536 channels, each >= 0")
        self._check_code("a_bits", "signed")

    def needs_v2(self) -> bool:
        return True

    def meta(self) -> dict:
        return {"name": self.name, "kind": "channels", "a_bits": self.a_bits, "signed": self.signed,
                "inputs": list(self.inputs)}

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntChannels:
        return cls(name=m["name"], a_bits=m["a_bits"], signed=m["signed"], inputs=tuple(m["inputs"]), **arrays)

    def out_shape(self, ins: list[Shape], srcs: list, bad) -> Shape:
        self._codes_in(srcs[0], self.code, bad)
        if self.index.max() >= ins[0][0]:
            raise bad(f"gathers channel {int(self.index.max())} of {name_of(srcs[0])}, which has {ins[0][0]}")
        return (len(self.index), *ins[0][1:])


@dataclass(frozen=True, eq=False)
class IntAffine(_Node):
    """(E15) ``y[c] = clamp(rshift_round(x[c] * mult[c] + offset[c], shift[c]), lo, hi)``: a
    pre-activation BatchNorm and ReLU as one integer multiplier and offset per channel."""

    ARRAYS = ("mult", "shift", "offset")

    name: str
    mult: np.ndarray  # int32 (1,) or (C,), nonzero, either sign
    shift: np.ndarray  # int32, same shape
    offset: np.ndarray  # int64 (C,), in units of 2^-shift
    in_bits: int
    a_bits: int
    in_signed: bool = False
    signed: bool = False
    inputs: tuple[str, ...] = ()
    kind: str = "affine"

    def __post_init__(self) -> None:
        self._check_common((1, 1))
        if self.kind != "affine":
            raise self._bad(f"kind {self.kind!r} is not an affine node")
        c = len(self.offset)
        if c == 0:
            raise self._bad("offset must have one entry per channel")
        if len(self.mult) not in (1, c) or self.shift.shape != self.mult.shape:
            raise self._bad(f"mult/shift shapes {self.mult.shape}/{self.shift.shape}, expected (1,) or ({c},), the "
                            "same for both")
        if (self.mult == 0).any() or self.mult.min() < -MULT_LIMIT or self.shift.min() < SHIFT_MIN or \
                self.shift.max() > SHIFT_MAX:
            raise self._bad(f"mult must be nonzero (it may be negative) and shift in [{SHIFT_MIN}, {SHIFT_MAX}]")
        self._check_code("in_bits", "in_signed")
        self._check_code("a_bits", "signed")
        big = int(np.abs(self.mult.astype(np.int64)).max())
        peak = code_peak(self.in_bits, self.in_signed) * big + int(np.abs(self.offset).max())
        if peak >= 2**62:
            raise OverflowProofError(f"node {self.name}: x * mult + offset could reach {peak} >= 2^62 (E15)")

    def needs_v2(self) -> bool:
        return True

    def meta(self) -> dict:
        return {"name": self.name, "kind": "affine", "in_bits": self.in_bits, "in_signed": self.in_signed,
                "a_bits": self.a_bits, "signed": self.signed, "inputs": list(self.inputs)}

    @classmethod
    def from_meta(cls, m: dict, arrays: dict[str, np.ndarray]) -> IntAffine:
        return cls(name=m["name"], in_bits=m["in_bits"], in_signed=m["in_signed"], a_bits=m["a_bits"],
                   signed=m["signed"], inputs=tuple(m["inputs"]), **arrays)

    def out_shape(self, ins: list[Shape], srcs: list, bad) -> Shape:
        self._codes_in(srcs[0], (self.in_bits, self.in_signed), bad)
        if ins[0][0] != len(self.offset):
            raise bad(f"has {len(self.offset)} channels but {name_of(srcs[0])} gives {ins[0][0]}")
        return ins[0]


Node = IntLayer | IntAdd | IntAvgPool | IntMaxPool | IntLut | IntMul | IntConcat | IntChannels | IntAffine
# A node's kind in a model file -> its class.
NODES: dict[str, type] = {"conv": IntLayer, "fc": IntLayer, "add": IntAdd, "avgpool": IntAvgPool,
                          "maxpool": IntMaxPool, "lut": IntLut, "mul": IntMul, "concat": IntConcat,
                          "channels": IntChannels, "affine": IntAffine}
