"""Model files from strangers: hostile names, memory bombs and path-traversal members are refused
in one line, from the zip directory and the array headers, before anything large is allocated."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest

from fiqnn.integer.graph import IntGraph, IntLayer, ModelFileError
from fiqnn.integer.modelfile import load, save

MB = 1 << 20


def _graph() -> IntGraph:
    """Two fc layers, the first with 1 MB of incompressible int8 weights (so that "2x the file's
    size" is a real bound, far above the interpreter's own small allocations)."""
    rng = np.random.default_rng(0)
    w1 = rng.integers(-127, 128, (100, 10_000)).astype(np.int8)
    fc1 = IntLayer(name="fc1", kind="fc", w_q=w1, bias_q=np.zeros(100, np.int32), mult=np.array([2**30], np.int32),
                   shift=np.array([50], np.int32), in_bits=8, w_bits=8, a_bits=8)
    fc2 = IntLayer(name="fc2", kind="fc", w_q=rng.integers(-7, 8, (10, 100)).astype(np.int8),
                   bias_q=np.zeros(10, np.int32), mult=np.array([2**30], np.int32), shift=np.array([31], np.int32),
                   in_bits=8, w_bits=4, a_bits=None)
    return IntGraph((1, 100, 100), 10, (fc1, fc2))


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write(path, members: dict[str, bytes], big: tuple[str, int] | None = None) -> None:
    """Write ``members`` (meta.json re-signed: every array's SHA-256 recomputed, as an attacker
    would); ``big = (name, n)`` adds a member of ``n`` zero bytes, streamed (a zip bomb)."""
    meta = json.loads(members["meta.json"])
    meta["sha256"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items() if n.endswith(".npy")}
    members = {**members, "meta.json": json.dumps(meta).encode()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in members.items():
            z.writestr(n, d)
        if big:
            with z.open(big[0], "w", force_zip64=True) as f:
                chunk = bytes(MB)
                for _ in range(big[1] // MB):
                    f.write(chunk)


def _peak_while_refused(path) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError) as e:
            load(path)
        return tracemalloc.get_traced_memory()[1], str(e.value)
    finally:
        tracemalloc.stop()


@pytest.fixture
def valid(tmp_path):
    p = tmp_path / "valid.npz"
    save(_graph(), p)
    return p


def _npy(arr_header: dict, data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, arr_header)
    return buf.getvalue() + data


def test_absurd_declared_shape_is_refused_without_allocating_it(valid, tmp_path):
    m = _members(valid)
    data = m["fc1.w_q.npy"][128:]  # the 1 MB of codes, behind a header that declares 2^40 of them
    m["fc1.w_q.npy"] = _npy({"descr": "|i1", "fortran_order": False, "shape": (2**20, 2**20)}, data)
    bad = tmp_path / "shape.npz"
    _write(bad, m)
    peak, msg = _peak_while_refused(bad)
    assert "declares shape [1048576, 1048576]" in msg and "\n" not in msg
    assert peak < 2 * bad.stat().st_size, peak


def test_zip_bomb_is_refused_from_the_directory(valid, tmp_path):
    bad = tmp_path / "bomb.npz"
    _write(bad, _members(valid), big=("pad.npy", 256 * MB))  # 256 MB of zeros in about 1.3 MB
    assert bad.stat().st_size < 2 * MB
    peak, msg = _peak_while_refused(bad)
    assert "would unpack to" in msg and "zip bomb" in msg and "\n" not in msg
    assert peak < 2 * bad.stat().st_size, peak


@pytest.mark.parametrize("member", ["../../evil.npy", "/etc/evil.npy", "sub/fc1.w_q.npy", "a\\..\\b.npy",
                                    "x */ evil(); /*.npy"])
def test_path_traversal_and_odd_member_names_are_refused(valid, tmp_path, member):
    m = _members(valid)
    m[member] = m["fc2.bias_q.npy"]
    bad = tmp_path / "paths.npz"
    _write(bad, m)
    peak, msg = _peak_while_refused(bad)
    assert "is not a plain file name" in msg and "\n" not in msg
    assert peak < 2 * bad.stat().st_size, peak


@pytest.mark.parametrize("name", ["fc1 */ int evil; /*", "fc1\nint evil;", "input", "", "x" * 65, 7, "fc-1"])
def test_hostile_node_names_are_refused(valid, tmp_path, name):
    m = _members(valid)
    meta = json.loads(m["meta.json"])
    meta["layers"][0]["name"] = name
    meta["layers"][1]["inputs"] = [name] if isinstance(name, str) else []
    m["meta.json"] = json.dumps(meta).encode()
    bad = tmp_path / "name.npz"
    _write(bad, m)
    peak, msg = _peak_while_refused(bad)
    assert "is not an identifier" in msg and "\n" not in msg
    assert peak < 2 * bad.stat().st_size, peak
    with pytest.raises(ModelFileError, match="is not an identifier"):  # the constructor refuses it too
        IntLayer(**{**_graph().layers[1].__dict__, "name": name})


def test_cli_refuses_each_in_one_line(cli, valid, tmp_path):
    bad = tmp_path / "bomb.npz"
    _write(bad, _members(valid), big=("pad.npy", 128 * MB))
    for cmd in (["info", bad], ["export", bad, "--format", "c", "--out", tmp_path / "c"]):
        code, out, err = cli(*cmd)
        assert code == 2 and len(err) == 1 and err[0].startswith("fiqnn: error: ") and "zip bomb" in err[0]
    assert not (tmp_path / "c").exists()


def test_a_valid_file_still_loads(valid):
    g = load(valid)
    assert np.array_equal(g.layers[0].w_q, _graph().layers[0].w_q)
    assert not g.layers[0].w_q.flags.writeable  # arrays are views of the file's bytes, read-only


def _conv(**change) -> IntLayer:
    fields = dict(name="c", kind="conv", w_q=np.ones((2, 1, 3, 3), np.int8), bias_q=np.zeros(2, np.int32),
                  mult=np.array([2**30], np.int32), shift=np.array([36], np.int32), in_bits=8, w_bits=4, a_bits=4)
    return IntLayer(**{**fields, **change})


@pytest.mark.parametrize("change, message", [
    ({"stride": (0, 1)}, "stride must be two integers >= 1"),
    ({"dilation": (1, 0)}, "dilation must be two integers >= 1"),
    ({"padding": (-1, 0)}, "padding must be two integers >= 0"),
    ({"stride": (1.5, 1)}, "stride must be two integers"),
    ({"groups": 0}, "groups must be a positive integer"),
    ({"pool": (0, 1, 0)}, "needs kernel >= 1"),
    ({"pool": (2, 0, 0)}, "stride >= 1"),
    ({"pool": (2, 2, 2)}, "0 <= padding <= kernel / 2"),
    ({"pool": (2, 2, 0), "a_bits": None}, "a max-pool needs codes to pool"),
    ({"kind": "fc", "w_q": np.ones((2, 9), np.int8), "padding": (1, 1)}, "an fc layer has no stride, padding"),
    ({"kind": "fc", "w_q": np.ones((2, 9), np.int8), "groups": 3}, "an fc layer has no stride, padding"),
])
def test_geometry_out_of_range_is_refused(change, message):
    with pytest.raises(ModelFileError, match=message.replace("(", r"\(")):
        _conv(**change)


def test_geometry_out_of_range_in_a_file_is_one_line(cli, valid, tmp_path):
    m = _members(valid)
    meta = json.loads(m["meta.json"])
    meta["layers"][0]["stride"] = [0, 0]  # was a ZeroDivisionError traceback from load, info and eval
    m["meta.json"] = json.dumps(meta).encode()
    bad = tmp_path / "stride.npz"
    _write(bad, m)
    code, _, err = cli("info", bad)
    assert code == 2 and len(err) == 1 and "stride must be two integers >= 1" in err[0]


# --- every case of the model-file validation issue: one line, exit 2, from load, info and eval --------------------

def _mutated(meta_change, members: dict[str, bytes]) -> dict[str, bytes]:
    meta = json.loads(members["meta.json"])
    meta_change(meta)
    return {**members, "meta.json": json.dumps(meta).encode()}


def _set(i: int, key: str, value):
    return lambda meta: meta["layers"][i].__setitem__(key, value)


def _zero_fc_file(path) -> None:
    """A checksum-valid file of one fc layer with 2^28 zero weights (256 MB unpacked, ~260 KB packed)."""
    n = 1 << 28
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|i1", "fortran_order": False, "shape": (1, n)})
    sha, small = hashlib.sha256(header.getvalue()), {}
    for key, value in (("bias_q", np.zeros(1, np.int32)), ("mult", np.array([2**30], np.int32)),
                       ("shift", np.array([31], np.int32))):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, value)
        small[f"fc.{key}.npy"] = buf.getvalue()
    chunk = bytes(MB)
    for _ in range(n // MB):
        sha.update(chunk)
    meta = {"format": "fiqnn-intgraph", "arith_version": 1, "in_shape": [1, 1 << 14, 1 << 14], "num_classes": 1,
            "info": {}, "layers": [{"name": "fc", "kind": "fc", "in_bits": 8, "w_bits": 8, "a_bits": None,
                                    "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1,
                                    "pool": None, "inputs": []}],
            "sha256": {"fc.w_q.npy": sha.hexdigest(), **{k: hashlib.sha256(v).hexdigest() for k, v in small.items()}}}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("fc.w_q.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            for _ in range(n // MB):
                f.write(chunk)
        for k, v in small.items():
            z.writestr(k, v)
        z.writestr("meta.json", json.dumps(meta))


CASES = {  # case -> (how to make the file from the digits student's model.npz members, expected message)
    "stride 0": (lambda m: _mutated(_set(0, "stride", [0, 1]), m), "stride must be two integers >= 1"),
    "dilation 0": (lambda m: _mutated(_set(0, "dilation", [0, 0]), m), "dilation must be two integers >= 1"),
    "pool kernel 0": (lambda m: _mutated(_set(1, "pool", [0, 1, 0]), m), "needs kernel >= 1"),
    "pool padding >= kernel": (lambda m: _mutated(_set(1, "pool", [2, 2, 2]), m), "0 <= padding <= kernel / 2"),
    "max-pool on the logits": (lambda m: _mutated(_set(-1, "pool", [1, 1, 0]), m), "a max-pool needs codes"),
}


@pytest.fixture
def student_files(digits_student, tmp_path):
    """``make(case) -> run dir`` holding a copy of the digits student's config and the case's model.npz."""
    members = _members(digits_student / "model.npz")

    def make(case: str):
        run = tmp_path / case.replace(" ", "_").replace(">=", "ge")
        run.mkdir()
        (run / "config.json").write_bytes((digits_student / "config.json").read_bytes())
        model = run / "model.npz"
        if case == "zip bomb":
            _write(model, members, big=("pad.npy", 128 * MB))
        elif case == "2^40 header":
            m = dict(members)
            m["conv1.w_q.npy"] = _npy({"descr": "|i1", "fortran_order": False, "shape": (2**40,)}, b"\0" * 72)
            _write(model, m)
        elif case == "2^28 zero weights":
            _zero_fc_file(model)
        else:
            _write(model, CASES[case][0](members))
        return run

    return make


@pytest.mark.parametrize("case, message", [*((c, msg) for c, (_, msg) in CASES.items()),
                                           ("zip bomb", "would unpack to"), ("2^40 header", "declares shape"),
                                           ("2^28 zero weights", "would unpack to")])
def test_each_bad_model_file_is_one_line_from_load_info_and_eval(cli, student_files, case, message):
    import time

    run = student_files(case)
    t0 = time.perf_counter()
    peak, msg = _peak_while_refused(run / "model.npz")
    assert message in msg and "\n" not in msg
    assert peak < 200 * MB and time.perf_counter() - t0 < 2.0, (peak, time.perf_counter() - t0)
    for cmd in (["info", run / "model.npz"], ["eval", run / "model.npz"], ["eval", run, "--backend", "c"]):
        code, _, err = cli(*cmd)
        assert code == 2 and len(err) == 1 and err[0].startswith("fiqnn: error: ") and message in err[0], (cmd, err)
