#!/usr/bin/python3
"""Which BLAS Debian's PyTorch runs on here, and which OpenBLAS core type fits this CPU.

  /usr/bin/python3 scripts/openblas_core.py          # prints the OPENBLAS_CORETYPE to set, or nothing
  /usr/bin/python3 scripts/openblas_core.py --show   # prints what a process loading libblas.so.3 gets

Debian 12's OpenBLAS 0.3.21 picks its kernels from the CPU model; on CPUs newer than it knows (seen on
the project's AVX-512 Xeons) it falls back to an old generic core and runs 5-7x slower. Forcing a
core the CPU cannot run is worse (SkylakeX kernels on an AVX2-only EPYC). So the core is forced only
when the one OpenBLAS detects is below what the CPU's instruction set supports, and then to the best
core that instruction set can run. scripts/env.sh calls this; bench_pytorch.py reports blas_info().
"""
import ctypes
import os
import sys

# OpenBLAS x86-64 core names by the instruction-set level their kernels need
# 0: SSE2/SSE3, 1: SSE4.2, 2: AVX, 3: AVX2 + FMA, 4: AVX-512 (F, BW, DQ, VL, CD), 5: + AVX512-BF16
LEVEL = {"prescott": 0, "core2": 0, "penryn": 0, "dunnington": 0, "atom": 0, "opteron": 0, "barcelona": 0,
         "nehalem": 1, "bobcat": 1, "sandybridge": 2, "bulldozer": 2, "piledriver": 2, "steamroller": 2,
         "excavator": 2, "haswell": 3, "zen": 3, "skylakex": 4, "cooperlake": 5, "sapphirerapids": 5}
BEST = {3: "Haswell", 4: "SkylakeX", 5: "Cooperlake"}
LIBBLAS = "/usr/lib/x86_64-linux-gnu/libblas.so.3"


def cpu_level():
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    level = 0
    if {"sse4_2", "popcnt"} <= flags:
        level = 1
    if level == 1 and "avx" in flags:
        level = 2
    if level == 2 and {"avx2", "fma"} <= flags:
        level = 3
    if level == 3 and {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"} <= flags:
        level = 4
    if level == 4 and "avx512_bf16" in flags:
        level = 5
    return level


def blas_info():
    """(library file, OpenBLAS core name or None, OpenBLAS build config or None) of the
    libblas.so.3 a process here loads."""
    path = os.path.realpath(LIBBLAS)
    try:
        lib = ctypes.CDLL(LIBBLAS)
    except OSError:
        return path, None, None
    try:
        lib.openblas_get_corename.restype = ctypes.c_char_p
        lib.openblas_get_config.restype = ctypes.c_char_p
        return path, lib.openblas_get_corename().decode(), lib.openblas_get_config().decode().strip()
    except AttributeError:  # not OpenBLAS (Debian's reference libblas3, BLIS, ...)
        return path, None, None


def core_to_force():
    """The OPENBLAS_CORETYPE this CPU should get, or None (leave OpenBLAS's own choice)."""
    if os.environ.get("OPENBLAS_CORETYPE"):
        return None  # the user's choice
    _, core, _ = blas_info()
    if core is None:
        return None
    have = min(cpu_level(), max(BEST))
    detected = LEVEL.get(core.lower())
    if detected is None or detected >= have or have < min(BEST):
        return None
    return BEST[have]


if __name__ == "__main__":
    if sys.argv[1:] == ["--show"]:
        path, core, config = blas_info()
        print(f"{path}: {config + ', core ' + core if core else 'not OpenBLAS'}; CPU level {cpu_level()}")
    else:
        print(core_to_force() or "")
