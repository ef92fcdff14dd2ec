"""LiteRT (TFLite) export: LiteRT with XNNPACK equals the numpy executor bit for bit where prove()
says so, the proof agrees with the runtime channel by channel, and what it cannot prove is refused."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tflite")

from fiqnn.export import tflite as T  # noqa: E402
from fiqnn.integer.arith import INT32_MAX, quantize_multiplier  # noqa: E402
from fiqnn.integer.execute import run  # noqa: E402
from fiqnn.integer.graph import (  # noqa: E402
    IntAdd,
    IntAffine,
    IntAvgPool,
    IntChannels,
    IntConcat,
    IntGraph,
    IntLayer,
    IntLut,
    IntMaxPool,
    IntMul,
)
from fiqnn.train.convert import convert  # noqa: E402
from tests.test_export_onnx_ops import OP_CASES  # noqa: E402
from tests.test_export_ops import _layer, ops_graph, residual_graph  # noqa: E402


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("scale", ["per-layer", "per-channel"])
def test_litert_xnnpack_bit_exact_on_digits(digits, fold_student, bits, scale):
    data = digits[1]
    graph = convert(fold_student(bits, scale))
    proofs = T.prove(graph, "xnnpack")
    assert set(proofs) == {n.name for n in graph.layers}
    failures = T.unproven(proofs)
    if failures:  # measured: only W8A8 per-channel, a float32 limit on 255 thresholds per channel
        assert bits == 8 and all("float32" in f for f in failures)
        with pytest.raises(T.UnprovenLayerError) as e:
            T.to_tflite(graph)
        assert _one_line(e).startswith("cannot prove the xnnpack export exact: layer ")
        p = T.integer_fallback(graph)  # the exact fallback: those layers in integer ops, per-channel pairs
        assert set(p.fallbacks) == {f.split(",")[0].split()[1] for f in failures}
        assert any(len(np.unique(p.steps[name].add.shift)) > 1 for name in p.fallbacks)
        assert np.array_equal(T.run_litert(p, data.test.x_q, fallback="integer"), run(graph, data.test.x_q))
        return
    got = T.run_litert(graph, data.test.x_q)
    assert got.dtype == np.int32 and got.shape == (360, 10)
    assert np.array_equal(got, run(graph, data.test.x_q))


def _sweep_graph(rng, a_bits: int, channels: int = 16) -> tuple[IntGraph, np.ndarray, np.ndarray]:
    """Two input pixels (x1, x2) and an fc layer acc = bias + 127 x1 + x2: 65536 images reach every
    accumulator of a 32,640-wide range per channel; an identity logits layer shows the codes."""
    span = 127 * 255 + 255
    qmax = 2**a_bits - 1
    pairs = [quantize_multiplier(a) for a in 2 * qmax / span * rng.uniform(0.5, 2, channels)]
    bias = (-span / 2 * rng.uniform(0.2, 1.2, channels)).astype(np.int32)
    w = np.stack([np.full(channels, 127, np.int8), np.ones(channels, np.int8)], 1)
    l1 = IntLayer(name="l1", kind="fc", w_q=w, bias_q=bias, mult=np.array([m for m, _ in pairs], np.int32),
                  shift=np.array([s for _, s in pairs], np.int32), in_bits=8, w_bits=8, a_bits=a_bits)
    l2 = IntLayer(name="l2", kind="fc", w_q=np.eye(channels, dtype=np.int8), bias_q=np.zeros(channels, np.int32),
                  mult=np.array([2**30], np.int32), shift=np.array([30], np.int32), in_bits=a_bits, w_bits=2,
                  a_bits=None)
    x = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).reshape(-1, 2, 1, 1)
    acc = bias.astype(np.int64) + 127 * x[:, 0, 0].astype(np.int64) + x[:, 1, 0].astype(np.int64)
    return IntGraph((2, 1, 1), channels, (l1, l2)), x.astype(np.uint8), acc


@pytest.mark.parametrize("target", T.TARGETS)
@pytest.mark.parametrize("a_bits,perturb", [(2, False), (4, False), (8, False), (4, True), (8, True)])
def test_emulation_and_proof_agree_with_litert_on_every_accumulator(target, a_bits, perturb):
    """The numpy emulation of the target's requantization equals LiteRT on a whole accumulator
    range, and prove() holds for a channel exactly when LiteRT equals (E4) on it."""
    rng = np.random.default_rng(a_bits + 10 * perturb)
    graph, x, acc = _sweep_graph(rng, a_bits)
    p = T.plan(graph, target)
    step = p.steps["l1"]
    if perturb:  # scales the proof did not pick: the emulation must still be exact
        step.filter_scale = (step.filter_scale * rng.uniform(0.97, 1.03, 16)).astype(np.float32)
    data, failures = T.to_tflite(p, target, allow_unproven=True)
    got = T.run_litert(data, x, target=target, batch_size=len(x))
    rule = T.xnnpack_codes if target == "xnnpack" else T.builtin_codes
    q = step.out_q
    want = rule(acc, step.in_q.scale, step.filter_scale, q.scale, q.zp, step.act) - q.zp
    if step.clamp is not None:  # builtin and tflm: RELU at scale 1.0, then a MINIMUM at code 2^A - 1
        want = np.minimum(want, step.clamp - q.zp)
    assert np.array_equal(got, want)
    exact = (got == run(graph, x)).all(axis=0)
    proof = T.prove(p, target)
    assert np.array_equal(proof["l1"].ok, exact)
    assert proof["l2"].holds
    if target == "xnnpack" and not perturb:
        assert exact.all() and failures == []
    if perturb:
        assert not exact.any()  # 3% off moves thresholds: the proof is not vacuous


def test_wrong_scale_fails_the_proof_and_litert_differs(digits, fold_student):
    data = digits[1]
    graph = convert(fold_student(4, "per-channel"))
    p = T.plan(graph)
    assert all(proof.holds for proof in T.prove(p).values())
    p.steps["conv1"].filter_scale = (p.steps["conv1"].filter_scale * 1.05).astype(np.float32)
    proofs = T.prove(p)
    assert not proofs["conv1"].holds and proofs["conv2"].holds
    with pytest.raises(T.UnprovenLayerError) as e:
        T.to_tflite(p)
    assert "layer conv1, channel " in _one_line(e)
    data_bytes, failures = T.to_tflite(p, allow_unproven=True)
    assert failures and all(f.startswith("layer conv1, channel ") for f in failures)
    assert not np.array_equal(T.run_litert(data_bytes, data.test.x_q), run(graph, data.test.x_q))


def test_huge_w8a8_accumulator_is_refused_naming_layer_and_channel():
    """fan-in 4096 of 8-bit weights and codes: accumulators beyond 2^24, 255 thresholds; no float32
    scale rounds them all as (E4) does."""
    rng = np.random.default_rng(5)
    big = _layer(rng, "big", "fc", (4, 4096), 8, 8, 8)
    logits = _layer(rng, "out", "fc", (3, 4), 8, 8, None)
    graph = IntGraph((4096, 1, 1), 3, (big, logits))
    assert big.acc_bound() > 2**24
    proof = T.prove(graph)["big"]
    assert not proof.ok.any()
    with pytest.raises(T.UnprovenLayerError) as e:
        T.to_tflite(graph)
    msg = _one_line(e)
    assert "layer big, channel 0: " in msg and "float32" in msg and "allow_unproven" in msg
    assert len(T.to_tflite(graph, allow_unproven=True)[1]) == 4


def _geometry_graph(seed: int, w_bits: int) -> IntGraph:
    """3x13x11 input: conv stride (1, 2) + padded fused pool, dilated conv (PAD), depthwise conv
    (SAME), a ceil-mode max-pool node, a global average pool, fc, logits."""
    rng = np.random.default_rng(seed)
    gap = IntAvgPool(name="gap", kernel=(4, 2), stride=(1, 1), padding=(0, 0),
                     mult=np.array([quantize_multiplier(2 / 8)[0]], np.int32),
                     shift=np.array([quantize_multiplier(2 / 8)[1]], np.int32), in_bits=4, a_bits=5)
    layers = (
        _layer(rng, "c1", "conv", (6, 3, 3, 3), 8, 8, 4, stride=(1, 2), padding=(1, 1), pool=(3, 2, 1)),
        _layer(rng, "c2", "conv", (8, 6, 3, 3), 4, w_bits, 3, padding=(2, 2), dilation=(2, 2)),
        _layer(rng, "dw", "conv", (8, 1, 3, 3), 3, w_bits, 4, padding=(1, 1), groups=8),
        IntMaxPool(name="mp", kernel=(2, 2), stride=(2, 2), padding=(1, 1), a_bits=4, ceil_mode=True),
        gap,
        _layer(rng, "fc", "fc", (6, 8), 5, w_bits, 6),
        _layer(rng, "out", "fc", (5, 6), 6, 8, None),
    )
    return IntGraph((3, 13, 11), 5, layers)


@pytest.mark.parametrize("w_bits", [2, 4, 8])
def test_every_exported_op_is_exact(w_bits, tmp_path):
    graph = _geometry_graph(w_bits, w_bits)
    images = np.random.default_rng(1).integers(0, 256, (96, 3, 13, 11)).astype(np.uint8)
    ref = run(graph, images)
    codes = {}
    run(graph, images, trace=lambda name, a: codes.setdefault(name, a))
    assert all(len(np.unique(codes[n])) > 2 for n in ("c1", "c2", "dw", "mp", "gap", "fc"))  # not all clamped
    assert T.unproven(T.prove(graph)) == []
    assert T.export_tflite(graph, tmp_path / "m.tflite") == []
    assert np.array_equal(T.run_litert(tmp_path / "m.tflite", images), ref)
    assert np.array_equal(T.run_litert(graph, images, threads=2, batch_size=40), ref)


def test_builtin_target_reports_channels_and_runs():
    """LiteRT's own kernels round twice (gemmlowp); prove() names the channels that breaks."""
    graph, x, _ = _sweep_graph(np.random.default_rng(3), 4)
    proofs = T.prove(graph, "builtin")
    failing = T.unproven(proofs)
    assert all("double rounding" in f for f in failing)
    ok = proofs["l1"].ok
    got = T.run_litert(graph, x, target="builtin", allow_unproven=True, batch_size=len(x))
    assert np.array_equal((got == run(graph, x)).all(axis=0), ok)


