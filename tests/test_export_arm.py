"""The C export on ARM: 32-bit ARM Linux under qemu-user, Cortex-M3 and M4 under qemu-system-arm
(bit-exact, instruction counts), and a Cortex-M4 object's size.

Needs Debian's gcc-arm-linux-gnueabihf + qemu-user, gcc-arm-none-eabi (+ libnewlib-arm-none-eabi)
and qemu-system-arm; each test
skips, naming what is missing, when they are not installed.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from fiqnn.export import cortex_m
from fiqnn.export.c99 import CFLAGS, CompilerError, export_c, run_c
from fiqnn.integer.execute import run
from fiqnn.train.convert import convert

ARM_LINUX_CC, QEMU, M4_CC = "arm-linux-gnueabihf-gcc", "qemu-arm", "arm-none-eabi-gcc"
M4_SEEDS = 24  # random graphs on the emulated Cortex-M4 (bench/fuzz_backends.py --cortex-m runs more)


@pytest.fixture(scope="module")
def graphs(digits, fold_student):
    return digits[1], {bits: convert(fold_student(bits)) for bits in (2, 4, 8)}


@pytest.mark.skipif(shutil.which(ARM_LINUX_CC) is None or shutil.which(QEMU) is None,
                    reason=f"needs {ARM_LINUX_CC} and {QEMU} (apt-get install gcc-arm-linux-gnueabihf qemu-user)")
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_arm32_under_qemu_bit_exact(graphs, bits):
    data, g = graphs
    x_q = data.test.x_q
    got = run_c(g[bits], x_q, cc=ARM_LINUX_CC, runner=[QEMU, "-L", "/usr/arm-linux-gnueabihf"],
                flags=[*CFLAGS, "-static"])
    assert np.array_equal(got, run(g[bits], x_q))


@pytest.mark.skipif(shutil.which(M4_CC) is None, reason=f"needs {M4_CC} (apt-get install gcc-arm-none-eabi)")
def test_cortex_m4_builds(graphs, tmp_path):
    _, g = graphs
    src = export_c(g[4], tmp_path)
    obj = tmp_path / "model.o"
    subprocess.run([M4_CC, "-mcpu=cortex-m4", "-mthumb", "-Os", *CFLAGS[:1], *CFLAGS[2:], "-c",
                    str(src / "model.c"), "-o", str(obj)], check=True, capture_output=True)
    size = subprocess.run(["arm-none-eabi-size", str(obj)], check=True, capture_output=True, text=True).stdout
    text, data_, bss = (int(v) for v in size.splitlines()[1].split()[:3])
    assert text > 0 and bss >= 1


# The Cortex-M builds: M3 (the in-place kernels), M4 (SIMD32), M4 portable, M4 for size (compact).
BUILDS = (("cortex-m3", (), "-O3"), ("cortex-m4", (), "-O3"), ("cortex-m4", ("FIQNN_PORTABLE",), "-O3"),
          ("cortex-m4", (), "-Os"))


@pytest.mark.skipif(cortex_m.available() is not None, reason=str(cortex_m.available()))
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_cortex_m_under_qemu_bit_exact(graphs, bits):
    """On emulated Cortex-M3 (portable C) and M4 (SIMD32 kernels, -DFIQNN_PORTABLE, and the compact
    kernels of -Os), every test image's logits are numpy's; the M4's SIMD32 kernels run fewer
    instructions than the portable ones, which run fewer than the compact ones."""
    data, g = graphs
    x_q = data.test.x_q
    ref = run(g[bits], x_q)
    counts = {}
    for cpu, defines, opt in BUILDS:
        r = cortex_m.run_cortex_m(g[bits], x_q, cpu=cpu, defines=defines, opt=opt)
        assert np.array_equal(r["logits"], ref), (cpu, defines, opt)
        assert r["instructions_per_tick"] == 40.0  # QEMU's 25 MHz SysTick at 1 ns per instruction
        assert r["instructions"].shape == (len(x_q), len(g[bits].layers)) and (r["instructions"] > 0).all()
        counts[cpu, defines, opt] = r["instructions"].sum()
    assert counts["cortex-m4", (), "-O3"] < counts["cortex-m4", ("FIQNN_PORTABLE",), "-O3"] < \
        counts["cortex-m4", (), "-Os"]


@pytest.mark.skipif(cortex_m.available() is not None, reason=str(cortex_m.available()))
def test_cortex_m_outputs_over_their_inputs_are_exact():
    """The plan with every conv output over its input's rows already read, on the M3 and M4 (both
    kernel families there): numpy's logits."""
    from tests.test_export_c import overlap_graph

    graph = overlap_graph()
    x_q = np.random.default_rng(1).integers(0, 256, (16, 1, 24, 24), dtype=np.uint8)
    ref = run(graph, x_q)
    for cpu, defines, opt in BUILDS:
        assert np.array_equal(cortex_m.run_cortex_m(graph, x_q, cpu=cpu, defines=defines, opt=opt,
                                                    overlap=True)["logits"], ref), (cpu, defines, opt)


def test_cortex_m_refuses_an_unknown_core(graphs):
    with pytest.raises(CompilerError, match="no QEMU board"):
        cortex_m.run_cortex_m(graphs[1][4], graphs[0].test.x_q[:1], cpu="cortex-a53")


@pytest.mark.skipif(cortex_m.available() is not None, reason=str(cortex_m.available()))
def test_cortex_m4_agrees_with_the_oracle_on_random_graphs():
    """The differential fuzzer's graphs (every node kind, signed and unsigned codes, 2-8 bits) on
    the emulated Cortex-M4, whose build takes the SIMD32 kernels: the oracle's logits on every input."""
    from fiqnn.export.c99 import kernel_codes, simd32
    from tests import oracle
    from tests.graphgen import random_graph, random_inputs

    bad, simd = [], 0
    for seed in range(M4_SEEDS):
        graph = random_graph(seed)
        simd += sum(bool(simd32(layer, c)) for layer, c in zip(graph.int_layers(), kernel_codes(graph)))
        x_q = random_inputs(np.random.default_rng([seed, 1]), graph.in_shape, 16)
        if cortex_m.run_cortex_m(graph, x_q)["logits"].tolist() != oracle.run(graph, x_q):
            bad.append(seed)
    assert not bad, f"Cortex-M4 differs from the oracle on graphs {bad}"
    assert simd >= 5  # layers that took the SIMD32 kernel
