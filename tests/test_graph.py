"""IntGraph: integer-only, the overflow proof, and a model file that refuses tampering."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from fiqnn.integer.arith import ARITH_VERSION
from fiqnn.integer.graph import IntGraph, IntLayer, ModelFileError, OverflowProofError
from fiqnn.integer.modelfile import load, save


def _layer(name="fc", w=None, o=3, i=5, **change) -> IntLayer:
    w = np.ones((o, i), np.int8) if w is None else w
    fields = dict(name=name, kind="fc", w_q=w, bias_q=np.zeros(len(w), np.int32), mult=np.array([2**30], np.int32),
                  shift=np.array([31], np.int32), in_bits=8, w_bits=8, a_bits=None)
    return IntLayer(**{**fields, **change})


def _graph() -> IntGraph:
    rng = np.random.default_rng(0)
    conv = IntLayer(name="conv1", kind="conv", w_q=rng.integers(-7, 8, (4, 1, 3, 3)).astype(np.int8),
                    bias_q=rng.integers(-100, 100, 4).astype(np.int32),
                    mult=np.full(4, 1_500_000_000, np.int32), shift=np.array([40, 41, 42, 40], np.int32),
                    in_bits=8, w_bits=4, a_bits=4, padding=(1, 1), pool=(2, 2, 0))
    fc = _layer("fc2", rng.integers(-127, 128, (10, 4 * 3 * 3)).astype(np.int8), in_bits=4)
    return IntGraph((1, 6, 6), 10, (conv, fc))


def test_overflow_is_refused_naming_layer_and_headroom():
    w = np.full((2, 70_000), 127, np.int8)  # 70,000 * 127 * 255 > 2^31
    with pytest.raises(OverflowProofError, match=r"layer big: its int32 accumulator could overflow: bounds "
                                                 r"\[0, 2266950000\] exceed int32 by 119466353 \(about 26.8 bits"):
        _layer("big", w)
    _layer("fits", np.full((2, 60_000), 127, np.int8))  # 1.94e9: accepted


def test_bias_counts_in_the_overflow_proof():
    w = np.full((1, 60_000), 127, np.int8)
    ok = _layer("b", w)
    with pytest.raises(OverflowProofError, match="layer b"):
        IntLayer(**{**ok.__dict__, "bias_q": np.array([2**31 - 1 - 100], np.int32)})


@pytest.mark.parametrize("change, message", [
    ({"w_q": np.full((3, 5), 8, np.int8), "w_bits": 4}, "weights outside the 4-bit range"),
    ({"w_q": np.ones((3, 5), np.int16)}, "w_q must be a int8 array"),
    ({"w_q": np.ones((3, 5), np.float32)}, "w_q must be a int8 array"),
    ({"mult": np.array([0], np.int32)}, "mult must be positive"),
    ({"shift": np.array([63], np.int32)}, "shift in [0, 62]"),
    ({"w_bits": 9}, "w_bits must be in 2..8"),
    ({"bias_q": np.zeros(4, np.int32)}, "do not fit 3 output channels"),
])
def test_layer_validation(change, message):
    with pytest.raises(ModelFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _layer(**change)


def test_graph_holds_only_integer_arrays_and_no_bn():
    g = _graph()
    for layer in g.layers:
        assert set(vars(layer)) >= {"w_q", "bias_q", "mult", "shift"}
        for value in vars(layer).values():
            assert not isinstance(value, float)
            if isinstance(value, np.ndarray):
                assert np.issubdtype(value.dtype, np.integer)
        assert not any("bn" in k or "mean" in k or "var" in k for k in vars(layer))


def test_save_load_round_trip(tmp_path):
    g = _graph()
    save(g, tmp_path / "m.npz")
    h = load(tmp_path / "m.npz")
    assert h.in_shape == g.in_shape and h.num_classes == 10
    for a, b in zip(g.layers, h.layers):
        assert a.meta() == b.meta()
        for k in ("w_q", "bias_q", "mult", "shift"):
            assert np.array_equal(getattr(a, k), getattr(b, k)) and getattr(a, k).dtype == getattr(b, k).dtype
    # a plain numpy npz reader sees the arrays too
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert np.array_equal(z["conv1.w_q"], g.layers[0].w_q)


def _rewrite(path, member, data):
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[member] = data
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    path.write_bytes(buf.getvalue())


def test_wrong_arith_version_refused(tmp_path):
    p = tmp_path / "m.npz"
    save(_graph(), p)
    with zipfile.ZipFile(p) as z:
        meta = json.loads(z.read("meta.json"))
    meta["arith_version"] = ARITH_VERSION + 1
    _rewrite(p, "meta.json", json.dumps(meta))
    with pytest.raises(ModelFileError, match=f"written for ARITH_VERSION {ARITH_VERSION + 1}"):
        load(p)


def test_tampered_array_refused(tmp_path):
    p = tmp_path / "m.npz"
    save(_graph(), p)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.full((4, 1, 3, 3), 7, np.int8))
    _rewrite(p, "conv1.w_q.npy", buf.getvalue())
    with pytest.raises(ModelFileError, match="conv1.w_q.npy does not match its checksum"):
        load(p)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"\x00" * 100])
def test_corrupt_or_truncated_file_refused(tmp_path, content):
    p = tmp_path / "m.npz"
    p.write_bytes(content)
    with pytest.raises(ModelFileError, match="not a readable fiqnn model file"):
        load(p)


def test_truncated_model_file(tmp_path):
    p = tmp_path / "m.npz"
    save(_graph(), p)
    p.write_bytes(p.read_bytes()[:-50])
    with pytest.raises(ModelFileError):
        load(p)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load(tmp_path / "nope.npz")


# --- fuzzing: whatever the bytes, load() returns a graph or raises its own error ----------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fiqnn.errors import FiqnnError  # noqa: E402


def _valid_bytes(tmp_path_factory=None) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        save(_graph(), Path(d) / "m.npz")
        return (Path(d) / "m.npz").read_bytes()


VALID = _valid_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_model_file_never_crashes(tmp_path, data):
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "truncate":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    p = tmp_path / "fuzz.npz"
    p.write_bytes(bytes(raw))
    try:
        g = load(p)
    except FiqnnError:
        return
    assert isinstance(g, IntGraph)  # a harmless change (e.g. in zip padding) may still load


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(tmp_path, blob):
    p = tmp_path / "junk.npz"
    p.write_bytes(blob)
    with pytest.raises(FiqnnError):
        load(p)


def test_save_is_byte_reproducible(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(time, "time", lambda: 1_000_000_000.0)
    save(_graph(), tmp_path / "a.npz")
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)  # another day: zip stamps would differ
    save(_graph(), tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
