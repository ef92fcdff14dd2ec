"""IntGraph: an integer network, nothing but integer arrays and (mult, shift) pairs.

An :class:`IntGraph` is a chain of :class:`IntLayer` (conv or fully connected,
each followed by requantization (E4) and an optional max-pool (E7); the last
one's accumulators are the logits). Building one checks every array's dtype,
shape and range and proves, layer by layer, that no int32 accumulator can
overflow (E6); a graph that fails is refused with the layer named.

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

    def __post_init__(self) -> None:
        def bad(msg: str) -> ModelFileError:
            return ModelFileError(f"layer {self.name}: {msg}")

        if self.kind not in ("conv", "fc"):
            raise bad(f"unknown kind {self.kind!r}")
        for key, dtype in _ARRAYS.items():
            a = getattr(self, key)
            if not isinstance(a, np.ndarray) or a.dtype != dtype:
                raise bad(f"{key} must be a {np.dtype(dtype).name} array")
        o = len(self.w_q)
        if self.w_q.ndim != (4 if self.kind == "conv" else 2) or o == 0:
            raise bad(f"w_q has shape {self.w_q.shape}")
        if self.bias_q.shape != (o,) or self.mult.shape not in ((1,), (o,)) or self.shift.shape != self.mult.shape:
            raise bad(f"bias/mult/shift shapes {self.bias_q.shape}/{self.mult.shape}/{self.shift.shape} do not "
                      f"fit {o} output channels")
        for bits_name in ("in_bits", "w_bits") + (("a_bits",) if self.a_bits is not None else ()):
            b = getattr(self, bits_name)
            if not (isinstance(b, int) and 2 <= b <= 8):
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

    def meta(self) -> dict:
        return {"name": self.name, "kind": self.kind, "in_bits": self.in_bits, "w_bits": self.w_bits,
                "a_bits": self.a_bits, "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups,
                "pool": list(self.pool) if self.pool else None}


@dataclass(frozen=True, eq=False)
class IntGraph:
    """A whole integer network: uint8 input of ``in_shape`` (C, H, W) -> int32 logits."""

    in_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[IntLayer, ...]
    arith_version: int = ARITH_VERSION
    info: dict = field(default_factory=dict)  # free-form provenance (method, bits, ...); JSON values only

    def __post_init__(self) -> None:
        if self.arith_version != ARITH_VERSION:
            raise ModelFileError(f"model uses ARITH_VERSION {self.arith_version}, this fiqnn implements "
                                 f"{ARITH_VERSION}; re-export the model with this version")
        if not self.layers or self.layers[-1].a_bits is not None:
            raise ModelFileError("the last layer must produce logits (a_bits None)")
        if any(layer.a_bits is None for layer in self.layers[:-1]):
            raise ModelFileError("only the last layer may produce logits")
        if self.layers[-1].out_channels != self.num_classes:
            raise ModelFileError(f"last layer has {self.layers[-1].out_channels} outputs, not {self.num_classes}")
        if self.layers[0].in_bits != 8:
            raise ModelFileError("the first layer must take 8-bit input codes")
        for prev, layer in zip(self.layers, self.layers[1:]):
            if layer.in_bits != prev.a_bits:
                raise ModelFileError(f"layer {layer.name} takes {layer.in_bits}-bit codes but {prev.name} "
                                     f"makes {prev.a_bits}-bit ones")


def save(graph: IntGraph, path: str | os.PathLike) -> None:
    """Write ``graph`` to ``path`` (a .npz archive, see module doc), atomically."""
    buf = io.BytesIO()
    meta = {"format": "fiqnn-intgraph", "arith_version": graph.arith_version, "in_shape": list(graph.in_shape),
            "num_classes": graph.num_classes, "info": graph.info, "layers": [], "sha256": {}}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for layer in graph.layers:
            meta["layers"].append(layer.meta())
            for key in _ARRAYS:
                member = f"{layer.name}.{key}.npy"
                arr_buf = io.BytesIO()
                np.lib.format.write_array(arr_buf, np.ascontiguousarray(getattr(layer, key)), allow_pickle=False)
                data = arr_buf.getvalue()
                meta["sha256"][member] = hashlib.sha256(data).hexdigest()
                z.writestr(member, data)
        z.writestr("meta.json", json.dumps(meta, indent=1))
    _io.write_bytes(path, buf.getvalue())


def load(path: str | os.PathLike) -> IntGraph:
    """Read a model file written by :func:`save`; never unpickles.

    Raises:
        ModelFileError: missing, unreadable, wrong version, tampered or out-of-range.
        OverflowProofError: the layers fail the (E6) proof.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("meta.json"))
            if meta.get("format") != "fiqnn-intgraph":
                raise ModelFileError(f"{path} is not a fiqnn model file")
            version = meta.get("arith_version")
            if version != ARITH_VERSION:
                raise ModelFileError(f"{path} was written for ARITH_VERSION {version}; this fiqnn implements "
                                     f"{ARITH_VERSION}: re-export it with this version")
            layers = []
            for m in meta["layers"]:
                arrays = {}
                for key in _ARRAYS:
                    member = f"{m['name']}.{key}.npy"
                    data = z.read(member)
                    if hashlib.sha256(data).hexdigest() != meta["sha256"].get(member):
                        raise ModelFileError(f"{path}: array {member} does not match its checksum (tampered "
                                             "or corrupt)")
                    arrays[key] = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
                layers.append(IntLayer(
                    name=m["name"], kind=m["kind"], in_bits=m["in_bits"], w_bits=m["w_bits"], a_bits=m["a_bits"],
                    stride=tuple(m["stride"]), padding=tuple(m["padding"]), dilation=tuple(m["dilation"]),
                    groups=m["groups"], pool=tuple(m["pool"]) if m["pool"] else None, **arrays))
            return IntGraph(tuple(meta["in_shape"]), meta["num_classes"], tuple(layers), version,
                            meta.get("info", {}))
    except FileNotFoundError:
        raise ModelFileError(f"{path} not found") from None
    except FiqnnError:
        raise
    except (OSError, zipfile.BadZipFile, zlib.error, KeyError, ValueError, TypeError, AttributeError, EOFError,
            OverflowError, struct.error, NotImplementedError, RuntimeError) as e:
        # Everything zipfile, json and numpy raise on malformed bytes (RuntimeError: an
        # "encrypted" flag; NotImplementedError: an unsupported zip feature).
        raise ModelFileError(f"{path} is not a readable fiqnn model file ({type(e).__name__}: {e})") from None


def layer_summary(layer: IntLayer) -> dict:
    """One layer's shape, bits, (mult, shift) range, (E6) accumulator bound and headroom, and array dtypes."""
    lo, hi = acc_bound(layer.w_q, act_range(layer.in_bits)[1], layer.bias_q)

    def span(a) -> str:
        return str(int(a.min())) if a.min() == a.max() else f"{int(a.min())}..{int(a.max())}"

    return {"name": layer.name, "kind": layer.kind, "shape": list(layer.w_q.shape), "in_bits": layer.in_bits,
            "w_bits": layer.w_bits, "a_bits": layer.a_bits, "mult": span(layer.mult), "shift": span(layer.shift),
            "acc_bound": f"[{int(lo.min())}, {int(hi.max())}]", "headroom_bits": layer.headroom_bits(),
            "pool": layer.pool, "dtypes": {k: str(getattr(layer, k).dtype) for k in ("w_q", "bias_q", "mult", "shift")}}