@pytest.mark.parametrize("case, args", OP_CASES)
@pytest.mark.parametrize("target", ["xnnpack", "builtin"])
def test_every_node_of_the_onnx_op_cases_is_exact(case, args, target):
    """(E9)-(E15), each on the cases of tests/test_export_onnx_ops.py (adds up to shift 62, average
    pools with every divisor, the every-op graph): proven and equal to numpy."""
    graph, x = case(*args)
    assert T.unproven(T.prove(T.integer_fallback(graph, target), target)) == []
    data, _ = T.to_tflite(graph, target, fallback="integer")
    assert np.array_equal(T.run_litert(data, x, target=target), run(graph, x))


def _tables_graph() -> IntGraph:
    """(E11)-(E15) on the input's codes, no conv (whose single rounding the tflm target cannot prove):
    lut, affine (negative multipliers too), mul, concat with a copied and two requantized inputs, a
    channel shuffle; signed codes between them."""
    rng = np.random.default_rng(4)
    lut = IntLut(name="l", table=rng.integers(-32, 32, 256).astype(np.int16), in_bits=8, a_bits=6, signed=True,
                 inputs=("input",))
    mult, shift = np.array([2**30, -(2**30), 3 * 2**28], np.int32), np.array([35, 34, 31], np.int32)
    aff = IntAffine(name="a", mult=mult, shift=shift, offset=np.array([-2**33, 2**37, 0], np.int64), in_bits=8,
                    a_bits=4, inputs=("input",))
    mul = IntMul(name="m", inputs=("l", "a"), mult=np.array([2**30], np.int32), shift=np.array([33], np.int32),
                 a_bits=5, signed=True)
    cat = IntConcat(name="c", inputs=("m", "input", "l"), mult=np.array([2**30, 2**31 - 1, 2**30], np.int32),
                    shift=np.array([30, 32, 31], np.int32), a_bits=5, signed=True)
    ch = IntChannels(name="ch", index=np.array([8, 0, 3, 3, 5, 1], np.int32), a_bits=5, signed=True)
    eye = np.eye(6 * 4 * 5, dtype=np.int8)
    head = IntLayer(name="readout", kind="fc", w_q=eye, bias_q=np.zeros(len(eye), np.int32),
                    mult=np.array([2**30], np.int32), shift=np.array([30], np.int32), in_bits=5, w_bits=2, a_bits=None,
                    in_signed=True)
    return IntGraph((3, 4, 5), len(eye), (lut, aff, mul, cat, ch, head))


