"""The C export on an emulated Cortex-M3, M4 or M7 (qemu-system-arm): logits and instruction counts.

:func:`run_cortex_m` builds the exported ``model.c`` with ``arm-none-eabi-gcc`` for the chosen
core beside a bare-metal harness (a vector table, a reset handler, Arm semihosting for file I/O)
and runs it on QEMU's MPS2 board of that core (:data:`MACHINES`: the Cortex-M4 one is
``mps2-an386``; each has 4 MiB of code RAM at 0 and 4 MiB of data RAM at 0x20000000). The
harness reads the images from a host file, writes the int32 logits back and, built with
``-DFIQNN_PROFILE``, the SysTick counts between nodes.

Instruction counts: under ``-icount shift=0`` QEMU advances its virtual clock by exactly 1 ns
per executed instruction, and the board's SysTick counts its 25 MHz processor clock on that
virtual clock; one tick is 40 instructions. The harness first times a loop of a known
instruction count and the result states instructions per tick as measured (``calibration``),
so the counts are ``ticks * instructions_per_tick``, each node's within one tick. QEMU models no
pipeline, caches or wait states: these are instructions, not cycles.

Needs Debian's gcc-arm-none-eabi (with libnewlib-arm-none-eabi for memcpy/memset) and
qemu-system-arm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..integer.execute import as_graph, check_input
from .c99 import CFLAGS, CompilerError, export_c

CC, QEMU = "arm-none-eabi-gcc", "qemu-system-arm"
# The QEMU board of each core: the same memory map, the core is the board's.
MACHINES = {"cortex-m3": "mps2-an385", "cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500"}
# A loop of CALIBRATION_LOOPS iterations of two instructions (subs, bne) times the tick.
CALIBRATION_LOOPS = 1_000_000

START = r"""/* Reset: copy .data from its load address, zero .bss, call main, exit with its status. */
    .syntax unified
    .thumb
    .section .vectors, "a"
    .word __stack_top
    .word fiqnn_reset
    .rept 14
    .word fiqnn_fault
    .endr

    .text
    .thumb_func
    .global fiqnn_reset
fiqnn_reset:
    ldr r0, =__data_load
    ldr r1, =__data_start
    ldr r2, =__data_end
1:  cmp r1, r2
    bhs 2f
    ldr r3, [r0], #4
    str r3, [r1], #4
    b 1b
2:  ldr r1, =__bss_start
    ldr r2, =__bss_end
    movs r3, #0
3:  cmp r1, r2
    bhs 4f
    str r3, [r1], #4
    b 3b
4:  bl main
    bl fiqnn_exit

    .thumb_func
fiqnn_fault:
    movs r0, #3
    bl fiqnn_exit

/* fiqnn_spin(n): n iterations of two instructions (the tick calibration). */
    .thumb_func
    .global fiqnn_spin
fiqnn_spin:
5:  subs r0, r0, #1
    bne 5b
    bx lr
"""

LINK = """/* QEMU mps2-an386: code RAM at 0 (the vector table first), data RAM at 0x20000000. */
MEMORY
{
    CODE (rx) : ORIGIN = 0x00000000, LENGTH = 4M
    DATA (rwx) : ORIGIN = 0x20000000, LENGTH = 4M
}
SECTIONS
{
    .text : { KEEP(*(.vectors)) *(.text*) *(.rodata*) . = ALIGN(4); } > CODE
    .data : { __data_start = .; *(.data*) . = ALIGN(4); __data_end = .; } > DATA AT > CODE
    __data_load = LOADADDR(.data);
    .bss (NOLOAD) : { __bss_start = .; *(.bss*) *(COMMON) . = ALIGN(4); __bss_end = .; } > DATA
    __stack_top = ORIGIN(DATA) + LENGTH(DATA);
}
"""

HARNESS = r"""/* Bare-metal harness: images.u8 -> logits.i32 (and, profiled, ticks.u32) over Arm semihosting.
 * ticks.u32 starts with the calibration (the ticks of fiqnn_spin(CALIBRATION)), then one row of
 * FIQNN_NUM_NODES tick counts per image, one per node (node 0's includes the input transpose). */
#include <stdint.h>
#include "model.h"

#define CALIBRATION $loops
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

void fiqnn_exit(int status);
void fiqnn_spin(uint32_t n);
int main(void);

