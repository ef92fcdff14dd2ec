"""The model file: an IntGraph saved as a ``.npz`` zip archive, and loaded from an untrusted one.

``meta.json`` holds the structure, ``ARITH_VERSION`` and a SHA-256 of every array; the
``<node>.<array>.npy`` members hold the arrays. :func:`save` writes atomically and the same
graph always gives the same bytes. :func:`load` treats the file as hostile: plain member
names only, declared sizes bounded by the file's own size (``UNPACK_RATIO``), every ``.npy``
header checked before a byte of data is read, no unpickling (``allow_pickle=False``), and a
wrong version, a missing or tampered array or out-of-range values refused with a one-line
:class:`~fiqnn.integer.graph.ModelFileError`; the graph is then built, which checks it
whole (:class:`~fiqnn.integer.graph.IntGraph`).
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
from pathlib import Path

import numpy as np

from .. import _io
from ..errors import FiqnnError
from .arith import ARITH_VERSION, READS
from .graph import (
    ARRAY_DTYPES,
    NODES,
    IntAvgPool,
    IntGraph,
    IntLayer,
    IntMaxPool,
    ModelFileError,
    Node,
    _is_int,
    check_name,
)


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
            for key in layer.ARRAYS:
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
            if version not in READS:
                raise ModelFileError(f"{path} was written for ARITH_VERSION {version}; this fiqnn implements "
                                     f"{ARITH_VERSION} and reads {', '.join(map(str, READS))}: re-export it with "
                                     "this version")
            layers = []
            for m in meta["layers"]:
                check_name(m["name"])
                if m["kind"] not in NODES:
                    raise ModelFileError(f"node {m['name']}: unknown kind {str(m['kind'])[:20]!r}")
                cls = NODES[m["kind"]]
                arrays = {}
                for key in cls.ARRAYS:
                    member = f"{m['name']}.{key}.npy"
                    arrays[key] = _read_array(z, member, ARRAY_DTYPES[key], meta["sha256"].get(member))
                layers.append(cls.from_meta(m, arrays))
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

    pairs = {"mult": span(layer.mult), "shift": span(layer.shift)} if "mult" in layer.ARRAYS else \
        {"mult": "-", "shift": "-"}
    row = {"name": layer.name, "kind": layer.kind, "a_bits": layer.a_bits, "signed": bool(layer.signed), **pairs,
           "inputs": list(layer.inputs), "dtypes": {k: str(getattr(layer, k).dtype) for k in layer.ARRAYS}}
    if not isinstance(layer, IntLayer):
        window = ("x".join(map(str, layer.kernel)) if isinstance(layer, (IntAvgPool, IntMaxPool))
                  else f"{len(layer.inputs)} inputs")
        return {**row, "shape": [window], "in_bits": getattr(layer, "in_bits", "-"), "w_bits": "-",
                "acc_bound": "-", "headroom_bits": float("nan"), "pool": None}
    lo, hi = layer.acc_bounds()
    return {**row, "shape": list(layer.w_q.shape), "in_bits": layer.in_bits, "w_bits": layer.w_bits,
            "acc_bound": f"[{int(lo.min())}, {int(hi.max())}]", "headroom_bits": layer.headroom_bits(),
            "pool": layer.pool}
