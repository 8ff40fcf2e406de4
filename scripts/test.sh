#!/usr/bin/env bash
# scripts/test.sh: installs what is missing, builds, and runs the whole test suite with ctest, then
# the instruction-set-dependent tests (label `isa`: bf16/fp16 GEMMs, rounding kernels, mixed
# precision golden and checkpointing tests) once more with oneDNN capped at AVX2, which is what a
# CPU without AVX-512 (AMD EPYC Zen 3, older Xeons) gives. No test is retried: a test that fails
# once is a bug to find.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j"$(nproc)" --timeout 900
echo "test: the isa-labelled tests again with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2)"
ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2 ctest --output-on-failure -j"$(nproc)" --timeout 900 -L isa
