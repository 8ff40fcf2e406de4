#!/usr/bin/env bash
# scripts/test.sh: installs what is missing, builds, and runs the whole test suite with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cd "${BUILD_DIR:-build}"
# A test that fails is run once more before it counts as failed: the fault-injection scripts
# (kill -9 / SIGTERM at chosen moments) depend on timing, and one failure of
# script_checkpoint_faults was seen once under load and not reproduced since (see the issue notes).
# A test that fails twice fails the run.
ctest --output-on-failure -j"$(nproc)" --timeout 900 --repeat until-pass:2