@pytest.mark.parametrize("target", ["xnnpack", "builtin", "tflm"])
def test_tables_run_in_every_target(target):
    """The table spellings are int32 and GATHER only: TFLite Micro runs them too (and its logits'
    halving sums over an odd width, 120 = 8 x 15)."""
    graph = _tables_graph()
    x = np.random.default_rng(0).integers(0, 256, (200, 3, 4, 5)).astype(np.uint8)
    x[0], x[1] = 0, 255
    codes = {}
    ref = run(graph, x, trace=lambda name, a: codes.setdefault(name, a))
    assert all(len(np.unique(codes[n])) > 6 for n in ("l", "m", "c")) and len(np.unique(codes["a"])) > 3
    data, lines = T.to_tflite(graph, target)
    assert lines == []
    if target == "tflm":
        pytest.importorskip("tflite_micro")
        assert np.array_equal(T.run_tflm(data, x), ref)
    else:
        assert np.array_equal(T.run_litert(data, x, target=target), ref)


@pytest.mark.parametrize("target", ["xnnpack", "builtin", "tflm"])
def test_conv_logits_on_a_map_and_biases_past_int32(target):
    """A conv logits layer whose window is smaller than its padded map (its accumulators, the acc
    spelling), reading 2-bit codes (from a table, which every target computes) with biases at the
    ends of (E6)'s range, so that bias' (the zero point folded in) leaves int32: two ADDs."""
    rng = np.random.default_rng(9)
    lut = IntLut(name="two", table=(np.arange(256) // 64).astype(np.int16), in_bits=8, a_bits=2)
    head = _layer(rng, "out", "conv", (2, 3, 3, 3), 2, 8, None, padding=(1, 1), stride=(4, 5))
    w = np.abs(head.w_q.astype(np.int64))
    bias = np.array([INT32_MAX - 3 * int(w[0].sum()), -(2**31) + 3 * int(w[1].sum())], np.int32)
    head = IntLayer(**{**head.__dict__, "w_q": np.stack([w[0], -w[1]]).astype(np.int8), "bias_q": bias})
    graph = IntGraph((3, 4, 5), 2, (lut, head))
    x = rng.integers(0, 256, (64, 3, 4, 5)).astype(np.uint8)
    x[0], x[1] = 0, 255
    ref = run(graph, x)
    assert ref[1, 0] > 2**31 - 2**12 and ref[1, 1] < -(2**31) + 2**12  # near the int32 limits
    assert len(T._logits_bias(T.plan(graph, target).steps["out"])[1]) == 2  # bias' would leave int32
    data, lines = T.to_tflite(graph, target)
    assert lines == []
    got = T.run_tflm(data, x) if target == "tflm" else T.run_litert(data, x, target=target)
    assert np.array_equal(got, ref)


def _avg_graph() -> IntGraph:
    rng = np.random.default_rng(0)
    c1 = _layer(rng, "c1", "conv", (4, 1, 3, 3), 8, 4, 4)
    mult, shift = zip(*(quantize_multiplier(1 / d) for d in range(1, 10)))
    avg = IntAvgPool(name="avg", kernel=(3, 3), stride=(1, 1), padding=(1, 1), mult=np.array(mult, np.int32),
                     shift=np.array(shift, np.int32), in_bits=4, a_bits=4, count_include_pad=False)
    return IntGraph((1, 5, 5), 3, (c1, avg, _layer(rng, "out", "fc", (3, 36), 4, 4, None)))


@pytest.mark.parametrize("graph,name,words", [
    (lambda: ops_graph(0, 4), "c3", "grouped conv"),
    (_avg_graph, "avg", "table would have 408 entries (at most 400)"),
])
def test_unsupported_nodes_are_refused_naming_the_node(graph, name, words, monkeypatch):
    monkeypatch.setattr(T, "TABLE_ENTRIES", 400)
    with pytest.raises(T.TFLiteExportError) as e:
        T.to_tflite(graph())
    msg = _one_line(e)
    assert f" {name}:" in msg and words in msg


def test_bad_input_and_target():
    graph, x, _ = _sweep_graph(np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match="uint8"):
        T.run_litert(graph, x.astype(np.int16))
    with pytest.raises(T.TFLiteExportError, match="unknown LiteRT target"):
        T.plan(graph, "gpu")


def test_signed_codes_padded_max_pool_and_conv_logits():
    """8-bit signed codes (zero point 0, no activation), a padded max-pool on them (PADV2 of -128),
    and a conv logits layer covering its whole map (BATCH_MATMUL on the NHWC rows)."""
    rng = np.random.default_rng(0)
    c1 = _layer(rng, "c1", "conv", (6, 3, 3, 3), 8, 6, 8, padding=(1, 1))
    c1 = IntLayer(**{**c1.__dict__, "signed": True, "bias_q": (c1.bias_q - 3000).astype(np.int32)})
    mp = IntMaxPool(name="mp", kernel=(3, 3), stride=(2, 2), padding=(1, 1), a_bits=8, signed=True)
    c2 = _layer(rng, "c2", "conv", (5, 6, 4, 4), 8, 6, None)
    graph = IntGraph((3, 7, 7), 5, (c1, mp, IntLayer(**{**c2.__dict__, "in_signed": True})))
    x = rng.integers(0, 256, (64, 3, 7, 7)).astype(np.uint8)
    codes = {}
    ref = run(graph, x, trace=lambda name, a: codes.setdefault(name, a))
    assert codes["c1"].min() < -100 and codes["c1"].max() > 100
    assert T.unproven(T.prove(graph)) == []
    assert np.array_equal(T.run_litert(graph, x), ref)
    assert np.array_equal(T.to_litert_input(x)[0, 2, 1], x[0, :, 2, 1].astype(np.int16) - 128)


@pytest.mark.parametrize("w_bits", [2, 4, 8])
def test_residual_adds_are_exact(w_bits):
    """(E9) adds of codes + accumulators and of two accumulators (a 1x1 stride-2 shortcut), the
    accumulators of a 3x3, a 1x1 and a strided conv: proven, and LiteRT equals fiqnn.run."""
    graph = residual_graph(10 + w_bits, w_bits)
    images = np.random.default_rng(w_bits).integers(0, 256, (256, 3, 9, 10)).astype(np.uint8)
    proofs = T.prove(graph)
    assert {"add1", "add2", "c3", "ds", "c5"} <= set(proofs) and T.unproven(proofs) == []
    p = T.plan(graph)
    assert p.steps["c3"].op == "acc" and p.steps["add1"].op == "add" and p.steps["add1"].in_qs[0] is None
    codes = {}
    ref = run(graph, images, trace=lambda name, a: codes.setdefault(name, a))
    assert all(len(np.unique(codes[n])) > 4 for n in ("add1", "add2"))
    assert np.array_equal(T.run_litert(graph, images), ref)
    assert np.array_equal(T.run_litert(graph, images, threads=2, batch_size=100), ref)


def _add_sweep_graph(a_bits: int, signed: bool, betas: tuple[float, float]) -> IntGraph:
    """65536 images of two pixels (x1, x2): accumulators acc = bias + 127 x1 + x2 (a 32,640-wide range
    per channel) added to the input codes (x1, x2) with factors ``betas``; an identity logits layer
    shows the add's codes."""
    span = 127 * 255 + 255
    bias = np.array([-span // 2, -span // 3], np.int32)
    w = np.array([[127, 1], [127, 1]], np.int8)
    acc = IntLayer(name="acc", kind="fc", w_q=w, bias_q=bias, mult=np.array([2**30], np.int32),
                   shift=np.array([30], np.int32), in_bits=8, w_bits=8, a_bits=None)
    _, shift = quantize_multiplier(max(betas))
    mult = np.array([int(np.floor(b * 2.0**shift + 0.5)) for b in betas], np.int32)
    add = IntAdd(name="add", inputs=("acc", "input"), mult=mult, shift=np.array([shift], np.int32), a_bits=a_bits,
                 signed=signed)
    out = IntLayer(name="out", kind="fc", w_q=np.eye(2, dtype=np.int8), bias_q=np.zeros(2, np.int32),
                   mult=np.array([2**30], np.int32), shift=np.array([30], np.int32), in_bits=a_bits, w_bits=2,
                   a_bits=None, in_signed=signed, inputs=("add",))
    return IntGraph((2, 1, 1), 2, (acc, add, out))


def _two_pixels() -> np.ndarray:
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1)
    return grid.reshape(-1, 2, 1, 1).astype(np.uint8)


@pytest.mark.parametrize("a_bits,signed,betas,low_shift", [
    (4, False, (15 / 32640 * 1.37, 0.6), True),  # shift < 32: the int64 clamp, then * 2^(32 - shift)
    (8, False, (255 / 32640 * 0.71, 1.3), True),
    (2, False, (3 / 9000, 3 / 255 * 0.6), False),  # shift >= 32: high word, RIGHT_SHIFT, int32 clamp
    (5, True, (31 / 32640 * 1.9, 0.02), False),  # signed 5-bit codes: clamp at -16 and 15
])
def test_add_spelling_is_exact_and_its_proof_is_not_vacuous(a_bits, signed, betas, low_shift):
    """LiteRT's int64 ops compute the file's add chain (add_chain, emulated) on every input; with the
    planned constants that is (E9) and prove() holds; with the rounding half dropped from the constant
    (floor instead of round half up) prove() fails naming the add, and LiteRT differs from (E9) on
    exactly the images where the emulation says it does."""
    graph = _add_sweep_graph(a_bits, signed, betas)
    x = _two_pixels()
    ref = run(graph, x)
    assert len(np.unique(ref)) == 2**a_bits  # every code of the add is reached
    p = T.plan(graph)
    assert (p.steps["add"].add.shift[0] < 32) == low_shift
    assert T.unproven(T.prove(p)) == []
    assert np.array_equal(T.run_litert(p, x, batch_size=len(x)), ref)
    spell = p.steps["add"].add
    acc = 127 * x[:, 0, 0].astype(np.int64) + x[:, 1, 0] + graph.layers[0].bias_q.astype(np.int64)[None]
    stored = x[:, :, 0, 0].astype(np.int64) - 128
    assert np.array_equal(T.add_chain([acc, stored], spell) - p.steps["add"].out_q.zp, ref)
    spell.const = spell.const - (np.int64(1) << (spell.shift - 1)).astype(object)
    proof = T.prove(p)["add"]
    assert not proof.ok.any() and proof.why[0].startswith("node add, channel 0: at stored sum ")
    with pytest.raises(T.UnprovenLayerError) as e:
        T.to_tflite(p)
    assert "node add, channel 0: " in _one_line(e)
    got = T.run_litert(p, x, batch_size=len(x), allow_unproven=True)
    assert np.array_equal(got, T.add_chain([acc, stored], spell) - p.steps["add"].out_q.zp)
    assert (got != ref).any(axis=0).all()


def test_tflm_refuses_what_it_cannot_run():
    """TFLite Micro has no int32-output BATCH_MATMUL: the integer fallback and accumulator layers are
    refused for it in one line, naming the node."""
    rng = np.random.default_rng(5)
    big = _layer(rng, "big", "fc", (4, 4096), 8, 8, 8)
    graph = IntGraph((4096, 1, 1), 3, (big, _layer(rng, "out", "fc", (3, 4), 8, 8, None)))
    with pytest.raises(T.TFLiteExportError, match="node big: the integer fallback .* TFLite Micro does not run"):
        T.to_tflite(graph, "tflm", fallback="integer")
    with pytest.raises(T.TFLiteExportError, match="accumulators feed an add.*TFLite Micro"):
        T.plan(residual_graph(18, 8), "tflm")


@pytest.mark.parametrize("target", ["xnnpack", "builtin"])
def test_integer_fallback_makes_unproven_layers_exact(target):
    """What the float32 proof cannot prove (a huge W8A8 layer under XNNPACK; double rounding under
    the builtin kernels) is respelled in integer ops on fallback='integer', named, and exact."""
    rng = np.random.default_rng(5)
    big = _layer(rng, "big", "fc", (4, 4096), 8, 8, 8)
    graph = IntGraph((4096, 1, 1), 3, (big, _layer(rng, "out", "fc", (3, 4), 8, 8, None)))
    x = rng.integers(0, 256, (64, 4096, 1, 1)).astype(np.uint8)
    data, lines = T.to_tflite(graph, target, fallback="integer")
    assert lines == [f"layer big: written with the integer fallback (exact: int32 and int64 ops, not {target}'s "
                     "float32 requantization)"]
    assert T.unproven(T.prove(T.integer_fallback(graph, target), target)) == []
    assert np.array_equal(T.run_litert(data, x, target=target), run(graph, x))
    res = residual_graph(18, 8)
    images = np.random.default_rng(0).integers(0, 256, (64, 3, 9, 10)).astype(np.uint8)
    p = T.integer_fallback(res, target)
    assert (set(p.fallbacks) == set()) == (target == "xnnpack")
    assert np.array_equal(T.run_litert(res, images, target=target, fallback="integer"), run(res, images))


def test_integer_fallback_spells_refused_layers():
    """A grouped conv and 5-bit signed codes out of a conv have no fused TFLite spelling: refused,
    naming the fallback, which computes them exactly."""
    rng = np.random.default_rng(0)
    c1 = _layer(rng, "c1", "conv", (6, 3, 3, 3), 8, 6, 5, padding=(1, 1))
    c1 = IntLayer(**{**c1.__dict__, "signed": True, "bias_q": (c1.bias_q - 300).astype(np.int32)})
    c2 = _layer(rng, "c2", "conv", (8, 3, 3, 3), 5, 4, 4, padding=(1, 1), groups=2, stride=(2, 1))
    c2 = IntLayer(**{**c2.__dict__, "in_signed": True})
    graph = IntGraph((3, 7, 7), 5, (c1, c2, _layer(rng, "out", "fc", (5, 8 * 4 * 7), 4, 8, None)))
    x = rng.integers(0, 256, (64, 3, 7, 7)).astype(np.uint8)
    codes = {}
    ref = run(graph, x, trace=lambda name, a: codes.setdefault(name, a))
    assert codes["c1"].min() == -16 and codes["c1"].max() == 15 and len(np.unique(codes["c2"])) > 4
    with pytest.raises(T.TFLiteExportError) as e:
        T.to_tflite(graph)
    assert " c1: 5-bit signed codes" in _one_line(e) and "fallback='integer'" in _one_line(e)
    data, lines = T.to_tflite(graph, fallback="integer")
    assert [line.split(":")[0] for line in lines] == ["layer c1", "layer c2"]
    assert np.array_equal(T.run_litert(data, x), ref)
    assert np.array_equal(T.run_litert(ops_graph(0, 4), images := rng.integers(0, 256, (32, 3, 13, 11)).astype(
        np.uint8), fallback="integer"), run(ops_graph(0, 4), images))
