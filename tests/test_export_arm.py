"""The C export on ARM: 32-bit ARM Linux under qemu (bit-exact), and a Cortex-M4 build (size only).

Needs Debian's gcc-arm-linux-gnueabihf + qemu-user and gcc-arm-none-eabi; each test
skips, naming what is missing, when they are not installed.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from fiqnn.export.c99 import CFLAGS, export_c, run_c
from fiqnn.integer.execute import run
from fiqnn.train.convert import convert

ARM_LINUX_CC, QEMU, M4_CC = "arm-linux-gnueabihf-gcc", "qemu-arm", "arm-none-eabi-gcc"


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