static int semihost(int op, void *args)
{
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void fiqnn_exit(int status)
{
    uint32_t args[2];
    args[0] = 0x20026u;  /* ADP_Stopped_ApplicationExit */
    args[1] = (uint32_t)status;
    semihost(0x20, args);  /* SYS_EXIT_EXTENDED */
    for (;;) {
    }
}

static int host_open(const char *name, uint32_t len, uint32_t mode)
{
    uint32_t args[3];
    args[0] = (uint32_t)name;
    args[1] = mode;
    args[2] = len;
    return semihost(0x01, args);
}

/* SYS_READ / SYS_WRITE: the number of bytes not transferred. */
static int host_io(int op, int fd, const void *buf, uint32_t len)
{
    uint32_t args[3];
    args[0] = (uint32_t)fd;
    args[1] = (uint32_t)buf;
    args[2] = len;
    return semihost(op, args);
}

static uint32_t ticks[FIQNN_NUM_NODES];
static uint32_t last;

static uint32_t elapsed(void)
{
    uint32_t now = SYST_CVR, d = (last - now) & 0xFFFFFFu;
    last = now;
    return d;
}

#ifdef FIQNN_PROFILE
void fiqnn_node_done(int j)
{
    ticks[j] += elapsed();
    last = SYST_CVR;
}
#endif

static uint8_t image[FIQNN_INPUT_SIZE];
static int32_t logits[FIQNN_NUM_CLASSES];

int main(void)
{
    int in = host_open("images.u8", 9, 1), out = host_open("logits.i32", 10, 5);
    int tk = host_open("ticks.u32", 9, 5), j;
    uint32_t calibration;
    if (in < 0 || out < 0 || tk < 0)
        return 2;
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 5u;  /* processor clock, no interrupt, enabled */
    last = SYST_CVR;
    fiqnn_spin(CALIBRATION);
    calibration = elapsed();
    if (host_io(0x05, tk, &calibration, 4) != 0)
        return 1;
    while (host_io(0x06, in, image, sizeof image) == 0) {
        for (j = 0; j < FIQNN_NUM_NODES; j++)
            ticks[j] = 0;
        last = SYST_CVR;
        if (fiqnn_run(image, logits) != 0)
            return 1;
        if (host_io(0x05, out, logits, sizeof logits) != 0 || host_io(0x05, tk, ticks, sizeof ticks) != 0)
            return 1;
    }
    return 0;
}
"""


def available() -> str | None:
    """None when the toolchain and QEMU are installed, else what is missing (one line)."""
    missing = [name for name in (CC, QEMU) if shutil.which(name) is None]
    return None if not missing else (f"needs {' and '.join(missing)} "
                                     "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")


def build(src_dir: str | os.PathLike, cpu: str = "cortex-m4", opt: str = "-O3", profile: bool = True,
          defines: tuple[str, ...] = ()) -> Path:
    """Compile the exported source in ``src_dir`` with the harness into ``fiqnn_m.elf``."""
    src = Path(src_dir)
    (src / "start.S").write_text(START)
    (src / "link.ld").write_text(LINK)
    (src / "harness.c").write_text(HARNESS.replace("$loops", str(CALIBRATION_LOOPS)))
    flags = [f for f in CFLAGS if f != "-O3"]
    cmd = [CC, f"-mcpu={cpu}", "-mthumb", "-mfloat-abi=soft", opt, *flags, *(["-DFIQNN_PROFILE"] * profile),
           *(f"-D{d}" for d in defines),
           "-ffunction-sections", "-nostartfiles", "--specs=nano.specs", "-T", str(src / "link.ld"),
           "-Wl,--gc-sections", "-o", str(src / "fiqnn_m.elf"),
           str(src / "start.S"), str(src / "harness.c"), str(src / "model.c"), "-lc", "-lgcc"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        first = (res.stderr.strip().splitlines() or ["(no output)"])[0]
        raise CompilerError(f"Cortex-M build failed: {first}")
    return src / "fiqnn_m.elf"


def size(elf: str | os.PathLike) -> dict[str, int]:
    """text, data and bss bytes of a linked image (arm-none-eabi-size)."""
    out = subprocess.run(["arm-none-eabi-size", str(elf)], check=True, capture_output=True, text=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def run_cortex_m(graph, x_q: np.ndarray, cpu: str = "cortex-m4", opt: str = "-O3",
                 defines: tuple[str, ...] = (), timeout: float = 3600.0, overlap: bool | None = None) -> dict:
    """Run ``graph`` on uint8 images on an emulated Cortex-M; logits and instruction counts.

    ``defines`` are macros for the build (``("FIQNN_PORTABLE",)``: no SIMD32 kernels), ``overlap``
    the arena plan's (:func:`fiqnn.export.c99.export_c`). Returns
    ``{"logits": (N, classes) int32, "instructions": (N, nodes) int64 (node j's count in
    column j; node 0's includes the input transpose), "instructions_per_tick": float,
    "size": {"text", "data", "bss"}}``.
    """
    if cpu not in MACHINES:
        raise CompilerError(f"no QEMU board for {cpu!r} here; choose one of {', '.join(MACHINES)}")
    graph = as_graph(graph)
    x_q = check_input(graph, x_q)
    with tempfile.TemporaryDirectory(prefix="fiqnn-m-") as tmp:
        elf = build(export_c(graph, tmp, overlap), cpu, opt, defines=defines)
        np.ascontiguousarray(x_q).tofile(Path(tmp) / "images.u8")
        res = subprocess.run([QEMU, "-M", MACHINES[cpu], "-nographic", "-monitor", "none", "-serial", "none",
                              "-semihosting-config", "enable=on,target=native", "-icount", "shift=0",
                              "-kernel", str(elf)], cwd=tmp, capture_output=True, text=True, timeout=timeout)
        if res.returncode:
            raise CompilerError(f"the Cortex-M run failed (exit {res.returncode}): {res.stderr.strip()[:200]}")
        logits = np.fromfile(Path(tmp) / "logits.i32", dtype="<i4").astype(np.int32)
        ticks = np.fromfile(Path(tmp) / "ticks.u32", dtype="<u4").astype(np.int64)
        per_tick = 2 * CALIBRATION_LOOPS / ticks[0]
        nodes = len(graph.layers)
        return {"logits": logits.reshape(len(x_q), graph.num_classes),
                "instructions": np.rint(ticks[1:].reshape(len(x_q), nodes) * per_tick).astype(np.int64),
                "instructions_per_tick": float(per_tick), "size": size(elf)}
